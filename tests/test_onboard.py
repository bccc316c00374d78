"""`vigil onboard` end to end on the bundled sample with real LightGBM, onnxmltools and ONNX Runtime, in a
temporary registry: a labelled and a label-free onboarding register new versions whose cards name the site
sample, the base and what was adapted; the gate ran against the base on the held-back stays; `vigil evaluate`
and `vigil predict` then use the site's threshold and level; the adapted graphs reproduce their framework."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vigil.cli import cli
from vigil.demand.calibration import CALIBRATION_FILE, Calibration
from vigil.registry import ModelRef, Registry
from vigil.scoring import Scorer

lgb = pytest.importorskip("lightgbm", reason="the [train] extra is part of `make test` (make install-train)")
ort = pytest.importorskip("onnxruntime")

from vigil.onboarding import adapt, levels  # noqa: E402  (after the skip)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, sample_path: Path) -> dict[str, Path]:
    """A registry with a small LightGBM base (serving, with its demand calibration) and the sample as parquet."""
    from vigil.training import trainer
    from vigil.training.data import load_training_frame
    from vigil.training.gbm import GbmHyper

    root = tmp_path_factory.mktemp("onboard")
    data = root / "site.parquet"
    load_training_frame(sample_path).to_parquet(data)
    reg = root / "registry"
    ds = trainer.prepare(data, seed=7, with_sequence=False)
    hyper = GbmHyper(num_leaves=7, min_child_samples=20, max_rounds=60, patience=20)
    path = trainer.train_family(ds, "gbm", reg, name="sepsis-gbm", members=1, gbm=hyper)
    trainer.calibrate_demand(path, data)
    _add_abstention_block(path, data)
    Registry(reg)._write_serving({"sepsis-gbm": "1"})
    return {"root": root, "data": data, "registry": reg}


def _add_abstention_block(path: Path, data: Path) -> None:
    """A ``low_coverage`` block with ``min_history_h`` on the base as ``scripts/fit_abstention.py --write`` makes
    one (fit and figures at the base's level; here on the base's own sample, which is all a test has)."""
    from vigil.card import read_card, write_card
    from vigil.config import load_settings
    from vigil.evaluation.abstention import evaluate_abstention, fit_member_spread, indeterminate_rows
    from vigil.evaluation.alerting import simulate_policy
    from vigil.evaluation.report import jsonable
    from vigil.offline import score_frame
    from vigil.onboarding.run import _features, _labels
    from vigil.training.data import load_training_frame

    df = load_training_frame(data)
    ref = Registry(path.parents[1]).get("sepsis-gbm:1")
    p, _ = score_frame(Scorer(ref), df)
    x, s = _features(df)
    y = _labels(df)
    block = fit_member_spread(None, p, ref.alert_level, 0.2, "the base's sample (test)", "low_coverage", x,
                              min_history_h=9)  # as sepsis-gbm:1's (version 2) block
    fired = simulate_policy(load_settings(None).alerts, risk=p, threshold=ref.alert_level,
                            news2_total=np.zeros(len(p), np.int16), stay_start=s)["model_risk"]  # fmt: skip
    block["evaluation"] = {"test": evaluate_abstention(fired, indeterminate_rows(block, p, None, x), y, s),
                           "script": "tests/test_onboard.py"}  # fmt: skip
    card = read_card(path / "card.json")
    card["abstention"] = block
    write_card(path / "card.json", jsonable(card))


def _run(site: dict[str, Path], *args: str) -> tuple[dict, str]:
    env = {"VIGIL_MODELS_DIR": str(site["registry"])}
    res = CliRunner().invoke(cli, ["onboard", "--data", str(site["data"]), "--model", "sepsis-gbm:1", "--seed", "3",
                                   *args], env=env)  # fmt: skip
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stdout


def test_labelled_onboarding_registers_a_gated_site_version(site: dict[str, Path]) -> None:
    out = site["root"] / "report-labelled"
    line, stdout = _run(site, "--out", str(out))
    assert line["base"] == "sepsis-gbm:1" and line["mode"] == "labelled"
    reg = Registry(site["registry"])
    ref = reg.get(line["model"])
    assert ref.name == "sepsis-gbm" and ref.version == reg.versions("sepsis-gbm")[-1] != "1"  # the next version
    ob = ref.card["onboarding"]
    assert ob["base"] == "sepsis-gbm:1" and ob["mode"] == "labelled"
    assert ob["site_sample"]["sha256"] == hashlib.sha256(site["data"].read_bytes()).hexdigest()
    assert ob["adapted"] in ("recalibration", "continued_boosting") and line["adaptation"] == ob["adapted"]
    compared = ob["adaptation"]["compared"]
    assert set(compared) >= {"recalibration", "continued_boosting"}
    # the preference follows the sample's size (a small sample: the layer), and the kept one follows the rule
    from vigil.onboarding.labelled import BOOST_FROM_STAYS, choose_adaptation

    fit_stays = ob["split"]["train"]["stays"] + ob["split"]["tune"]["stays"]
    assert fit_stays < BOOST_FROM_STAYS and compared["preferred"] == "recalibration"
    assert ob["adapted"] == choose_adaptation(compared["recalibration"]["utility"],
                                              compared["continued_boosting"]["utility"], "recalibration", 0.01)
    assert ob["calibration"]["site_validated"] is True
    # a new graph: its own score -> posterior map (vigil.onboarding.prior), fitted on the site's rows, not the base's
    assert ref.card["prior_shift"]["fitted_on"] == f"site {ob['fit_on']} stays"
    assert "inherited_from" not in ref.card["prior_shift"]
    # the gate compared base and candidate on every sample stay, each scored by a version fitted without it
    gate = ob["gate"]
    split = ob["split"]
    n_stays = sum(split[k]["stays"] for k in ("train", "tune", "check"))
    assert gate["serving"] == "sepsis-gbm:1" and gate["candidate"] == line["model"]
    assert gate["on"] == line["gate_on"] == "every sample stay, cross-fitted"
    assert gate["data"]["stays"] == n_stays and gate["data"]["septic_stays"] == sum(
        split[k]["septic_stays"] for k in ("train", "tune", "check"))
    assert gate["passed"] == line["gate_passed"]
    assert gate["candidate_metrics"]["model"] == f"{line['model']} (cross-fitted)"
    assert gate["serving_metrics"]["model"] == "sepsis-gbm:1"
    folds = gate["crossfit"]["folds"]
    assert [f["fold"] for f in folds] == [1, 2, 3] and sum(f["held_out"]["stays"] for f in folds) == n_stays
    for f in folds:  # each fold's version fitted on the other two parts only
        assert f["fitted_on"]["train"] + f["fitted_on"]["tune"] + f["held_out"]["stays"] in (n_stays, n_stays - 1)
        assert f["adaptation"] in ("recalibration", "continued_boosting") and f["held_out"]["septic_stays"] >= 3
    # how sure each comparison is: a paired stay bootstrap of the same two metrics on the same stays
    cross, check = gate["crossfit"]["noise"], gate["check_noise"]
    assert cross == line["gate_crossfit_noise"] and check == line["gate_check_noise"]
    assert (cross["stays"], cross["septic_stays"]) == (n_stays, gate["data"]["septic_stays"])
    assert (check["stays"], check["septic_stays"]) == (split["check"]["stays"], split["check"]["septic_stays"])
    rep = ob["site_metrics"]["check"]
    for key, metric, margin in (("utility", "utility", "margin_utility"), ("auroc", "auroc", "margin_auroc")):
        for noise in (cross, check):
            d = noise[key]
            assert d["margin"] == gate[margin] and d["low"] <= d["high"] and 0.0 <= d["share_refused"] <= 1.0
        diff = gate["candidate_metrics"][metric] - gate["serving_metrics"][metric]
        assert cross[key]["difference"] == pytest.approx(diff, abs=1e-9)
        # the registered version's own comparison on the check stays is the report's
        want = rep["onboarded"][metric] - rep["base"][metric]
        assert check[key]["difference"] == pytest.approx(want, abs=1e-6)
    assert any("cross-fitted" in n for n in gate["notes"]) and any("check stays" in n for n in gate["notes"])
    assert "gate's comparisons on every sample stay" in stdout and "gate's comparisons on the check stays" in stdout
    assert "gate against sepsis-gbm:1 on every sample stay, cross-fitted: " in stdout
    # the level is within the budget on the stays it was fitted on, and the card serves it
    assert ref.alert_level == ref.card["alert_policy"]["raise_at"] == line["alert_level"]
    assert ref.card["alert_policy"]["site"]["burden"] <= 0.2 * 0.9
    # by default the most septic stays alerted early within the cap, ties to the level that spends the budget
    tried = [levels.LevelPoint(**p) for p in ob["levels_tried"]]
    assert ref.alert_level == levels.choose_level_labelled(tried, 0.2, by="early").level
    chosen_by = ref.card["alert_policy"]["chosen_by"]
    assert "share of septic stays alerted before onset" in chosen_by and "ties to the higher burden" in chosen_by
    cal = Calibration.load(ref.path / CALIBRATION_FILE)
    assert (cal.model, cal.version) == (ref.name, ref.version) and 12 in cal.sepsis
    sc = Scorer(ref)
    sc.check_canary()
    assert sc.onset_probability(0.5) is not None
    assert (out / "report.md").read_text().count("sepsis-gbm:") >= 2
    report = json.loads((out / "report.json").read_text())
    assert report["check"]["onboarded"]["threshold"] == ref.threshold
    assert reg.serving()["sepsis-gbm"] != ref.version  # registered, not serving (no --promote)
    _assert_site_abstention(site, ref, reg.get("sepsis-gbm:1"), report)

    # `vigil evaluate` and `vigil predict` read the site's threshold and level from the card
    env = {"VIGIL_MODELS_DIR": str(site["registry"])}
    res = CliRunner().invoke(cli, ["evaluate", "--model", line["model"], "--data", str(site["data"]), "--limit", "30",
                                   "--out", str(site["root"] / "eval")], env=env)  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["model"] == line["model"] and summary["threshold"] == ref.threshold
    metrics = json.loads((site["root"] / "eval" / "metrics.json").read_text())
    assert metrics["model"]["threshold"] == ref.threshold
    assert metrics["model"]["onset_probability"]["horizon_h"] == 12  # the site's calibration, evaluated
    assert 0 <= metrics["model"]["onset_probability"]["ece"] <= 1
    assert metrics["alerting"]["model_risk"]["alerts"] >= 0 and metrics["model"]["name"] == "sepsis-gbm"
    ab = metrics["abstention"]  # the site version's block serves: `vigil evaluate` splits its alerts
    assert (ab["measure"], ab["cutoff"]) == ("low_coverage", ref.card["abstention"]["cutoff"])
    assert ab["all"]["alerts"] == metrics["alerting"]["model_risk"]["alerts"] >= ab["confident"]["alerts"]
    pred = site["root"] / "pred"
    res = CliRunner().invoke(cli, ["predict", "--input", str(site["data"]), "--output", str(pred), "--model",
                                   line["model"], "--limit", "3"], env=env)  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = [r.split("|") for f in sorted(pred.glob("*.psv")) for r in f.read_text().splitlines()[1:]]
    assert rows and all(int(lab) == int(float(p) >= ref.threshold) for p, lab in rows)


def _assert_site_abstention(site: dict[str, Path], ref: ModelRef, base: ModelRef, report: dict) -> None:
    """The site card's abstention block: the base's measure and cut-off, named as inherited; the base's fit and
    figures under base_* keys; the site's own figures on the held-back check stays, equal to a recomputation."""
    from vigil.abstain import coverage, history_hours
    from vigil.onboarding.run import _features
    from vigil.onboarding.sample import split_site
    from vigil.training.data import load_training_frame

    ab, bb = ref.card["abstention"], base.card["abstention"]
    assert (ab["measure"], ab["cutoff"], ab["fitted_on"]) == ("low_coverage", bb["cutoff"], bb["fitted_on"])
    assert (ab["version"], ab["min_history_h"]) == (bb["version"], bb["min_history_h"]) == (2, 9.0)  # kept as it is
    assert "min_history_h" not in ab["base_fit"]
    assert ab["inherited_from"] == "sepsis-gbm:1" and "kept from the base" in ab["cutoff_rule"]
    assert "evaluation" not in ab and "level" not in ab  # the base's figures and level are not the site's
    assert ab["base_fit"]["level"] == bb["level"] == base.alert_level
    assert ab["base_evaluation"]["test"] == bb["evaluation"]["test"] and "not this site" in ab["base_evaluation"]["of"]
    se = ab["site_evaluation"]
    ob = ref.card["onboarding"]
    check = split_site(load_training_frame(site["data"]), 3).check  # the CLI's --seed 3, default fractions
    assert se["stays"] == ob["split"]["check"]["stays"] == check["patient_id"].nunique() > 0
    assert se["rows"] == ob["split"]["check"]["rows"] == len(check)
    assert se["model"] == f"{ref.name}:{ref.version}" and se["alert_level"] == ref.alert_level
    assert se["labels_read"] is True and "check stays" in se["on"] and ob["site_sample"]["sha256"] in se["on"]
    # the indeterminate share is serving's flag on the check rows: coverage below the inherited cut-off, or fewer
    # hours of the stay behind the row than the inherited min_history_h
    x, _ = _features(check)
    flags = (coverage(x) < ab["cutoff"]) | (history_hours(x) < ab["min_history_h"])
    assert flags.sum() > (coverage(x) < ab["cutoff"]).sum()  # the history criterion flags rows coverage does not
    assert 0.0 < flags.mean() < 1.0 and se["share_rows_indeterminate"] == pytest.approx(flags.mean())
    _, ind, _ = Scorer(ref).predict_flagged(x)
    assert ind is not None and int(ind.sum()) == int(flags.sum())
    a, c = se["all"]["alerts"], se["confident"]["alerts"]
    assert a >= c and se["share_alerts_indeterminate"] == pytest.approx((a - c) / a)
    assert se["all"]["ppv_stay"] is not None and "ppv_relative_gain" in se
    # the report shows base and onboarded on the same check stays, each at its own level
    rb, ro = report["check"]["base"]["abstention"], report["check"]["onboarded"]["abstention"]
    assert ro == {k: v for k, v in se.items() if k not in ("on", "policy")} | {
        "measure": "low_coverage", "cutoff": ab["cutoff"], "min_history_h": 9.0}
    assert (rb["model"], rb["alert_level"], rb["stays"], rb["rows"]) == ("sepsis-gbm:1", base.alert_level, se["stays"],
                                                                         se["rows"])  # fmt: skip
    assert rb["share_rows_indeterminate"] == se["share_rows_indeterminate"]  # same inputs, same cut-off
    assert report["abstention"]["inherited_from"] == "sepsis-gbm:1"


