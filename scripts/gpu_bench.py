"""GPU vs CPU inference of the sepsis-gbm and sepsis-tcn models (issue 15), one JSON + one Markdown table.

    python3 scripts/gpu_bench.py --out OUT/gpu.json       # OUT/gpu.md gets the table too

Contenders, at batch sizes 512..8192 (rows sampled, seeded, from the featurized hourly rows of
``data/sample``; a seeded synthetic fallback only if that fails, flagged in the JSON):

- ONNX Runtime CPU (``CPUExecutionProvider``), 1 intra-op thread and all cores: the reference;
- sepsis-gbm: each of the 5 ``TreeEnsembleClassifier`` members cut out into its own ONNX graph, converted by
  hummingbird-ml (``gemm``, ``tree_trav``, ``perfect_tree_trav``) to torch; the 5 outputs' class-1
  probabilities are averaged in torch (the model's ``Mean``); run on CUDA, and ``gemm`` on torch CPU too;
- sepsis-tcn: the whole graph converted by onnx2torch, on CUDA (fp32 strict, and TF32 allowed) and torch CPU.

Correctness first: every contender's output on a batch is compared with ONNX Runtime CPU's output on the same
batch; a max abs difference above ``--tol`` (1e-4) marks it failed and its timing is not reported. Timed span of a
torch contender: numpy input -> torch tensor -> host-to-device copy (pageable memory) -> forward ->
device-to-host copy -> numpy, with ``torch.cuda.synchronize()`` before the clock stops. ``resident_*`` columns
time the forward alone with the input already on the device. Median and min over the timed runs, after
warm-ups. Never crashes as a whole: each contender's error is recorded in the JSON. Tools for one measurement
only (torch, hummingbird-ml, onnx2torch are not dependencies of vigil).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GBM = ROOT / "models/sepsis-gbm/1/model.onnx"
TCN = ROOT / "models/sepsis-tcn/1/model.onnx"
SAMPLE = ROOT / "data/sample/physionet2019_sample.tar.gz"
T0 = time.perf_counter()


class Stop(BaseException):
    """SIGTERM (the caller's time limit): stop measuring, write what there is."""


STATE: dict = {}


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------- inputs
def load_inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(features [n,134], sequence [n,8,68], info): rows of data/sample featurized by vigil's own featurizer."""
    rng = np.random.default_rng(seed)
    try:
        sys.path.insert(0, str(ROOT / "src"))
        from vigil.features import featurize, frame_chunks, sequence
        from vigil.physionet import read_frame

        df = read_frame(SAMPLE)
        _, chunks = frame_chunks(df)
        xs, ss = [], []
        for _a, _b, inp in chunks:
            xs.append(featurize(inp))
            ss.append(sequence(inp))
        x_all, s_all = np.concatenate(xs), np.concatenate(ss)
        idx = rng.choice(x_all.shape[0], size=n, replace=n > x_all.shape[0])
        info = {
            "source": f"{SAMPLE.relative_to(ROOT)} featurized by vigil.features",
            "pool_rows": int(x_all.shape[0]),
            "sampling": f"seeded (seed {seed}) sample of {n} rows, with replacement: {n > x_all.shape[0]}",
            "synthetic": False,
        }
        return np.ascontiguousarray(x_all[idx], np.float32), np.ascontiguousarray(s_all[idx], np.float32), info
    except Exception as exc:  # noqa: BLE001 - fall back, flagged
        log(f"real rows unavailable ({err(exc)}); synthetic seeded inputs")
        x = rng.normal(0.0, 1.0, size=(n, 134)).astype(np.float32)
        s = rng.normal(0.0, 1.0, size=(n, 8, 68)).astype(np.float32)
        return x, s, {"source": "synthetic N(0,1) float32", "synthetic": True, "error": err(exc)}


# ---------------------------------------------------------------- timing
class Budget:
    def __init__(self, total_s: float) -> None:
        self.deadline = T0 + total_s

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def time_calls(fn, cell_s: float, max_reps: int, warmups: int, deadline: float | None = None) -> dict:
    """Warm-ups (the first one's output is returned for the correctness check), then timed calls.

    Past ``deadline`` (perf_counter) no further warm-up runs and timing stops after one timed call."""
    t = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t
    done_warm = 1
    while done_warm < warmups and first < 1.0 and (deadline is None or time.perf_counter() < deadline):
        fn()
        done_warm += 1
    if first > 2.0:  # slow cell (torch CPU at large batches): few reps
        reps = 2
    else:
        t = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t, 1e-6)
        done_warm += 1
        reps = 2 if one >= cell_s / 2 else int(min(max_reps, max(5, cell_s / one)))
    times = []
    for _ in range(reps):
        if times and deadline is not None and time.perf_counter() > deadline:
            break
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {
        "out": out,
        "first_call_ms": first * 1e3,
        "warmups": done_warm,
        "reps": len(times),
        "median_ms": statistics.median(times) * 1e3,
        "min_ms": min(times) * 1e3,
    }


