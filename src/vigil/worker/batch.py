"""Per-batch processing, free of Kafka I/O: events in -> state updated -> rows scored -> output records.

This is the hot path. Events are handled in batches: decoding and state updates are per event (a few
microseconds each), featurization is one vectorised call over every row closed in the batch, and each
model is one ONNX Runtime call per batch.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Iterable
from contextlib import closing
from typing import Any

import numpy as np
import orjson

from vigil import deadletters
from vigil.abstain import abstain_flags
from vigil.alerting import AlertStage, Decision, ModelRisk, high_risk_by_ward
from vigil.budget import budget_controller
from vigil.config import Settings
from vigil.drift import DriftMonitor
from vigil.features import FEATURE_NAMES
from vigil.levels import level_in_force
from vigil.news2 import news2_from_last, news2_parts_dicts
from vigil.records import AckEvent, AdtEvent, Observation
from vigil.scoring import Scorer
from vigil.state import HOUR, PatientState, Snapshot, event_uid, stack_snapshots
from vigil.timewindow import check_time
from vigil.worker.changelog import ChangelogWriter
from vigil.worker.infer import Ahead, chunks
from vigil.worker.intake import DeadLetter, InEvent
from vigil.worker.outputs import Fired, Outputs, ack_record, alert_records, iso, merge, score_record

__all__ = ["Processor", "Outputs", "InEvent", "iso"]

log = logging.getLogger(__name__)

# Order of kinds at the same event time: admit first, discharge last.
_ORDER = {"admit": 0, "transfer": 2, "ack": 2, "discharge": 3}


class Processor:
    """Applies batches of events to per-partition patient state and produces the output records."""

    def __init__(self, settings: Settings, scorers: list[Scorer], shadows: list[Scorer] | None = None) -> None:
        self.settings = settings
        self.scorers = scorers
        # Candidates in shadow mode: scored on the same rows as the live models, written to scores-shadow,
        # never alerted on.
        self.shadows: list[Scorer] = shadows if shadows is not None else []
        self.alerting = AlertStage(settings.alerts)  # owns every patient's alert state (PatientState.alerts)
        self.policy = self.alerting.policy  # the rules per ward/unit with the live levels of the budget controller
        self.budget = budget_controller(settings.alerts.budget, self.policy)  # None unless alerts.budget.enabled
        self.drift: dict[tuple[str, str], DriftMonitor | None] = {}  # (model, version) -> monitor
        self._acks: list[tuple[PatientState, Decision]] = []  # acknowledgements applied in this batch
        self._dead: list[DeadLetter] = []  # events quarantined in this batch
        self._quarantined = set()
        # (patient, source, seq) -> (topic, partition, offset) of observations waiting for their admit
        self._pending_at: dict[tuple[str, str, int], tuple[str, int, int]] = {}
        self.states: dict[int, dict[str, PatientState]] = {}
        self.watermark: dict[int, float] = {}  # max event time seen per partition
        # partition -> patients waiting for a grace period: observations without an admit yet, or a discharge
        self._waiting: dict[int, set[str]] = {}
        self.changelog = ChangelogWriter(0.0)  # every touched state every batch; the engine may coalesce

    # -- state ownership -----------------------------------------------------------------------
    def patients(self) -> int:
        """Patients in care (closed records of discharged patients are not counted)."""
        return sum(1 for part in self.states.values() for s in part.values() if not s.discharged)

    def drop_partitions(self, parts: Iterable[int]) -> None:
        for p in parts:
            self.states.pop(p, None)
            self.watermark.pop(p, None)
            self._waiting.pop(p, None)
            self.changelog.drop([p])

    def load_partition(self, p: int, states: dict[str, PatientState]) -> None:
        self.states[p] = states
        self._waiting[p] = {k for k, s in states.items() if s.discharge_time is not None or s.pending}
        self.watermark[p] = max((s.last_event_time for s in states.values()), default=-math.inf)

    # -- the batch -----------------------------------------------------------------------------
    def process(self, events: list[InEvent]) -> Outputs:
        out = Outputs()
        counts: dict[str, Any] = {"duplicates": {}, "late": {}, "evicted": {}}
        out.counts = counts
        by_patient: dict[str, list[InEvent]] = {}
        for ie in events:
            lst = by_patient.get(ie.event.patient)
            if lst is None:
                by_patient[ie.event.patient] = [ie]
            else:
                lst.append(ie)

        snaps: list[Snapshot] = []
        ahead = Ahead([*self.scorers, *self.shadows], self.settings.scoring.overlap_rows)  # worker/infer.py
        touched: list[tuple[int, PatientState]] = []
        self._dead = out.dead
        self._quarantined: set[str] = set()  # patients whose events of this batch were quarantined by scoring
        for patient, lst in by_patient.items():
            lst.sort(key=_sort_key)
            p = lst[0].partition
            part = self.states.setdefault(p, {})
            st = part.get(patient)
            if st is None:
                st = part[patient] = PatientState(patient)
            try:
                st = self._apply(st, lst, snaps, counts)
            except Exception as exc:  # noqa: BLE001 - outside the per-event guard: quarantine the patient's batch
                for ie in lst:
                    self._quarantine_error(ie, exc)
                st = part.get(patient, st)
            wards = counts.setdefault("ward_events", {})
            wards[st.ward or "unknown"] = wards.get(st.ward or "unknown", 0) + len(lst)
            wm = self.watermark.get(p, -math.inf)
            if st.last_event_time > wm:
                self.watermark[p] = st.last_event_time
            touched.append((p, st))
            ahead.offer(snaps)  # inference of the rows closed so far starts while the other patients are applied

        self._score_safe(snaps, {id(st): st for _, st in touched}, out, by_patient, ahead)
        for st, d in self._acks:
            if d.since is not None and d.time >= d.since:
                out.ack_latency.append((d.kind, d.time - d.since))
            out.alerts.append((st.patient, orjson.dumps(ack_record(st, d))))
            out.alert_labels.append((d.kind, "info", st.ward or "unknown"))
        self._acks = []

        self._finalize_discharges(time.time(), out, touched, by_patient)
        if self.budget is not None:  # moves apply from the next batch on
            self.budget.update()
        return out

    def finalize_due(self, now: float | None = None) -> Outputs:
        """Finalise discharges whose grace period has passed (called between batches too)."""
        out = Outputs(counts={"duplicates": {}, "late": {}, "evicted": {}})
        self._finalize_discharges(time.time() if now is None else now, out, [])
        return out

    def _finalize_discharges(self, now: float, out: Outputs, touched: list[tuple[int, PatientState]],
                             by_patient: dict[str, list[InEvent]] | None = None) -> None:  # fmt: skip
        """Patients past a grace period: anchor those whose admit never came (and score their rows);
        close the last rows of the discharged (their record stays, closed, for ``closed_keep_s``). Then
        the changelog of the touched states (every one, or coalesced: worker/changelog.py)."""
        st_cfg = self.settings.state
        max_gap = self.settings.scoring.max_gap_rows
        row_mode = self.settings.scoring.mode == "row"
        snaps: list[Snapshot] = []
        done: list[tuple[int, PatientState]] = []
        for p, waiting in self._waiting.items():
            for patient in list(waiting):
                st = self.states.get(p, {}).get(patient)
                if st is None:
                    waiting.discard(patient)
                    continue
                if st.pending and not st.anchored:
                    since = st.pending_since if st.pending_since is not None else now
                    if now - since < st_cfg.admit_grace_s:
                        continue
                    self._anchor_inferred(st)
                    self._flush_pending(st, snaps if row_mode else None, since, max_gap)
                    done.append((p, st))
                if st.discharge_time is None:
                    waiting.discard(patient)
                    continue
                seen = st.discharge_seen if st.discharge_seen is not None else now
                if now - seen < st_cfg.discharge_grace_s:
                    continue
                if st.anchored and row_mode and st.row_of(st.discharge_time) > st.row:
                    st.advance_to(st.row_of(st.discharge_time), max_gap, seen, snaps)
                st.discharged = True
                waiting.discard(patient)
                done.append((p, st))
        if snaps:
            self._score_safe(snaps, {id(st): st for _, st in done}, out, by_patient or {})
        self.changelog.write(out.changelog, self.states, touched, done, (by_patient or {}).values())

    def evict_idle(self, now: float | None = None) -> tuple[list[tuple[int, str, bytes | None]], dict[str, int]]:
        """Tombstones for closed (discharged) records past ``closed_keep_s`` and for patients silent for
        longer than the TTL (event time against the partition's newest event, and wall time)."""
        cfg = self.settings.state
        now = time.time() if now is None else now
        tombstones: list[tuple[int, str, bytes | None]] = []
        reasons = {"discharge": 0, "ttl": 0}
        for p, part in self.states.items():
            wm = self.watermark.get(p, -math.inf)
            stale = [  # a state with unwritten changes waits for its flush and commit (worker/changelog.py)
                k for k, s in part.items() if not self.changelog.is_dirty(p, k) and (
                (s.discharged and now - (s.discharge_seen or 0.0) > cfg.closed_keep_s)
                or (wm - s.last_event_time > cfg.ttl_s and now - s.last_wall > cfg.ttl_wall_s))
            ]  # fmt: skip
            for k in stale:
                reasons["discharge" if part[k].discharged else "ttl"] += 1
                del part[k]
                tombstones.append((p, k, None))
        return tombstones, reasons

    def _apply(
        self, st: PatientState, lst: list[InEvent], snaps: list[Snapshot], counts: dict[str, Any]
    ) -> PatientState:
        cfg = self.settings
        window = cfg.state.dedupe_window
        max_gap = cfg.scoring.max_gap_rows
        row_mode = cfg.scoring.mode == "row"
        dups, late = counts["duplicates"], counts["late"]
        now = time.time()
        fault = cfg.state.fault_inject_seq
        margin = cfg.time_window.admit_margin_s
        # the earliest admission known for this patient: its state's, or an admit in this very batch (sorted
        # by time, a far-past event would otherwise come before its admit and wait in `pending`)
        admits = [ie.event.admit_time for ie in lst if type(ie.event) is AdtEvent and ie.event.kind == "admit"
                  and ie.event.admit_time is not None]  # fmt: skip
        if st.from_admit and st.admit_time is not None:
            admits.append(st.admit_time)
        earliest = min(admits) - margin if admits else -math.inf
        for ie in lst:
            ev = ie.event
            try:  # errors are values: an event whose processing raises is quarantined, the others go on
                if fault is not None and ev.seq == fault:
                    raise RuntimeError("fault injected (state.fault_inject_seq, test only)")  # noqa: TRY301
                if type(ev) is not AckEvent and ev.time < earliest:
                    reason = check_time(ev.time, now=now, window=cfg.time_window, admit_time=earliest + margin)
                    if reason is not None:
                        self._quarantine(ie, "time_out_of_range", "TimeOutOfRange", reason, "time")
                        continue
                if type(ev) is AckEvent:  # idempotent (re-applying an ack changes nothing): no de-duplication
                    d = self.alerting.ack(st.alerts, ev.alert_id, by=ev.by, at=ev.time, action=ev.action)
                    if d is None:
                        counts["acks_unmatched"] = counts.get("acks_unmatched", 0) + 1
                    else:
                        self._acks.append((st, d))
                    continue
                if st.discharged:
                    if ev.time <= (st.discharge_time or -math.inf):  # a straggler or duplicate of a closed stay
                        if st.is_duplicate(event_uid(ev.source, ev.seq), window):  # e.g. re-delivered after a crash
                            dups[ie.topic] = dups.get(ie.topic, 0) + 1
                        else:
                            late[ie.topic] = late.get(ie.topic, 0) + 1
                        continue
                    st = self._reopen(st, ie.partition)  # a new stay after the discharge
                if st.is_duplicate(event_uid(ev.source, ev.seq), window):
                    dups[ie.topic] = dups.get(ie.topic, 0) + 1
                    continue
                if ev.time > st.last_event_time:
                    st.last_event_time = ev.time
                st.last_wall = now
                if type(ev) is Observation:
                    if not st.anchored:
                        if st.first_event_time is None or ev.time < st.first_event_time:
                            st.first_event_time = ev.time
                        if st.pending_since is None:
                            st.pending_since = time.time()
                            self._waiting.setdefault(ie.partition, set()).add(st.patient)
                        st.pending.append(ev)
                        if len(self._pending_at) >= 100_000:
                            self._pending_at.clear()  # coordinates only (dead letters would say offset 0)
                        self._pending_at[(st.patient, ev.source, ev.seq)] = (ie.topic, ie.partition, ie.offset)
                        continue
                    k = st.row_of(ev.time)
                    if k > st.row:
                        st.advance_to(k, max_gap, ie.broker_ts, snaps if row_mode else None)
                    if st.observe(ev):
                        late[ie.topic] = late.get(ie.topic, 0) + 1
                    continue
                # ADT
                assert isinstance(ev, AdtEvent)
                if ev.kind == "admit":
                    if (st.discharge_time is not None and ev.admit_time == st.admit_time
                            and ev.time >= st.discharge_time):  # the same stay re-admitted (HL7 A13 cancel discharge)
                        st.discharge_time = st.discharge_seen = None
                    st.set_context(ev)
                    admit_time = ev.admit_time if ev.admit_time is not None else ev.time
                    if not st.from_admit:
                        st.anchor(admit_time, math.floor((ev.time - admit_time) / HOUR), from_admit=True)
                        self._screen_pending(st, admit_time, ie.partition, now)
                        self._flush_pending(st, snaps if row_mode else None, ie.broker_ts, max_gap)
                elif ev.kind == "transfer":
                    st.set_context(ev)
                else:  # discharge: finalised (rows closed, state evicted) after the grace period
                    st.discharge_time = ev.time
                    st.discharge_seen = time.time()
                    self._waiting.setdefault(ie.partition, set()).add(st.patient)
            except Exception as exc:  # noqa: BLE001
                self._quarantine_error(ie, exc)
        if not row_mode and st.anchored and st.discharge_time is None:
            if st.last_event_time - st.last_score_time >= cfg.scoring.min_interval_s:
                snaps.append(st.snapshot(lst[-1].broker_ts, partial=True))
                st.last_score_time = st.last_event_time
        return st

    def _screen_pending(self, st: PatientState, admit_time: float, partition: int, now: float) -> None:
        """Observations that waited for this admit (an earlier batch) and lie before it minus the margin:
        dead-lettered (time_out_of_range) instead of being written into the rows."""
        tw = self.settings.time_window
        keep: list[Observation] = []
        for o in st.pending:
            at = self._pending_at.pop((st.patient, o.source, o.seq), None)
            reason = check_time(o.time, now=now, window=tw, admit_time=admit_time) if o.time < admit_time else None
            if reason is None:
                keep.append(o)
                continue
            topic, part, off = at if at is not None else ("vitals" if o.kind == "vital" else "labs", partition, -1)
            if at is None:
                reason += " (offset unknown: the event was restored from the changelog)"
            self._quarantine(InEvent(o, topic, part, 0.0, off), "time_out_of_range", "TimeOutOfRange", reason, "time")
        st.pending = keep

    def _quarantine(self, ie: InEvent, reason: str, error_type: str, detail: str, fld: str | None = None) -> None:
        """Dead-letter one decoded event (its coordinates and an allow-listed projection; no patient data)."""
        ev = ie.event
        content: dict[str, Any] = {"kind": ev.kind, "seq": ev.seq}
        try:
            content["time"] = iso(ev.time)
        except (OverflowError, ValueError, OSError):
            pass
        if type(ev) is Observation:
            content["value"] = ev.value
        topic = self.settings.topic(ie.topic)
        key = ev.patient.encode()
        value = deadletters.build(reason=reason, error_type=error_type, detail=detail, field=fld, topic=topic,
                                  partition=ie.partition, offset=ie.offset, received_at=time.time(),
                                  key=key, content=content)  # fmt: skip
        self._dead.append(DeadLetter(key if len(key) <= deadletters.MAX_KEY else None, value, reason, topic,
                                     ie.partition, max(0, ie.offset), stream=ie.topic))  # fmt: skip

    def _quarantine_error(self, ie: InEvent, exc: BaseException, where: str = "processing", log_it: bool = True
                          ) -> None:  # fmt: skip
        """An exception while processing one event: dead letter (processing_error), one log line (the
        pseudonym's hash at most; the exception's type and where it was raised, never its message)."""
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ is not None else None
        at = f" in {frame.name} ({frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})" if frame is not None else ""
        if where == "scoring":
            detail = (f"scoring raised {type(exc).__name__}{at}; the patient's rows closed by this batch are not "
                      "scored (the event is in its state), every other patient is")  # fmt: skip
        else:
            detail = f"{where} raised {type(exc).__name__}{at}; the event is quarantined, the patient's others go on"
        self._quarantine(ie, "processing_error", type(exc).__name__, detail)
        if log_it:
            log.error("quarantined an event of %s[%d]@%d (patient key %s): %s", ie.topic, ie.partition, ie.offset,
                      deadletters.key_hash(ie.event.patient.encode()), detail)  # fmt: skip

    def _reopen(self, closed: PatientState, partition: int) -> PatientState:
        st = PatientState(closed.patient)
        st.seen = closed.seen
        self.states[partition][closed.patient] = st
        return st

    @staticmethod
    def _anchor_inferred(st: PatientState) -> None:
        st.pending_since = None
        first = st.first_event_time if st.first_event_time is not None else st.last_event_time
        if math.isfinite(first):
            st.anchor(first, 0, from_admit=False)

    def _flush_pending(self, st: PatientState, snaps: list[Snapshot] | None, ts: float, max_gap: int) -> None:
        pending, st.pending = sorted(st.pending, key=lambda o: o.time), []
        for o in pending:
            self._pending_at.pop((st.patient, o.source, o.seq), None)
        st.pending_since = None
        for obs in pending:
            k = st.row_of(obs.time)
            if k > st.row:
                st.advance_to(k, max_gap, ts, snaps)
            st.observe(obs)

    # -- scoring -------------------------------------------------------------------------------
    def _score_safe(self, snaps: list[Snapshot], by_state: dict[int, PatientState], out: Outputs,
                    by_patient: dict[str, list[InEvent]], ahead: Ahead | None = None) -> None:  # fmt: skip
        """Score ``snaps`` into ``out``; if that raises, score patient by patient and quarantine the events of
        the batch of each patient whose scoring raises (every other patient is scored)."""
        if not snaps:
            return
        ahead = ahead or Ahead([*self.scorers, *self.shadows], self.settings.scoring.overlap_rows)
        try:
            tmp = Outputs()
            self._score(snaps, by_state, tmp, ahead)
        except Exception:  # noqa: BLE001
            ahead.wait()
            groups: dict[str, list[Snapshot]] = {}
            for sn in snaps:
                groups.setdefault(sn.patient, []).append(sn)
            for patient, group in groups.items():
                try:
                    tmp = Outputs()
                    self._score(group, by_state, tmp, Ahead([*self.scorers, *self.shadows], 0))
                except Exception as exc:  # noqa: BLE001
                    evs = [] if patient in self._quarantined else by_patient.get(patient, [])
                    if evs:
                        self._quarantined.add(patient)
                    for i, ie in enumerate(evs):  # one log line for the patient
                        self._quarantine_error(ie, exc, where="scoring", log_it=i == 0)
                    if patient not in self._quarantined:
                        log.error("scoring raised %s for patient key %s outside a batch (rows not scored)",
                                  type(exc).__name__, deadletters.key_hash(patient.encode()))  # fmt: skip
                    continue
                merge(out, tmp)
            return
        merge(out, tmp)

    def _score(self, snaps: list[Snapshot], by_state: dict[int, PatientState], out: Outputs, ahead: Ahead) -> None:
        if not snaps:
            return
        inp, x = ahead.close(snaps)
        out.featurize_s = ahead.featurize_s
        n2s = news2_parts_dicts(news2_from_last(np.stack([s.last_value for s in snaps])))  # row -> its NEWS2 dict
        flags: dict[tuple[int, int], tuple[bool, str | None]] = {}  # (row, scorer) -> indeterminate, reason
        states = {st.patient: st for st in by_state.values()}
        now_iso = iso(time.time())
        fired: list[Fired] = []
        got: list[list[np.ndarray]] = [[] for _ in self.scorers]  # each scorer's risks, chunk after chunk
        out.inference_s = {sc.name: 0.0 for sc in self.scorers}
        self._by_name = {sc.name: j for j, sc in enumerate(self.scorers)}
        # each chunk's score records as it comes back (while the inference thread runs the next ones); the alert
        # policy steps only once every chunk is back: a model error leaves every alert state as it was, so the
        # patient-by-patient retry of _score_safe (which drops this `out`) steps no row twice (worker/infer.py)
        rows: list[tuple[list[ModelRisk], list[float]]] = []
        with closing(chunks(ahead)) as parts:
            for part in parts:
                for j, sc in enumerate(self.scorers):
                    risk_arr, ind, why = part.results[j]
                    got[j].append(risk_arr)
                    out.inference_s[sc.name] += part.seconds[j]
                    for (i, _), flag in abstain_flags(j, ind, why, out.indeterminate, (sc.name, sc.version)).items():
                        flags[(part.start + i, j)] = flag
                for i in range(part.start, part.stop):
                    rows.append(self._score_row(i, i - part.start, snaps[i], part.results, flags, now_iso, out,
                                                n2s[i]))  # fmt: skip
        for i, (models, levels) in enumerate(rows):  # every chunk is back: the alert policy's step, row by row
            for d in self.alerting.step(states[snaps[i].patient].alerts, snaps[i], models, n2s[i]):
                j = self._by_name[d.model] if d.model is not None else 0  # model rules (by model), then NEWS2
                ok = j < len(self.scorers)
                fired.append((i, self.scorers[j] if ok else None, d, models[j].risk if ok else math.nan,
                              levels[j] if ok else math.nan))  # fmt: skip
        risks = [arrs[0] if len(arrs) == 1 else np.concatenate(arrs) for arrs in got]
        for sc, risk_arr in zip(self.scorers, risks, strict=True):
            out.risks[sc.name] = risk_arr
        if self.settings.drift.enabled:
            for sc, risk_arr in zip(self.scorers, risks, strict=True):
                mon = self.monitor(sc)
                if mon is not None:
                    out.drift += [(sc.name, orjson.dumps({**e, "time": iso(snaps[-1].row_time)}))
                                  for e in mon.update(x, risk_arr)]  # fmt: skip
        if fired:
            inp = stack_snapshots(snaps) if inp is None else inp  # the batch's input (explain), if it was chunked
            alerts = alert_records(fired, self.scorers, snaps, inp, risks, n2s, now_iso, flags)
            for patient, rec, trigger_ts, labels in alerts:
                out.alerts.append((patient, orjson.dumps(rec)))
                out.alert_trigger_ts.append(trigger_ts)
                out.alert_labels.append(labels)
        if self.budget is not None and self.scorers:
            raised = {i for i, sc, d, _, _ in fired if sc is self.scorers[0] and d.kind == "model_risk"
                      and d.event in ("raised", "escalated")}  # fmt: skip
            sc0 = self.scorers[0]
            self.budget.observe_scored(snaps, raised, self.policy.rule, sc0.alert_level, f"{sc0.name}:{sc0.version}")

    def _score_row(self, i: int, r: int, snap: Snapshot, results: list[tuple[Any, Any, Any]],
                   flags: dict[tuple[int, int], tuple[bool, str | None]], now_iso: str, out: Outputs,
                   n2: dict[str, Any]) -> tuple[list[ModelRisk], list[float]]:  # fmt: skip
        """Row ``i`` of the batch, row ``r`` of its chunk (``results``: per live then shadow model): its score records;
        returns what the alert step needs (each live model's risk, the level in force)."""
        live: dict[str, Any] | None = None
        levels = [level_in_force(self.policy, sc.alert_level, snap.ward, snap.unit) for sc in self.scorers]
        models: list[ModelRisk] = []
        for j, (sc, (risk_arr, _, _), level) in enumerate(zip(self.scorers, results, levels, strict=False)):
            risk = float(risk_arr[r])
            rec = score_record(snap, sc, risk, n2, now_iso, level=level, flag=flags.get((i, j), (False, None)))
            out.scores.append((snap.patient, orjson.dumps(rec)))
            live = live or rec
            out.score_trigger_ts.append(snap.trigger_ts)
            out.row_end_times.append(snap.row_time + (0.0 if snap.partial else HOUR))
            models.append(ModelRisk(sc.name, sc.version, risk, sc.alert_level))
        for sc, (risk_arr, ind, why) in zip(self.shadows, results[len(self.scorers) :], strict=True):
            level = level_in_force(self.policy, sc.alert_level, snap.ward, snap.unit)
            flag = (bool(ind[r]), why[r]) if ind is not None and why else (False, None)
            rec = score_record(snap, sc, float(risk_arr[r]), n2, now_iso, live=live, level=level, flag=flag)
            out.shadow_scores.append((snap.patient, orjson.dumps(rec)))
        return models, levels

    def high_risk_by_ward(self) -> dict[str, int]:
        """Patients in care with a model-risk alert raised and not yet cleared, per ward (counts only)."""
        return high_risk_by_ward(self.states.values())

    def monitor(self, sc: Scorer) -> DriftMonitor | None:
        """The drift monitor of a serving model (None when its card has no training reference)."""
        key = (sc.name, sc.version)
        if key not in self.drift:
            ref = sc.ref.model_card.reference  # vigil.card.ModelCard
            self.drift[key] = DriftMonitor.for_model(*key, ref, FEATURE_NAMES, self.settings.drift)
        return self.drift[key]


def _sort_key(ie: InEvent) -> tuple[float, int]:
    ev = ie.event
    return (ev.time, 1 if type(ev) is Observation else _ORDER[ev.kind])  # type: ignore[union-attr]