def test_unlabelled_onboarding_moves_only_the_level_and_marks_the_calibration(site: dict[str, Path]) -> None:
    line, _ = _run(site, "--unlabelled", "--budget", "0.3", "--sample-frac", "0.9", "--promote", "--out",
                   str(site["root"] / "report-unlabelled"))  # fmt: skip
    reg = Registry(site["registry"])
    ref, base = reg.get(line["model"]), reg.get("sepsis-gbm:1")
    sample = ref.card["onboarding"]["site_sample"]
    assert sample["sample_frac"] == 0.9 and sample["stays"] == 180  # a seeded 90 % of the 200 stays
    # the gate passed (same graph and threshold), so --promote made it serve, with the gate in the history
    assert line["gate_passed"] is True and line["promoted"] == ref.version
    assert reg.serving()["sepsis-gbm"] == ref.version and reg.history("sepsis-gbm")[-1]["gate"]["passed"] is True
    assert line["adaptation"].startswith("none") and ref.card["onboarding"]["site_sample"]["labels_used"] is False
    assert ref.card["canary"]["probabilities"] == pytest.approx(base.card["canary"]["probabilities"], abs=1e-6)
    assert ref.card["onboarding"]["calibration"]["site_validated"] is False and ref.threshold == base.threshold
    cal = Calibration.load(ref.path / CALIBRATION_FILE)
    assert (cal.model, cal.version) == (ref.name, ref.version) and cal.meta["site_validated"] is False
    # label-free choice: the lowest level of the grid whose replayed burden stays within 0.3 x (1 - 0.1)
    tried = ref.card["onboarding"]["levels_tried"]
    assert all(p["utility"] is None for p in tried)
    within = [p["level"] for p in tried if p["burden"] <= 0.27]
    assert ref.alert_level == min(within)
    assert ref.card["onboarding"]["gate"]["passed"] is True  # loads and reproduces its card
    # abstention: the base's cut-off kept; label-free onboarding reads no label, so the block has shares only
    ab = ref.card["abstention"]
    assert (ab["cutoff"], ab["inherited_from"]) == (base.card["abstention"]["cutoff"], "sepsis-gbm:1")
    se = ab["site_evaluation"]
    assert se["labels_read"] is False and "ppv" in se and "ppv_relative_gain" not in se
    assert not any("ppv" in k or "septic" in k for w in ("all", "confident") for k in se[w])
    assert se["stays"] == ref.card["onboarding"]["split"]["check"]["stays"] and se["alert_level"] == ref.alert_level
    assert 0.0 <= se["share_rows_indeterminate"] <= 1.0 and se["all"]["alerts"] >= se["confident"]["alerts"]
    # the file has labels: the report reads them for the check stays only (as its other figures), marked so
    report = json.loads((site["root"] / "report-unlabelled" / "report.json").read_text())
    ro = report["check"]["onboarded"]["abstention"]
    assert ro["labels_read"] is True and ro["share_rows_indeterminate"] == se["share_rows_indeterminate"]


