"""Abstention (issue 16, item 4; :mod:`vigil.abstain`): the fit on small data, the card block, the member outputs of
the real ONNX graph, the score and alert records against their schemas, the metric, and a worker on the real broker
flagging a crafted out-of-distribution stay."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import onnxruntime as ort
import orjson
import pytest

from vigil.abstain import (
    REASON_SHORT_HISTORY,
    REASON_SPARSE,
    REASON_SPLIT_AT_LEVEL,
    Abstainer,
    coverage,
    decision_margin_z,
    member_logit_sd,
    with_member_outputs,
)
from vigil.card import AbstentionSpec, ModelCard
from vigil.catalog import schema_for
from vigil.config import REPO_ROOT
from vigil.errors import ModelError
from vigil.evaluation.abstention import evaluate_abstention, fit_member_spread, indeterminate_rows
from vigil.features import FEATURE_NAMES
from vigil.registry import Registry
from vigil.scoring import Scorer, canary_inputs

GBM = REPO_ROOT / "models" / "sepsis-gbm" / "1"
# a block for the tests (not the shipped one, so that the tests do not move when the shipped block is refitted)
BLOCK = {"version": 1, "measure": "decision_margin_z", "cutoff": 1.5, "level": 0.55, "fitted_on": "test"}


def _registry(tmp_path: Path, block: dict | None) -> Path:  # type: ignore[type-arg]
    """A registry serving only a copy of sepsis-gbm:1 whose card carries ``block`` (None: no block)."""
    models = tmp_path / "models"
    (models / "sepsis-gbm").mkdir(parents=True)
    shutil.copytree(GBM, models / "sepsis-gbm" / "1")
    shutil.copy(REPO_ROOT / "models" / "card.schema.json", models / "card.schema.json")
    (models / "serving.json").write_text('{"sepsis-gbm": "1"}')
    card_path = models / "sepsis-gbm" / "1" / "card.json"
    card = orjson.loads(card_path.read_bytes())
    card.pop("abstention", None)
    if block is not None:
        card["abstention"] = block
    card_path.write_bytes(orjson.dumps(card))
    return models


# -- fit and apply on small data ---------------------------------------------------------------------------------
def test_fit_flags_the_stated_share_of_alerting_rows_and_serving_applies_the_same_flags() -> None:
    rng = np.random.default_rng(3)
    n, m = 4000, 5
    centre = rng.normal(-1.0, 1.5, n)
    members = 1 / (1 + np.exp(-(centre[:, None] + rng.normal(0, rng.uniform(0.05, 0.8, n)[:, None], (n, m)))))
    risk = members.mean(axis=1)
    level = 0.4
    alerting = risk >= level
    x = np.full((n, len(FEATURE_NAMES)), 72.0, np.float32)  # hours since: 72 = not measured in the last 72 h
    hours = [i for i, name in enumerate(FEATURE_NAMES) if name.endswith("_hours_since")]
    seen = rng.integers(0, len(hours) + 1, n)
    for i, k in enumerate(seen):
        x[i, hours[:k]] = 1.0
    np.testing.assert_allclose(coverage(x), seen / len(hours))
    reasons_of = {"decision_margin_z": "members_split_at_level", "member_logit_sd": "members_disagree",
                  "low_coverage": "sparse_coverage"}  # fmt: skip
    for measure in ("decision_margin_z", "member_logit_sd", "low_coverage"):
        block = fit_member_spread(members, risk, level, 0.25, "synthetic", measure, x)
        ind = indeterminate_rows(block, risk, members, x)
        tol = 0.01 if measure != "low_coverage" else 0.05  # coverage takes 35 values: ties at the cut-off
        assert abs(ind[alerting].mean() - 0.25) < tol, (measure, ind[alerting].mean())
        # serving's Abstainer (from the validated card block) gives exactly these flags
        ab = Abstainer.from_spec(AbstentionSpec.model_validate(block))
        assert ab is not None
        flags, reasons = ab.flags(risk, members, x)
        assert np.array_equal(flags, ind)
        assert reasons.count(None) == int((~ind).sum()) and set(reasons) - {None} == {reasons_of[measure]}
    # the margin measure flags the rows close to the level where the members disagree, never a row far from it
    z = decision_margin_z(risk, members, level)
    block = fit_member_spread(members, risk, level, 0.25, "synthetic")
    assert np.array_equal(indeterminate_rows(block, risk, members), z < block["cutoff"])
    assert member_logit_sd(np.full((2, 3), 0.3)).tolist() == [0.0, 0.0]


def test_evaluate_abstention_counts_confident_and_all_alerts_per_stay() -> None:
    # two stays: stay 1 (rows 0-3) septic from row 3, alerted at row 1 (confident); stay 2 (rows 4-7) never septic,
    # alerted at row 5 (indeterminate)
    y = np.array([0, 0, 0, 1, 0, 0, 0, 0])
    s = np.array([1, 0, 0, 0, 1, 0, 0, 0], bool)
    alerts = np.array([0, 1, 0, 0, 0, 1, 0, 0], bool)
    ind = np.array([0, 0, 0, 0, 0, 1, 0, 0], bool)
    r = evaluate_abstention(alerts, ind, y, s)
    assert r["all"]["ppv_stay"] == 0.5 and r["confident"]["ppv_stay"] == 1.0
    assert r["share_alerts_indeterminate"] == 0.5 and r["share_rows_indeterminate"] == 1 / 8
    assert r["ppv_relative_gain"] == 1.0
    assert r["all"]["share_septic_alerted_early"] == r["confident"]["share_septic_alerted_early"] == 1.0


# -- the card block -----------------------------------------------------------------------------------------------
def test_card_abstention_block_is_typed_and_versioned() -> None:
    card = orjson.loads((GBM / "card.json").read_bytes())
    card["abstention"] = BLOCK
    assert ModelCard.from_dict(card).abstention == AbstentionSpec.model_validate(BLOCK)
    v2 = {**BLOCK, "version": 2, "min_history_h": 9}
    assert ModelCard.from_dict({**card, "abstention": v2}).abstention.min_history_h == 9  # type: ignore[union-attr]
    for bad in ({**BLOCK, "version": 3}, {**BLOCK, "measure": "vibes"}, {**BLOCK, "cutoff": -1.0},
                {k: v for k, v in BLOCK.items() if k != "level"},
                {**BLOCK, "min_history_h": 9},  # a version 2 key in a version 1 block: refused, not ignored
                {**v2, "min_history_h": 0}, {**v2, "min_history_h": -3}):  # fmt: skip
        with pytest.raises(ModelError, match="abstention"):
            ModelCard.from_dict({**card, "abstention": bad})
    card.pop("abstention")
    assert ModelCard.from_dict(card).abstention is None


# -- the real graph's member outputs and the scorer ----------------------------------------------------------------
def test_member_outputs_of_the_shipped_ensemble_average_to_its_probability() -> None:
    blob, names = with_member_outputs(GBM / "model.onnx")
    assert names == [f"m{i}_p1" for i in range(5)]
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    x, _ = canary_inputs()
    out = sess.run(["probability", *names], {"features": x})
    members = np.concatenate([o.reshape(-1, 1) for o in out[1:]], axis=1)
    np.testing.assert_allclose(members.mean(axis=1), out[0].reshape(-1), atol=1e-6)
    assert member_logit_sd(members).min() > 0  # seeds differ: the members never agree exactly


def test_scorer_flags_rows_only_with_a_block_and_keeps_its_probabilities(tmp_path: Path) -> None:
    x, _ = canary_inputs()
    plain = Scorer(Registry(_registry(tmp_path / "a", None)).get("sepsis-gbm:1"))
    flagged = Scorer(Registry(_registry(tmp_path / "b", BLOCK)).get("sepsis-gbm:1"))
    p0, ind0, why0 = plain.predict_flagged(x)
    assert ind0 is None and why0 is None and plain.abstainer is None
    p1, ind1, why1 = flagged.predict_flagged(x)
    np.testing.assert_array_equal(p0, p1)
    np.testing.assert_array_equal(flagged.predict(x), p1)
    flagged.check_canary()  # the card's canary still holds with the extra outputs
    blob, names = with_member_outputs(GBM / "model.onnx")
    out = ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(names, {"features": x})
    want = decision_margin_z(p1, np.concatenate([o.reshape(-1, 1) for o in out], axis=1), 0.55) < 1.5
    assert ind1 is not None and why1 is not None
    np.testing.assert_array_equal(ind1, want)
    assert why1 == [REASON_SPLIT_AT_LEVEL if f else None for f in want.tolist()]
    assert flagged.predict_flagged(x[:0])[0].shape == (0,)


def test_a_coverage_block_needs_no_members_and_flags_the_never_measured_canary(tmp_path: Path) -> None:
    x, _ = canary_inputs()  # a well patient (8 variables), a septic picture (12), hypothermic (8), never measured
    block = {"version": 1, "measure": "low_coverage", "cutoff": 0.1, "fitted_on": "test"}
    sc = Scorer(Registry(_registry(tmp_path, block)).get("sepsis-gbm:1"))
    assert sc.member_names == [] and sc.abstainer is not None and not sc.abstainer.needs_members
    p, ind, why = sc.predict_flagged(x)
    np.testing.assert_array_equal(p, sc.predict(x))
    assert ind is not None and ind.tolist() == [False, False, False, True]
    assert why == [None, None, None, REASON_SPARSE]


def test_the_shipped_block_flags_short_histories_beside_sparse_coverage() -> None:
    """sepsis-gbm:1's version 2 block: coverage below its cut-off (sparse_coverage) or fewer than min_history_h hours
    of the stay behind the row (short_history); a row flagged by both gives the coverage reason."""
    ref = Registry(REPO_ROOT / "models").get("sepsis-gbm:1")
    spec = ref.model_card.abstention
    assert spec is not None and spec.version == 2 and spec.min_history_h == 9.0 and spec.measure == "low_coverage"
    sc = Scorer(ref)
    x, _ = canary_inputs()  # coverage 8, 12, 8 and 0 variables of 34: all four below the cut-off (20 of 34)
    rich = np.repeat(x[1:2], 4, axis=0)
    rich[:, [i for i, n in enumerate(FEATURE_NAMES) if n.endswith("_hours_since")]] = 1.0  # every variable, 1 h ago
    both = np.concatenate([rich, x])
    both[:, FEATURE_NAMES.index("iculos")] = [0, 8, 9, 40, 3, 40, 40, 40]
    p, ind, why = sc.predict_flagged(both)
    np.testing.assert_array_equal(p, sc.predict(both))
    assert ind is not None and ind.tolist() == [True, True, False, False, True, True, True, True]
    assert why == [REASON_SHORT_HISTORY, REASON_SHORT_HISTORY, None, None, *[REASON_SPARSE] * 4]
    no_history = Abstainer(spec.measure, spec.cutoff)  # the version 1 block (coverage alone)
    assert no_history.flags(p, None, both)[0].tolist() == [False, False, False, False, True, True, True, True]


def test_a_block_on_a_single_graph_without_members_is_refused(tmp_path: Path) -> None:
    models = _registry(tmp_path, BLOCK)
    shutil.copy(REPO_ROOT / "models" / "sepsis-logreg" / "1" / "model.onnx", models / "sepsis-gbm" / "1" / "model.onnx")
    with pytest.raises(ModelError, match="no Mean of member probabilities"):
        Scorer(Registry(models).get("sepsis-gbm:1"))


# -- records against the topic schemas ------------------------------------------------------------------------------
def test_score_and_alert_records_validate_with_and_without_the_flag(tmp_path: Path) -> None:
    from vigil.alerting import Decision
    from vigil.state import Snapshot, stack_snapshots
    from vigil.worker.outputs import alert_records, score_record

    sc = Scorer(Registry(_registry(tmp_path, BLOCK)).get("sepsis-gbm:1"))
    streams = REPO_ROOT / "streams"
    val = {t: jsonschema.Draft202012Validator(schema_for(t, streams)) for t in ("scores", "scores-shadow", "alerts")}
    from vigil.features import WINDOW
    from vigil.variables import VAR_INDEX, VARIABLES

    window = np.full((WINDOW, len(VARIABLES)), np.nan, np.float32)
    window[-3:, VAR_INDEX["HR"]], window[-3:, VAR_INDEX["Lactate"]] = 120.0, 4.0
    hours = np.where(np.isnan(window[-1]), np.nan, 0.0).astype(np.float32)
    snap = Snapshot(patient="pt-abc", row=5, row_time=1_767_225_600.0, window=window, last_value=window[-1].copy(),
                    hours_since=hours, static=np.array([67, 1, 1, 0, -12.5, 5], np.float32), ward="W1", bed="3",
                    unit="MICU", trigger_ts=1_767_225_601.0)  # fmt: skip
    n2 = {"total": 3, "parts": dict.fromkeys(("resp_rate", "spo2", "air_or_oxygen", "systolic_bp", "pulse",
                                              "consciousness", "temperature"), 0), "missing": []}  # fmt: skip
    flagged = score_record(snap, sc, 0.6, n2, "2026-01-01T00:00:00+00:00", flag=(True, REASON_SPLIT_AT_LEVEL))
    plain = score_record(snap, sc, 0.6, n2, "2026-01-01T00:00:00+00:00")
    assert (flagged["indeterminate"], flagged["indeterminate_reason"]) == (True, REASON_SPLIT_AT_LEVEL)
    assert (plain["indeterminate"], plain["indeterminate_reason"]) == (False, None)
    old = {k: v for k, v in plain.items() if not k.startswith("indeterminate")}  # a revision-1 record
    for rec in (flagged, plain, old):
        val["scores"].validate(rec)
        val["scores-shadow"].validate({**rec, "shadow": True, "live": None})
    with pytest.raises(jsonschema.ValidationError):
        val["scores"].validate({**flagged, "indeterminate": "yes"})
    d = Decision(kind="model_risk", key="model_risk:sepsis-gbm", event="raised", severity="high", value=0.6,
                 raise_at=0.55, time=snap.row_time, row=5, episode=None, ack=None, model="sepsis-gbm",
                 version="1", alert_id="a-1", episode_id="a-1")  # fmt: skip
    fired = [(0, sc, d, 0.6, 0.55)]
    rows = alert_records(fired, [sc], [snap], stack_snapshots([snap]), [np.array([0.6])], [n2],
                         "2026-01-01T00:00:00+00:00", {(0, 0): (True, REASON_SPLIT_AT_LEVEL)})  # fmt: skip
    alert = rows[0][1]
    assert (alert["indeterminate"], alert["indeterminate_reason"]) == (True, REASON_SPLIT_AT_LEVEL)
    val["alerts"].validate(alert)
    val["alerts"].validate({k: v for k, v in alert.items() if not k.startswith("indeterminate")})


# -- the worker, on the real broker ---------------------------------------------------------------------------------
def _events(sample: Path, s, n: int) -> list[tuple[str, bytes, bytes]]:  # type: ignore[no-untyped-def]
    """``n`` sample stays, then a crafted stay: the first sample stay's vitals with labs far outside the training
    rows (lactate 20 mmol/L, WBC 100, total bilirubin 40 mg/dL, creatinine 15 mg/dL: plausible, so accepted at the
    edge, but rare in set A) from its third hour on."""
    from dataclasses import replace
    from datetime import UTC, datetime

    from vigil.physionet import iter_stays
    from vigil.privacy import pseudonymise
    from vigil.replay import stay_events
    from vigil.variables import VAR_INDEX

    stays = list(iter_stays(sample, limit=n))
    values = stays[0].values.copy()
    for name, v in (("Lactate", 20.0), ("WBC", 100.0), ("Bilirubin_total", 40.0), ("Creatinine", 15.0)):
        values[2:, VAR_INDEX[name]] = v
    stays.append(replace(stays[0], stay_id="crafted-ood", values=values))
    out = []
    for i, stay in enumerate(stays):
        patient = pseudonymise(stay.stay_id, s.pseudonym_key.get_secret_value())
        for stream, _t, value in stay_events(stay, patient=patient, anchor=datetime(2026, 3, 1, tzinfo=UTC),
                                             source="abstain-feed", ward=f"W{i % 2}", bed=str(i)):  # fmt: skip
            out.append((stream, patient.encode(), value))
    return out


@pytest.mark.broker
def test_worker_flags_a_crafted_out_of_distribution_stay_and_counts_it(settings_factory, topics_factory,
                                                                         sample_path, tmp_path, conforms):  # fmt: skip
    """A worker serving a version whose card has an abstention block: every score record carries the flag, the
    flags equal what the same code computes in one pass, the crafted stay's scores are flagged, alerts carry the
    flag of the score they quote, and ``vigil_scores_indeterminate_total`` counts exactly the flagged scores."""
    from vigil.kafka_io import TopicTail, produce_records, read_topic
    from vigil.privacy import pseudonymise
    from vigil.records import decode
    from vigil.tools.procs import WorkerProcess
    from vigil.worker.batch import InEvent, Processor
    from vigil.worker.engine import load_scorers

    s = settings_factory(models_dir=_registry(tmp_path, BLOCK))
    topics_factory(s, 4)
    events = _events(sample_path, s, 3)
    crafted = pseudonymise("crafted-ood", s.pseudonym_key.get_secret_value())
    # the reference: one in-process pass of the same code, event by event
    ref_s = s.model_copy(update={"state": s.state.model_copy(update={"discharge_grace_s": 0.0,
                                                                      "admit_grace_s": 60.0})})  # fmt: skip
    proc = Processor(ref_s, load_scorers(ref_s))
    want: dict[tuple[str, int], tuple[bool, str | None]] = {}
    for stream, key, value in events:
        for _, v in proc.process([InEvent(decode(value, stream, key), stream, 0, 0.0)]).scores:  # type: ignore[arg-type]
            rec = orjson.loads(v)
            want[(rec["patient"], rec["row"])] = (rec["indeterminate"], rec["indeterminate_reason"])
    from vigil.physionet import iter_stays

    original = pseudonymise(next(iter(iter_stays(sample_path, limit=1))).stay_id, s.pseudonym_key.get_secret_value())

    def n_flagged(patient: str) -> int:
        return sum(f for (p, _), (f, _) in want.items() if p == patient)

    # the crafted stay is flagged on more rows than the same stay with its own labs (21 vs 1 of 54 when written)
    assert n_flagged(crafted) > n_flagged(original), (n_flagged(crafted), n_flagged(original))

    async def run() -> tuple[list, list]:  # type: ignore[type-arg]
        await produce_records(s, [(s.topic(stream), k, v) for stream, k, v in events])
        tail = await TopicTail(s, s.topic("scores")).start()
        try:
            with_ids = lambda recs: len({orjson.loads(r.value)["score_id"] for r in recs})  # noqa: E731
            await tail.wait_for(lambda recs: with_ids(recs) >= len(want), 90)
            scores = list(tail.records)
        finally:
            await tail.stop()
        return scores, await read_topic(s, s.topic("alerts"), quiet_s=1.5)

    with WorkerProcess(s, log_path=tmp_path / "worker.log") as w:
        w.wait_ready()
        scores, alerts = asyncio.run(run())
        metrics = w.metrics_text()
        assert w.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]
    conforms(s, {"scores": scores, "alerts": alerts})
    got = {}
    for r in scores:
        rec = orjson.loads(r.value)
        got[(rec["patient"], rec["row"])] = (rec["indeterminate"], rec["indeterminate_reason"])
    assert got == want
    flagged = sum(1 for r in scores if orjson.loads(r.value)["indeterminate"])
    assert flagged == sum(f for f, _ in want.values()) > 0
    assert f'vigil_scores_indeterminate_total{{model="sepsis-gbm",version="1"}} {float(flagged)}' in metrics
    model_alerts = [a for a in map(orjson.loads, (r.value for r in alerts)) if a["type"] == "model_risk"
                    and a["event"] in ("raised", "escalated")]  # fmt: skip
    for a in model_alerts:
        assert (a["indeterminate"], a["indeterminate_reason"]) == want[(a["patient"], a["row"])]
    assert "crafted-ood" not in metrics and crafted not in metrics  # no patient identifier in the metrics


# -- vigil evaluate -------------------------------------------------------------------------------------------------
def test_evaluate_reports_confident_vs_all_alerts_when_the_card_has_a_block(tmp_path: Path, sample_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from vigil.cli import cli

    def run(models: Path, out: Path) -> tuple[dict, dict]:  # type: ignore[type-arg]
        res = CliRunner().invoke(cli, ["evaluate", "--model", "sepsis-gbm:1", "--data", str(sample_path), "--split",
                                       "all", "--limit", "80", "--out", str(out)],
                                 env={"VIGIL_MODELS_DIR": str(models)})  # fmt: skip
        assert res.exit_code == 0, res.output
        return json.loads(res.output.strip().splitlines()[-1]), json.loads((out / "metrics.json").read_text())

    summary, m = run(_registry(tmp_path / "a", BLOCK), tmp_path / "ra")
    ab = m["abstention"]
    assert ab["measure"] == "decision_margin_z" and ab["cutoff"] == 1.5
    # the same model-risk alerts as the report's alerting section, split into confident and indeterminate
    assert ab["all"]["alerts"] == m["alerting"]["model_risk"]["alerts"] > 0
    assert ab["all"]["ppv_stay"] == m["alerting"]["model_risk"]["ppv_stay"]
    assert 0 < ab["confident"]["alerts"] < ab["all"]["alerts"]
    assert ab["share_alerts_indeterminate"] == 1 - ab["confident"]["alerts"] / ab["all"]["alerts"]
    assert 0 < ab["share_rows_indeterminate"] < 1
    assert summary["abstention"]["ppv_confident"] == ab["confident"]["ppv_stay"]
    report = (tmp_path / "ra" / "report.md").read_text()
    assert "## Abstention" in report and f"{100 * ab['share_alerts_indeterminate']:.1f} % of the model-risk" in report
    _, plain = run(_registry(tmp_path / "b", None), tmp_path / "rb")
    assert "abstention" not in plain and plain["alerting"] == m["alerting"]
    assert "## Abstention" not in (tmp_path / "rb" / "report.md").read_text()