# ---------------------------------------------------------------- contenders
def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def gbm_members(path: Path) -> list:
    """The 5 TreeEnsembleClassifier nodes, each as its own ONNX model (input [N,134] -> label, probabilities)."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(path))
    init = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    # the graph around the trees: Mul by 1.0, Gather class 1, Mean over members (checked, not assumed)
    assert all(float(v) == 1.0 for k, v in init.items() if k.endswith("_one")), init
    assert init["class_1"].tolist() == [1], init["class_1"]
    assert [n.op_type for n in m.graph.node][-1] == "Mean"
    out = []
    for node in (n for n in m.graph.node if n.op_type == "TreeEnsembleClassifier"):
        g = helper.make_graph(
            [node],
            node.name,
            [helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, [None, 134])],
            [
                helper.make_tensor_value_info(node.output[0], TensorProto.INT64, [None]),
                helper.make_tensor_value_info(node.output[1], TensorProto.FLOAT, [None, 2]),
            ],
        )
        sm = helper.make_model(g, opset_imports=m.opset_import)
        sm.ir_version = m.ir_version
        out.append(sm)
    return out


def hb_ensemble(members: list, impl: str, x_small: np.ndarray):
    import hummingbird.ml as hb
    import torch

    class Ensemble(torch.nn.Module):
        def __init__(self, execs: list) -> None:
            super().__init__()
            self.members = torch.nn.ModuleList(execs)

        def forward(self, x):
            return torch.stack([m(x)[1][:, 1] for m in self.members], dim=1).mean(dim=1, keepdim=True)

    conv = [hb.convert(sm, "torch", x_small, extra_config={"tree_implementation": impl}).model for sm in members]
    return Ensemble(conv).eval()


def torch_runner(module, device: str, arrays: list[np.ndarray]):
    import torch

    def call():
        with torch.inference_mode():
            ins = [torch.from_numpy(a).to(device) for a in arrays]
            y = module(*ins)
            y = y[0] if isinstance(y, (tuple, list)) else y
            res = y.cpu().numpy()
            if device == "cuda":
                torch.cuda.synchronize()
            return res

    return call


def torch_resident(module, arrays: list[np.ndarray]):
    import torch

    ins = [torch.from_numpy(a).to("cuda") for a in arrays]

    def call():
        with torch.inference_mode():
            module(*ins)
            torch.cuda.synchronize()

    return call


# ---------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON result path (the Markdown page is written beside it, .md)")
    ap.add_argument("--render", metavar="JSON", help="only write the Markdown page of an earlier result to --out")
    ap.add_argument("--batches", default="512,1024,2048,4096,8192")
    ap.add_argument("--budget-s", type=float, default=210.0, help="whole-run budget; late low-priority cells skip")
    ap.add_argument("--cell-s", type=float, default=0.8, help="timed seconds per (contender, batch) at most")
    ap.add_argument("--max-reps", type=int, default=50)
    ap.add_argument("--warmups", type=int, default=3)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--hb-impls", default="gemm,tree_trav,perfect_tree_trav")
    args = ap.parse_args()
    out_path = Path(args.out)
    if args.render:
        out_path.write_text(markdown(json.loads(Path(args.render).read_text())))
        return 0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    STATE["out"] = out_path
    batches = [int(b) for b in args.batches.split(",")]
    budget = Budget(args.budget_s)
    threads_all = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    res: dict = {
        "issue": 15,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "timed_span": (
            "torch: numpy->tensor, host-to-device copy (pageable), forward, device-to-host copy, numpy, "
            "torch.cuda.synchronize(); ORT: session.run on numpy (CPU). resident_*: CUDA forward only, input on device"
        ),
        "tolerance_max_abs_diff": args.tol,
        "reference": "ONNX Runtime CPUExecutionProvider, all cores, same batch",
        "commit": git_commit(),
        "args": vars(args),
        "env": {},
        "inputs": {},
        "conversions": [],
        "results": [],
        "errors": [],
    }

    STATE["res"] = res

    def save() -> None:
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1, default=str))
        tmp.replace(out_path)

    def record_error(where: str, exc: BaseException) -> None:
        log(f"ERROR {where}: {err(exc)}")
        res["errors"].append({"where": where, "error": err(exc), "traceback": traceback.format_exc()[-3000:]})
        save()

    # environment
    env = res["env"]
    env.update(
        python=sys.version.split()[0],
        platform=platform.platform(),
        cpu_threads=threads_all,
        numpy=np.__version__,
    )
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                env["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    for dist in (
        "onnx",
        "onnxruntime",
        "torch",
        "hummingbird-ml",
        "onnx2torch",
        "onnxconverter-common",
        "scikit-learn",
        "dill",
    ):
        try:
            env[dist] = version(dist)
        except Exception as exc:  # noqa: BLE001
            env[dist] = f"unavailable ({err(exc)})"
    cuda = False
    try:
        import onnxruntime as ort

        env["ort_available_providers"] = ort.get_available_providers()
    except Exception as exc:  # noqa: BLE001
        record_error("onnxruntime", exc)
        ort = None
    try:
        import torch

        torch.set_num_threads(threads_all)
        env["torch_threads"] = torch.get_num_threads()
        env["torch_cuda_build"] = torch.version.cuda
        cuda = torch.cuda.is_available()
        env["cuda_available"] = cuda
        if cuda:
            env["cuda_device"] = torch.cuda.get_device_name(0)
            env["cuda_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
            env["cudnn"] = torch.backends.cudnn.version()
            t = time.perf_counter()
            torch.zeros(1, device="cuda").sum().item()
            env["cuda_init_s"] = round(time.perf_counter() - t, 3)
        # fp32 strict for every contender unless it says TF32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        env["tf32"] = "TF32 off (torch.backends.cuda.matmul/cudnn.allow_tf32 = False) except contenders marked tf32"
    except Exception as exc:  # noqa: BLE001
        record_error("torch", exc)
        torch = None
    if not cuda:
        log("CUDA unavailable: CUDA contenders are recorded as skipped")
    log(f"env: {json.dumps(env)}")

    x_all, s_all, info = load_inputs(max(batches), args.seed)
    res["inputs"] = info
    log(f"inputs: {info}")
    save()
    cpu_extras: list = []  # torch CPU references, run after every CUDA contender

    def cell(
        model: str,
        contender: str,
        device: str,
        batch: int,
        fn,
        ref: np.ndarray | None,
        extra: dict,
        resident=None,
        low_priority: bool = False,
    ) -> dict | None:
        row = {"model": model, "contender": contender, "device": device, "batch": batch, **extra}
        if low_priority and budget.left() < 15:
            row.update(ok=None, skipped="whole-run budget spent")
            res["results"].append(row)
            return None
        try:
            tm = time_calls(fn, args.cell_s, args.max_reps, args.warmups, budget.deadline if low_priority else None)
            out = np.asarray(tm.pop("out"), dtype=np.float32).reshape(batch, -1)
            if ref is not None:
                diff = float(np.max(np.abs(out - ref)))
                row["max_abs_diff"] = diff
                row["ok"] = bool(diff <= args.tol)
            else:
                row["ok"] = True
                row["max_abs_diff"] = 0.0
            if row["ok"]:
                row.update({k: round(v, 4) if isinstance(v, float) else v for k, v in tm.items()})
                row["rows_per_s"] = round(batch / (tm["median_ms"] / 1e3))
                if resident is not None:
                    rt = time_calls(resident, args.cell_s / 2, args.max_reps, 2)
                    row["resident_median_ms"] = round(rt["median_ms"], 4)
                    row["resident_min_ms"] = round(rt["min_ms"], 4)
                    row["resident_rows_per_s"] = round(batch / (rt["median_ms"] / 1e3))
            else:
                row["failed"] = f"max abs diff {row['max_abs_diff']:.3g} > {args.tol:g}; timing excluded"
            log(
                f"{model:9s} {contender:34s} b={batch:5d} ok={row['ok']} diff={row['max_abs_diff']:.2g} "
                f"median={row.get('median_ms', float('nan')):.3f}ms rows/s={row.get('rows_per_s', '-')}"
            )
            res["results"].append(row)
            save()
            return {"out": out}
        except Exception as exc:  # noqa: BLE001
            row.update(ok=False, error=err(exc))
            res["results"].append(row)
            record_error(f"{model}/{contender}/b{batch}", exc)
            if torch is not None and device == "cuda":
                try:
                    torch.cuda.empty_cache()
                except Exception:  # noqa: BLE001, S110
                    pass
            return None

    def skipped(model: str, contender: str, device: str, why: str) -> None:
        for b in batches:
            res["results"].append(
                {"model": model, "contender": contender, "device": device, "batch": b, "ok": None, "skipped": why}
            )

    # ------------------------------------------------------------ models
    for model, path in (("sepsis-gbm", GBM), ("sepsis-tcn", TCN)):
        names = ["features"] if model == "sepsis-gbm" else ["features", "sequence"]
        refs: dict[int, np.ndarray] = {}
        # ORT CPU: reference (all cores) first, then 1 thread
        sessions = {}
        for label, th in (("ort-cpu all threads", threads_all), ("ort-cpu 1 thread", 1)):
            try:
                sessions[label] = ort_session(path, th)
            except Exception as exc:  # noqa: BLE001
                record_error(f"{model}/{label}/session", exc)
        for label, sess in sessions.items():
            th = sess.get_session_options().intra_op_num_threads
            for b in batches:
                feeds = {"features": x_all[:b]} if len(names) == 1 else {"features": x_all[:b], "sequence": s_all[:b]}
                r = cell(
                    model,
                    label,
                    "cpu",
                    b,
                    lambda s=sess, f=feeds: s.run(None, f)[0],
                    refs.get(b),
                    {"engine": "onnxruntime", "providers": sess.get_providers(), "threads": th},
                )
                if r is not None and b not in refs:
                    refs[b] = r["out"]

        def inputs(b: int, names: list[str] = names) -> list[np.ndarray]:
            return [x_all[:b]] if len(names) == 1 else [x_all[:b], s_all[:b]]

        def run_torch(
            contender: str, module, device: str, extra: dict, tf32: bool = False, model: str = model, refs: dict = refs
        ) -> None:
            if device == "cuda" and not cuda:
                skipped(model, contender, device, "CUDA unavailable (torch.cuda.is_available() is False)")
                return
            extra = {**extra, "tf32": tf32}
            if device == "cuda":
                extra["device_name"] = torch.cuda.get_device_name(0)
            else:
                extra["threads"] = torch.get_num_threads()
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            try:
                for b in batches:
                    if b not in refs:
                        res["results"].append(
                            {
                                "model": model,
                                "contender": contender,
                                "device": device,
                                "batch": b,
                                "ok": None,
                                "skipped": "no ORT reference",
                            }
                        )
                        continue
                    arrs = inputs(b)
                    resident = None
                    if device == "cuda":
                        try:
                            resident = torch_resident(module, arrs)
                        except Exception as exc:  # noqa: BLE001 - the copy-inclusive timing still runs
                            record_error(f"{model}/{contender}/b{b}/resident", exc)
                    cell(
                        model,
                        contender,
                        device,
                        b,
                        torch_runner(module, device, arrs),
                        refs[b],
                        extra,
                        resident=resident,
                    )
            finally:
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.allow_tf32 = False

        if torch is None:
            skipped(model, "torch", "cuda", "torch unavailable")
            continue
        if model == "sepsis-gbm":
            try:
                members = gbm_members(path)
            except Exception as exc:  # noqa: BLE001
                record_error(f"{model}/members", exc)
                continue
            for impl in [i for i in args.hb_impls.split(",") if i]:
                contender = f"hummingbird {impl} torch"
                if budget.left() < 30 and impl != "gemm":
                    skipped(model, contender, "cuda", "whole-run budget spent")
                    continue
                try:
                    t = time.perf_counter()
                    ens = hb_ensemble(members, impl, x_all[:64])
                    conv_s = time.perf_counter() - t
                    res["conversions"].append(
                        {
                            "model": model,
                            "tool": "hummingbird-ml",
                            "impl": impl,
                            "members": len(members),
                            "seconds": round(conv_s, 3),
                        }
                    )
                    log(f"hummingbird {impl}: converted {len(members)} members in {conv_s:.1f}s")
                    save()
                except Exception as exc:  # noqa: BLE001
                    res["conversions"].append(
                        {"model": model, "tool": "hummingbird-ml", "impl": impl, "error": err(exc)}
                    )
                    record_error(f"{model}/hummingbird {impl}/convert", exc)
                    skipped(model, contender, "cuda", "conversion failed")
                    continue
                extra = {"engine": f"torch (hummingbird-ml {env.get('hummingbird-ml')}, tree_implementation={impl})"}
                cpu_copy = copy.deepcopy(ens) if impl == "gemm" else None
                if cuda:
                    try:
                        run_torch(contender, ens.to("cuda"), "cuda", extra)
                    except Exception as exc:  # noqa: BLE001
                        record_error(f"{model}/{contender}/cuda", exc)
                else:
                    skipped(model, contender, "cuda", "CUDA unavailable (torch.cuda.is_available() is False)")
                if cpu_copy is not None:
                    cpu_extras.append((model, contender, cpu_copy, extra, dict(refs), inputs))
                del ens
                if cuda:
                    torch.cuda.empty_cache()
        else:
            contender = "onnx2torch torch"
            try:
                import onnx
                from onnx2torch import convert

                t = time.perf_counter()
                tm = convert(onnx.load(str(path))).eval()
                conv_s = time.perf_counter() - t
                res["conversions"].append({"model": model, "tool": "onnx2torch", "seconds": round(conv_s, 3)})
                log(f"onnx2torch: converted in {conv_s:.1f}s")
            except Exception as exc:  # noqa: BLE001
                res["conversions"].append({"model": model, "tool": "onnx2torch", "error": err(exc)})
                record_error(f"{model}/onnx2torch/convert", exc)
                skipped(model, contender, "cuda", "conversion failed")
                continue
            extra = {"engine": f"torch (onnx2torch {env.get('onnx2torch')})"}
            cpu_copy = copy.deepcopy(tm)
            if cuda:
                try:
                    mod = tm.to("cuda")
                    run_torch(contender, mod, "cuda", extra)
                    run_torch(contender + " tf32", mod, "cuda", extra, tf32=True)
                except Exception as exc:  # noqa: BLE001
                    record_error(f"{model}/{contender}/cuda", exc)
            else:
                skipped(model, contender, "cuda", "CUDA unavailable (torch.cuda.is_available() is False)")
            cpu_extras.append((model, contender, cpu_copy, extra, dict(refs), inputs))

    # torch CPU references last (low priority: skipped when the whole-run budget is spent), batch by batch across
    # the models so that a late run still has the small batches of both
    for b in batches:
        for model, contender, module, extra, mrefs, inputs in cpu_extras:
            if b not in mrefs:
                continue
            try:
                fn = torch_runner(module, "cpu", inputs(b))
                cell(
                    model,
                    contender,
                    "cpu",
                    b,
                    fn,
                    mrefs[b],
                    {**extra, "threads": torch.get_num_threads()},
                    low_priority=True,
                )
            except Exception as exc:  # noqa: BLE001
                record_error(f"{model}/{contender}/cpu/b{b}", exc)

    res["elapsed_s"] = round(time.perf_counter() - T0, 1)
    save()
    table = markdown(res)
    out_path.with_suffix(".md").write_text(table)
    print(table, flush=True)
    log(f"done in {res['elapsed_s']}s; {len(res['errors'])} errors; wrote {out_path}")
    return 0


def markdown(res: dict) -> str:
    """A whole Markdown page (docs/gpu.md) from one result."""
    env, inp = res["env"], res["inputs"]
    ort_all = {
        (r["model"], r["batch"]): r["rows_per_s"]
        for r in res["results"]
        if r.get("ok") and r["contender"] == "ort-cpu all threads"
    }
    conv = "; ".join(
        " ".join(x for x in (c["tool"], c.get("impl")) if x)
        + ": "
        + (f"{c['seconds']:.1f} s" if "seconds" in c else f"ERROR {c.get('error')}")
        for c in res["conversions"]
    )
    lines = [
        "# GPU inference: CUDA vs CPU (issue 15)",
        "",
        f"Generated by `scripts/gpu_bench.py` from one run on {res['date']}"
        + (f", commit `{res['commit']}`" if res.get("commit") else "")
        + ". `make bench` runs on CPU only and does not touch this page. The worker scores with ONNX Runtime"
        " CPUExecutionProvider; nothing here changes that.",
        "",
        f"- Machine: GPU {env.get('cuda_device', 'none (CUDA unavailable)')}"
        + (
            f" (compute capability {env['cuda_capability']}, cuDNN {env.get('cudnn')})"
            if "cuda_capability" in env
            else ""
        )
        + f"; CPU {env.get('cpu_model', '?')}, {env.get('cpu_threads')} threads; Python {env.get('python')}.",
        f"- Versions: torch {env.get('torch')} (CUDA build {env.get('torch_cuda_build')}), onnxruntime "
        f"{env.get('onnxruntime')} (available providers {env.get('ort_available_providers')}), onnx {env.get('onnx')}, "
        f"hummingbird-ml {env.get('hummingbird-ml')}, onnx2torch {env.get('onnx2torch')}.",
        f"- Inputs: {inp.get('source')}; {inp.get('sampling', '')}"
        + (" **(synthetic: real rows unavailable)**" if inp.get("synthetic") else "")
        + "; batch b = the first b rows.",
        f"- Reference and correctness: every output is compared with {res['reference']}; max abs difference above "
        f"{res['tolerance_max_abs_diff']:g} = failed, timing not shown.",
        f"- Timed span: {res['timed_span']}. Median and min over the timed runs after warm-ups.",
        "- sepsis-gbm on torch: each of the 5 TreeEnsembleClassifier members converted by hummingbird-ml, the class-1"
        " probabilities averaged in torch (the model's Mean). sepsis-tcn on torch: the whole graph by onnx2torch."
        f" {env.get('tf32', '')}.",
        f"- Conversion times (CPU, once): {conv}.",
        "",
        "| model | contender | device | threads | batch | max abs diff | median ms | min ms | rows/s "
        "| x ORT CPU all threads | resident median ms | resident rows/s | reps |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {}
    for r in res["results"]:
        order.setdefault((r["model"], r["contender"], r["device"]), len(order))
    rows = sorted(
        res["results"], key=lambda r: (r["model"], order[(r["model"], r["contender"], r["device"])], r["batch"])
    )
    for r in rows:
        head = f"| {r['model']} | {r['contender']} | {r.get('device_name', r['device'])} | {r.get('threads', '')} "
        if r.get("ok") is None:
            lines.append(f"{head}| {r['batch']} | skipped: {r.get('skipped')} | | | | | | | |")
            continue
        if not r.get("ok"):
            why = (r.get("failed") or r.get("error", "")).replace("|", "/")
            lines.append(f"{head}| {r['batch']} | FAILED: {why[:160]} | | | | | | | |")
            continue
        base = ort_all.get((r["model"], r["batch"]))
        ratio = f"{r['rows_per_s'] / base:.2f}" if base else ""
        lines.append(
            f"{head}| {r['batch']} | {r['max_abs_diff']:.2g} | {r['median_ms']:.3f} | {r['min_ms']:.3f} "
            f"| {r['rows_per_s']:,} | {ratio} | {r.get('resident_median_ms', '')} | "
            f"{format(r['resident_rows_per_s'], ',') if 'resident_rows_per_s' in r else ''} | {r['reps']} |"
        )
    lines += ["", f"Errors recorded: {len(res['errors'])}. Whole run: {res.get('elapsed_s')} s."]
    if res.get("stopped"):
        lines += ["", f"**Stopped early: {res['stopped']}.**"]
    for e in res["errors"]:
        lines.append(f"- {e['where']}: {e['error'][:300]}")
    return "\n".join(lines) + "\n"


def _on_sigterm(signum, frame) -> None:
    raise Stop


def _finish_partial(reason: str) -> None:
    res, out = STATE.get("res"), STATE.get("out")
    if res is None or out is None:
        return
    res["stopped"] = f"{reason}: partial result"
    res["elapsed_s"] = round(time.perf_counter() - T0, 1)
    out.write_text(json.dumps(res, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res), flush=True)
    log(f"stopped ({reason}); partial result in {out}")


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        sys.exit(main())
    except Stop:
        _finish_partial("SIGTERM before the end (time limit)")
        sys.exit(0)
    except Exception:  # noqa: BLE001 - last resort: never crash without a word
        traceback.print_exc()
        _finish_partial("unexpected error, see the log")
        sys.exit(0)