def test_labelled_onboarding_refuses_a_sample_without_labels(site: dict[str, Path]) -> None:
    import pandas as pd

    bare = site["root"] / "nolabels.parquet"
    pd.read_parquet(site["data"]).drop(columns=["SepsisLabel"]).to_parquet(bare)
    res = CliRunner().invoke(cli, ["onboard", "--data", str(bare)], env={"VIGIL_MODELS_DIR": str(site["registry"])})
    assert res.exit_code != 0 and "--unlabelled" in res.output
    # label-free onboarding needs no label at all: the gate checks that it loads, the report has burden only
    res = CliRunner().invoke(cli, ["onboard", "--data", str(bare), "--model", "sepsis-gbm:1", "--unlabelled", "--out",
                                   str(site["root"] / "report-bare")], env={"VIGIL_MODELS_DIR": str(site["registry"])})
    assert res.exit_code == 0, res.output
    line = json.loads(res.stdout.strip().splitlines()[-1])
    assert line["gate_passed"] is True and set(line["check"]["onboarded"]) == {"alerts_per_patient_day"}
    card = Registry(site["registry"]).get(line["model"]).card
    assert "no labels at the site" in card["onboarding"]["gate"]["notes"][0]
    # no label anywhere: the abstention figures of both versions are shares and alert counts only
    report = json.loads((site["root"] / "report-bare" / "report.json").read_text())
    for fig in (card["abstention"]["site_evaluation"], report["check"]["base"]["abstention"],
                report["check"]["onboarded"]["abstention"]):  # fmt: skip
        assert fig["labels_read"] is False and "ppv_relative_gain" not in fig and "ppv_stay" not in fig["all"]
        assert 0.0 <= fig["share_rows_indeterminate"] <= 1.0
    assert "No label read" in (site["root"] / "report-bare" / "report.md").read_text()


