"""Offline check of the live alert-budget controller (docs/alert-budget.md): set A stays admitted one after the
other over ``--days`` days into two wards, replayed through the worker's own Processor (no broker) in batches of
one event-time hour, once with the controller off and once on. Prints, per ward, the model-risk alerts (raised or
escalated) per patient-day overall and over the last half of the run, and the controller's moves.

    PYTHONPATH=src .venv/bin/python scripts/budget_sim.py --stays 2000 --days 30 --raise-at 0.1
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from datetime import UTC, datetime, timedelta

import orjson

from vigil.config import REPO_ROOT, load_settings
from vigil.physionet import iter_stays
from vigil.records import decode
from vigil.replay import stay_events
from vigil.worker.batch import InEvent, Processor
from vigil.worker.engine import load_scorers

ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data" / "physionet2019" / "setA.parquet"))
    ap.add_argument("--stays", type=int, default=2000)
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--raise-at", type=float, default=None, help="the site's (deliberately wrong) level")
    ap.add_argument("--target", type=float, default=0.2)
    ap.add_argument("--min-level", type=float, default=0.05)
    ap.add_argument("--max-level", type=float, default=0.9)
    ap.add_argument("--window-h", type=float, default=24.0)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--only-on", action="store_true", help="skip the run with the controller off")
    args = ap.parse_args()
    events: list[tuple[float, str, bytes, bytes]] = []
    gap = args.days * 24.0 / args.stays
    for i, stay in enumerate(iter_stays(args.data, limit=args.stays)):
        patient = f"sim-{i}"
        anchor = ANCHOR + timedelta(hours=i * gap)
        for stream, t, value in stay_events(stay, patient=patient, anchor=anchor, source="sim", ward=f"W{i % 2}",
                                            bed=str(i)):  # fmt: skip
            events.append((t, stream, patient.encode(), value))
    events.sort(key=lambda e: e[0])
    print(f"{args.stays} stays, {len(events)} events over {args.days} days")
    half = (ANCHOR + timedelta(days=args.days / 2)).timestamp()
    for enabled in (True,) if args.only_on else (False, True):
        alerts: dict[str, dict] = {}
        cfg = {"alerts": {"budget": {"enabled": enabled, "min_level": args.min_level, "max_level": args.max_level,
                                     "target_per_patient_day": args.target, "window_h": args.window_h,
                                     "alpha": args.alpha}},
               "time_window": {"mode": "replay"}, "drift": {"enabled": False}}  # fmt: skip
        if args.raise_at is not None:
            cfg["alerts"]["model_risk"] = {"raise_at": args.raise_at}
        s = load_settings(None, **cfg)
        p = Processor(s, load_scorers(s))
        rows: dict[tuple[str, bool], int] = {}
        raised: dict[tuple[str, bool], int] = {}
        t0 = time.perf_counter()
        k = 0
        while k < len(events):
            end = events[k][0] + 3600.0
            batch = []
            while k < len(events) and events[k][0] < end:
                t, stream, key, value = events[k]
                ev = decode(value, stream, key)
                if hasattr(ev, "patient"):
                    batch.append(InEvent(ev, stream, 0, 0.0))
                k += 1
            out = p.process(batch)
            for _, v in out.scores:
                r = orjson.loads(v)
                late = datetime.fromisoformat(r["time"]).timestamp() >= half
                rows[(r["ward"], late)] = rows.get((r["ward"], late), 0) + 1
            for _, v in out.alerts:
                a = orjson.loads(v)
                if a["type"] == "model_risk" and a["event"] in ("raised", "escalated"):
                    late = datetime.fromisoformat(a["time"]).timestamp() >= half
                    raised[(a["ward"], late)] = raised.get((a["ward"], late), 0) + 1
        for ward in ("W0", "W1"):
            pd_all = (rows.get((ward, False), 0) + rows.get((ward, True), 0)) / 24.0
            pd_late = rows.get((ward, True), 0) / 24.0
            n_all = raised.get((ward, False), 0) + raised.get((ward, True), 0)
            n_late = raised.get((ward, True), 0)
            alerts[ward] = {"patient_days": round(pd_all, 1), "alerts": n_all, "rate": round(n_all / pd_all, 3),
                            "rate_second_half": round(n_late / pd_late, 3) if pd_late else None,
                            "final_level": p.budget.level(ward) if p.budget else None}  # fmt: skip
        print(json.dumps({"controller": enabled, "wall_s": round(time.perf_counter() - t0, 1), "wards": alerts}))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    main()
