"""The gradient-boosted-tree family (``vigil.training.gbm``) with real LightGBM, onnxmltools and ONNX Runtime:
thresholds made float32-exact keep LightGBM's decisions and make ONNX Runtime agree exactly at the split
points; the exported graph has the serving contract and averages its members; admin dropout uses the
featurizer's own "unknown" encoding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vigil.features import FEATURE_NAMES, featurize_frame

lgb = pytest.importorskip("lightgbm", reason="the [train] extra is part of `make test` (make install-train)")
ort = pytest.importorskip("onnxruntime")

from vigil.training import gbm  # noqa: E402  (after the skip: the module's fit needs lightgbm)

N_FEATURES = 6


def _booster(seed: int, rounds: int = 40) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3000, N_FEATURES)).astype(np.float32)
    y = ((x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(scale=0.7, size=3000)) > 0.8).astype(np.float32)
    params = {"objective": "binary", "verbosity": -1, "num_threads": 1, "seed": seed, "num_leaves": 15,
              "min_child_samples": 20, "deterministic": True, "force_row_wise": True}  # fmt: skip
    return lgb.train(params, lgb.Dataset(x, y), rounds)


def _thresholds(b: lgb.Booster) -> list[tuple[int, float]]:
    out = []

    def walk(node: dict) -> None:
        if "split_feature" in node:
            out.append((int(node["split_feature"]), float(node["threshold"])))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in b.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return out


def _at_the_split_points(b: lgb.Booster) -> np.ndarray:
    """Rows whose feature sits on each float32 neighbour of each split threshold (other features random)."""
    rows = []
    rng = np.random.default_rng(1)
    for f, t in _thresholds(b):
        t32 = np.float32(t)
        for v in (np.nextafter(t32, np.float32(-np.inf)), t32, np.nextafter(t32, np.float32(np.inf))):
            r = rng.normal(size=N_FEATURES).astype(np.float32)
            r[f] = v
            rows.append(r)
    return np.asarray(rows, dtype=np.float32)


def test_float32_thresholds_keep_lightgbms_decisions_and_onnx_runtime_agrees_at_every_split() -> None:
    b = _booster(0)
    exact, changed = gbm.float32_thresholds(b)
    assert changed > 0  # LightGBM's double thresholds are not float32 numbers
    assert all(float(np.float32(t)) == t for _, t in _thresholds(exact))
    x = _at_the_split_points(b)
    np.testing.assert_array_equal(b.predict(x), exact.predict(x))  # same decisions for float32 inputs
    proto = gbm.to_onnx([exact], N_FEATURES)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(["probability"], {"features": x})[0].reshape(-1)
    assert float(np.max(np.abs(got - exact.predict(x)))) < 1e-6


def test_the_exported_graph_has_the_serving_contract_and_averages_its_members() -> None:
    members = [gbm.float32_thresholds(_booster(s))[0] for s in (0, 1)]
    proto = gbm.to_onnx(members, N_FEATURES, doc="test")
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["features"]
    assert [(o.name, o.shape[1]) for o in sess.get_outputs()] == [("probability", 1)]
    x = np.random.default_rng(2).normal(size=(257, N_FEATURES)).astype(np.float32)
    got = sess.run(None, {"features": x})[0]
    assert got.shape == (257, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got.reshape(-1), gbm.predict(members, x), atol=1e-6)
    assert not np.allclose(members[0].predict(x), members[1].predict(x))  # two different members


def test_admin_dropout_uses_the_featurizers_unknown_encoding_on_whole_stays() -> None:
    df = pd.DataFrame({"patient_id": ["a", "a", "b"], "ICULOS": [1, 2, 1], "HR": [80.0, 82.0, 90.0],
                       "HospAdmTime": [np.nan] * 3, "Unit1": [np.nan] * 3, "Unit2": [np.nan] * 3})  # fmt: skip
    x, starts = featurize_frame(df)
    for name, value in gbm.UNKNOWN_ADMIN.items():
        assert x[:, FEATURE_NAMES.index(name)].tolist() == [value] * 3, name
    known = featurize_frame(df.assign(HospAdmTime=-30.0, Unit1=1.0, Unit2=0.0))[0]
    out = gbm.admin_dropout(known, starts, 0.5, seed=3)
    cols = [FEATURE_NAMES.index(n) for n in gbm.UNKNOWN_ADMIN]
    blanked = np.all(out[:, cols] == x[:, cols], axis=1)
    assert blanked[0] == blanked[1]  # a stay is blanked whole or not at all
    others = [j for j in range(len(FEATURE_NAMES)) if j not in cols]
    np.testing.assert_array_equal(out[:, others], known[:, others])
    assert gbm.admin_dropout(known, starts, 0.0, seed=3).tolist() == known.tolist()