def test_site_block_drops_a_member_measure_the_adapted_graph_cannot_serve() -> None:
    from types import SimpleNamespace

    from vigil.card import AbstentionSpec
    from vigil.onboarding.abstention import site_block

    block = {"version": 1, "measure": "member_logit_sd", "cutoff": 0.3, "level": 0.55, "fitted_on": "validation",
             "rows": 10, "evaluation": {"test": {"share_rows_indeterminate": 0.1}}}  # fmt: skip
    base = SimpleNamespace(name="m", version="1", card={"abstention": block})
    assert site_block(base, graph_is_base=False)[0] is None
    assert "dropped" in site_block(base, graph_is_base=False)[1]
    kept, note = site_block(base, graph_is_base=True)  # the base graph, members and all: kept as inherited
    assert note is None and (kept["measure"], kept["cutoff"], kept["inherited_from"]) == ("member_logit_sd", 0.3, "m:1")
    assert "level" not in kept and kept["base_fit"] == {"level": 0.55, "rows": 10, "note": kept["base_fit"]["note"]}
    assert kept["base_evaluation"]["test"] == block["evaluation"]["test"] and "evaluation" not in kept
    assert AbstentionSpec.model_validate(kept).inherited_from == "m:1"  # the card schema takes it
    assert site_block(SimpleNamespace(name="m", version="1", card={}), graph_is_base=True) == (None, None)


def test_label_free_onboarding_re_derives_a_decision_margin_block_at_the_site_level(tmp_path: Path,
                                                                                   site: dict[str, Path]) -> None:
    """``decision_margin_z`` is measured from the alert level: a label-free onboarding of the shipped 5-member
    ``sepsis-gbm:1`` (base graph kept, members and all) re-fits its cut-off on the site's fit stays at the site
    version's level, and the version serves it."""
    import shutil

    from vigil.abstain import decision_margin_z
    from vigil.card import read_card, write_card
    from vigil.evaluation.abstention import members_frame
    from vigil.onboarding.run import _features, site_sample_mask
    from vigil.onboarding.sample import split_site
    from vigil.training.data import load_training_frame

    repo = Path(__file__).resolve().parents[1] / "models"
    models = tmp_path / "models"
    shutil.copytree(repo / "sepsis-gbm" / "1", models / "sepsis-gbm" / "1")
    shutil.copy(repo / "card.schema.json", models / "card.schema.json")
    Registry(models)._write_serving({"sepsis-gbm": "1"})
    card = read_card(models / "sepsis-gbm" / "1" / "card.json")
    card["abstention"] = {"version": 1, "measure": "decision_margin_z", "cutoff": 1.5, "level": 0.55,
                          "fitted_on": "test", "share_of_alerting_rows": 0.25, "evaluation": {"test": {}}}  # fmt: skip
    write_card(models / "sepsis-gbm" / "1" / "card.json", card)
    data = site["data"]
    line, _ = _run({"registry": models, "data": data}, "--unlabelled", "--budget", "0.3", "--sample-frac", "0.5",
                   "--out", str(tmp_path / "report"))  # fmt: skip
    ref = Registry(models).get(line["model"])
    ab = ref.card["abstention"]
    assert ab["measure"] == "decision_margin_z" and ab["level"] == ref.alert_level and "re-derived" in ab["cutoff_rule"]
    assert ab["base_fit"]["level"] == 0.55 and ab["inherited_from"] == "sepsis-gbm:1" and "evaluation" not in ab
    df = load_training_frame(data)
    sp = split_site(df[site_sample_mask(df["patient_id"].to_numpy(), 0.5, 3)].reset_index(drop=True), 3)  # --seed 3
    p, mem, _, _ = members_frame(ref, sp.fit)
    z = decision_margin_z(p, mem, ref.alert_level)
    assert ab["site_fit"]["rows"] == len(sp.fit) and ab["site_fit"]["members"] == 5
    assert ab["cutoff"] == pytest.approx(float(np.quantile(z[p >= ref.alert_level], 0.25)))
    x, _ = _features(sp.check)
    _, ind, why = Scorer(ref).predict_flagged(x)  # serving reads the members of the kept graph
    assert ind is not None and ab["site_evaluation"]["share_rows_indeterminate"] == pytest.approx(ind.mean())
    assert {w for w, f in zip(why, ind, strict=True) if f} <= {"members_split_at_level"}


def _toy(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3000, 5)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(scale=0.7, size=3000) > 0.8).astype(np.float32)
    return x, y, 1 / (1 + np.exp(-(x[:, 0] - 1.0)))


def test_the_adapted_graphs_reproduce_their_framework_within_1e_4() -> None:
    import onnx
    from onnx import TensorProto, helper

    # a base graph: probability = sigmoid(features[:, 0] - 1)
    nodes = [helper.make_node("Gather", ["features", "i0"], ["f0"], axis=1),
             helper.make_node("Sub", ["f0", "one"], ["z"]), helper.make_node("Sigmoid", ["z"], ["probability"])]
    g = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 5])],
                          [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 1])],
                          initializer=[helper.make_tensor("i0", TensorProto.INT64, [1], [0]),
                                       helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])  # fmt: skip
    base = helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)])
    base.ir_version = 8
    onnx.checker.check_model(base)
    x, y, p = _toy(0)
    rec = adapt.fit_recalibration(p, y)
    boost = adapt.fit_boost(x[:2000], y[:2000], p[:2000], x[2000:], y[2000:], p[2000:], seed=1,
                            h=adapt.site_boost_hyper(min_child_samples=20, max_rounds=80, patience=20))  # fmt: skip
    assert boost.rounds >= 1
    for proto, native in ((adapt.recalibrated_onnx(base, rec, 5), rec(p)),
                          (adapt.boosted_onnx(base, boost, 5), boost(p, x))):  # fmt: skip
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(["probability"], {"features": x})[0].reshape(-1)
        assert float(np.max(np.abs(got - native))) < 1e-4
    # the site trees learned the interaction the base lacks: the boosted model ranks the held-out rows better
    from vigil.evaluation.metrics import auroc

    assert auroc(y[2000:], boost(p[2000:], x[2000:])) > auroc(y[2000:], p[2000:]) + 0.02


def test_level_grid_is_scale_free_and_the_labelled_choice_respects_the_budget() -> None:
    s = np.linspace(0.0, 0.01, 1000)  # a low-lying score scale still gets distinct levels
    assert levels.level_grid(s).size > 20
    pts = [levels.LevelPoint(0.1, 0.5, 0.9, 0.5, 0.1), levels.LevelPoint(0.2, 0.17, 0.7, 0.4, 0.2),
           levels.LevelPoint(0.3, 0.1, 0.6, 0.45, 0.3)]  # fmt: skip
    assert levels.choose_level_labelled(pts, 0.2).level == 0.3  # highest utility within 0.18
    assert levels.choose_level_labelled(pts, 0.2, by="early").level == 0.2  # most septic stays alerted early
    assert levels.choose_level_labelled(pts, 0.05) is None
    # ties: "early" spends the budget (the lower level within the cap), "utility" keeps to the lower burden
    tied = [levels.LevelPoint(0.15, 0.25, 0.8, 0.3, 0.1), levels.LevelPoint(0.2, 0.17, 0.8, 0.45, 0.2),
            levels.LevelPoint(0.25, 0.12, 0.8, 0.45, 0.25), levels.LevelPoint(0.3, 0.1, 0.6, 0.4, 0.3)]  # fmt: skip
    assert levels.choose_level_labelled(tied, 0.2, by="early").level == 0.2  # 0.15 is over the cap of 0.18
    assert levels.choose_level_labelled(tied, 0.2, by="utility").level == 0.25


def test_the_label_free_level_is_refined_between_grid_levels_up_to_the_cap() -> None:
    from vigil.config import load_settings

    rng = np.random.default_rng(5)
    starts = np.zeros(30_000, bool)
    starts[::40] = True  # 750 stays of 40 h
    scores = rng.beta(1.2, 6.0, starts.size) ** 0.7
    policy = load_settings(None).alerts
    grid = levels.replay_levels(scores, starts, policy, levels.level_grid(scores))
    coarse = levels.choose_level_unlabelled(grid, 0.2)
    chosen, tried = levels.refine_unlabelled(scores, starts, policy, grid, 0.2)
    assert chosen is not None and coarse is not None and len(tried) > len(grid)
    cap = 0.2 * 0.9
    # within the cap, at least as many alerts as the grid's choice, and no tried level below it is within the cap
    assert coarse.burden < chosen.burden <= cap and chosen.level < coarse.level
    assert all(p.burden > cap for p in tried if p.level < chosen.level)
    # the bracket is tight: the nearest lower level tried is within 2 % of the chosen one
    below = max(p.level for p in tried if p.level < chosen.level)
    assert (chosen.level - below) / chosen.level < 0.02
    assert [p.level for p in tried] == sorted(p.level for p in tried)
    # a grid with nothing over the cap below the choice needs no bisection
    top = [p for p in grid if p.level >= coarse.level]
    assert levels.refine_unlabelled(scores, starts, policy, top, 0.2)[0] == levels.choose_level_unlabelled(top, 0.2)
    # labelled: the bisection points are replayed with the labels and the criterion chooses among all points tried
    y = (rng.random(starts.size) < scores * 0.2).astype(np.int8)
    lgrid = levels.replay_levels(scores, starts, policy, levels.level_grid(scores), y)
    for by in ("early", "utility"):
        pick, tried = levels.refine_labelled(scores, starts, policy, lgrid, y, 0.2, by=by)
        assert pick is not None and len(tried) > len(lgrid) and all(getattr(p, by) is not None for p in tried)
        assert pick == levels.choose_level_labelled(tried, 0.2, by=by) and pick.burden <= cap
        assert getattr(pick, by) >= getattr(levels.choose_level_labelled(lgrid, 0.2, by=by), by)

def test_abstention_cutoffs_come_from_the_reference_and_confident_alerts_exclude_indeterminate_rows() -> None:
    from vigil.evaluation.abstention import HOURS_SENTINEL, evaluate_abstention, fit_abstention
    from vigil.features import FEATURE_NAMES

    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, len(FEATURE_NAMES))).astype(np.float32)
    hs = [i for i, n in enumerate(FEATURE_NAMES) if n.endswith("_hours_since")]
    x[:, hs] = np.where(rng.random((5000, len(hs))) < 0.7, 1.0, HOURS_SENTINEL)  # ~70 % of variables seen
    ab = fit_abstention(x, q=0.05)
    share = float(ab.indeterminate(x).mean())
    assert 0.0 < share <= 0.10 + 1e-9  # at most the two 5 % tails of the reference
    far = x[:10].copy()
    far[:, hs] = HOURS_SENTINEL  # nothing measured for 72 h: indeterminate
    assert ab.indeterminate(far).all()
    y = np.zeros(20, np.int8)
    y[15:] = 1
    starts = np.zeros(20, bool)
    starts[[0, 10]] = True
    alerts = np.zeros(20, bool)
    alerts[[2, 11]] = True
    ind = np.zeros(20, bool)
    ind[2] = True  # the non-septic stay's alert was indeterminate
    r = evaluate_abstention(alerts, ind, y, starts)
    assert (r["all"]["ppv_stay"], r["confident"]["ppv_stay"], r["share_alerts_indeterminate"]) == (0.5, 1.0, 0.5)


def test_the_cross_fit_scores_every_sample_stay_once_or_gives_way_to_the_check_stays(site: dict[str, Path]) -> None:
    import pandas as pd

    from vigil.offline import score_frame
    from vigil.onboarding.crossfit import MIN_SEPTIC_PER_PART, crossfit
    from vigil.scoring import Scorer

    base = Registry(site["registry"]).get("sepsis-gbm:1")
    scorer = Scorer(base)
    df = pd.read_parquet(site["data"])
    cf = crossfit(base, scorer, df, seed=3, tune_share=0.3, threads=1, min_gain=0.01)
    assert cf is not None and len(cf.folds) == 3
    n = len(df)
    assert cf.labels.size == cf.cand_scores.size == cf.base_scores.size == cf.cand_pred.size == n
    assert int(cf.stay_start.sum()) == df["patient_id"].nunique() == sum(f["held_out"]["stays"] for f in cf.folds)
    assert int(cf.labels.sum()) == int(df["SepsisLabel"].sum())
    # the base's scores are the base's, at its threshold; the candidate's predictions are its scores at its folds'
    # thresholds (one per fold)
    np.testing.assert_allclose(np.sort(cf.base_scores), np.sort(score_frame(scorer, df)[0]), atol=1e-7)
    assert np.array_equal(cf.base_pred, cf.base_scores >= base.threshold)
    starts = np.flatnonzero(cf.stay_start)
    bounds = np.cumsum([0] + [f["held_out"]["stays"] for f in cf.folds])
    rows = np.r_[starts, cf.labels.size]
    for f, a, b in zip(cf.folds, bounds[:-1], bounds[1:], strict=True):
        lo, hi = rows[a], rows[b]
        assert np.array_equal(cf.cand_pred[lo:hi], cf.cand_scores[lo:hi] >= f["threshold"])
        assert np.all(cf.fold[lo:hi] == f["fold"] - 1)  # the rows each fold's version scored
    # a sample with too few septic stays for three parts: no cross-fit (the gate judges the check stays, and says so)
    septic_ids = df.groupby("patient_id")["SepsisLabel"].max()
    few = set(septic_ids[septic_ids > 0].index[: 2 * MIN_SEPTIC_PER_PART]) | set(septic_ids[septic_ids == 0].index)
    assert crossfit(base, scorer, df[df["patient_id"].isin(few)].reset_index(drop=True), seed=3, tune_share=0.3,
                    threads=1, min_gain=0.01) is None  # fmt: skip


def test_the_preferred_adaptation_follows_the_sample_size_and_is_kept_unless_the_other_clearly_wins(
        site: dict[str, Path]) -> None:  # fmt: skip
    import click
    import pandas as pd

    from vigil.commands.onboard import onboard as onboard_cmd
    from vigil.offline import score_frame
    from vigil.onboarding.labelled import BOOST_FROM_STAYS, adapt_labelled, choose_adaptation, preferred_adaptation
    from vigil.onboarding.run import OnboardOptions
    from vigil.onboarding.sample import split_site
    from vigil.scoring import Scorer

    # the size rule, and the CLI's and the options' defaults are the module's
    assert [preferred_adaptation(n) for n in (0, BOOST_FROM_STAYS - 1, BOOST_FROM_STAYS, 10**6)] == [
        "recalibration", "recalibration", "continued_boosting", "continued_boosting"]
    assert preferred_adaptation(100, boost_from=100) == "continued_boosting"
    assert OnboardOptions().boost_from_stays == BOOST_FROM_STAYS
    opt = next(p for p in onboard_cmd.params if p.name == "boost_from_stays")
    assert isinstance(opt, click.Option) and opt.default == BOOST_FROM_STAYS
    # the choice: the preferred one unless the other gains more than min_gain; trees never without a tune utility
    nan = float("nan")
    for prefer, other in (("recalibration", "continued_boosting"), ("continued_boosting", "recalibration")):
        u = {prefer: 0.30, other: 0.30}
        assert choose_adaptation(u["recalibration"], u["continued_boosting"], prefer, 0.01) == prefer
        u[other] = 0.309
        assert choose_adaptation(u["recalibration"], u["continued_boosting"], prefer, 0.01) == prefer
        u[other] = 0.311
        assert choose_adaptation(u["recalibration"], u["continued_boosting"], prefer, 0.01) == other
    assert choose_adaptation(0.3, nan, "continued_boosting", 0.01) == "recalibration"
    assert choose_adaptation(nan, 0.3, "continued_boosting", 0.01) == "continued_boosting"
    assert choose_adaptation(nan, 0.3, "recalibration", 0.01) == "recalibration"
    with pytest.raises(ValueError, match="prefer"):
        choose_adaptation(0.3, 0.3, "boosting", 0.01)
    # real fits: with a margin no tune difference can reach, the preferred adaptation is the one kept, and the
    # details say which was preferred and what each scored on tune
    base = Registry(site["registry"]).get("sepsis-gbm:1")
    scorer = Scorer(base)
    sp = split_site(pd.read_parquet(site["data"]), 7)
    p_base = {k: score_frame(scorer, getattr(sp, k))[0] for k in ("train", "tune")}
    for prefer in ("recalibration", "continued_boosting"):
        ad = adapt_labelled(base, sp, p_base, "test", seed=7, threads=1, min_gain=10.0, prefer=prefer)
        compared = ad.details["compared"]
        assert ad.kind == prefer and compared["preferred"] == prefer
        assert np.isfinite(compared["continued_boosting"]["utility"])
        assert ad.fit_on == ("tune" if prefer == "continued_boosting" else "fit")
