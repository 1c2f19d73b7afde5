"""Host side of ``scripts/riscv-check``, and the models, rows and tolerances that ``tests/test_riscv.py`` shares.

``prepare DIR [--rows N]``: trains the four task models for a few steps, exports them to ONNX, writes N
rows per task and onnxruntime's outputs for them (float32, and int8 from ``quantize_dynamic``) into DIR.
``compare DIR``: checks the outputs that ``core/serving/inference/riscv.py`` wrote (``<task>.<mode>.out.npy`` for
the modes in ``MODES``) against those references, prints a table and PASS/FAIL (exit code 0/1).
``mirror [--apt-dir DIR]``: prints the Debian mirror to build the riscv64 root from (``debian_mirror``):
``$ANYA_FL_DEBIAN_MIRROR``, else the first Debian archive in apt's own sources; exit code 2 and what to set
when there is none. No mirror is written into this file or the script.

Tolerances (errors are absolute for the fraud probability and anomaly score, relative to max(1, |want|)
for the fee rate in sat/vB, which can be large):

* ``float32`` vs onnxruntime float32: max error <= 1e-5.
* ``int8-tensor`` (per-tensor activations) vs onnxruntime's own dynamic int8 of the same graph
  (``quantize_dynamic(per_channel=True, weight_type=QInt8)``, the same scheme): <= 1e-4. This checks the
  integer arithmetic; its accuracy against float32 is onnxruntime's, and is not asserted.
* ``int8`` (default, per-row activations) vs onnxruntime float32: ``INT8_MAX_ERROR``. With weights trained
  a few hundred steps (sharp logits, as real checkpoints have) 1e-2 holds for the fee rate and anomaly
  score, but int8 moves the fraud probability by up to ~0.016 where it is steepest (p near 0.5), so fraud
  gets 0.03.
* decisions (``decision``): >= 99.5 % of rows (or all but one, for small samples) decide the same as with
  onnxruntime float32, for ``float32`` and ``int8``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from core.bitcoin.features import TASKS

ROWS = 10_000
CHAIN = {"n_transactions": 30_000, "seed": 5}
NETWORK_SEED = 3  # network episodes and the Lightning network of the samples (the tests use the same, once per process)
TRAIN_STEPS = 200
MODEL_SEED = 7
FEE_CALIB_OFFSETS = (0.35, 0.2, 0.1, -0.15, -0.5)  # log-space; nonzero and distinct so the graph keeps them

MODES = {"float32": [], "int8": ["--int8"], "int8-tensor": ["--int8", "--activations", "tensor"]}
FLOAT_MAX_ERROR = 1e-5
INT8_VS_ORT_MAX_ERROR = 1e-4
INT8_MAX_ERROR = {"fraud": 0.03, "fee": 1e-2, "anomaly": 1e-2, "network": 0.03, "liquidity": 0.03}
DECISION_AGREEMENT = 0.995
FEE_BUCKET_RATIO = 1.1


def error(task: str, got: np.ndarray, want: np.ndarray) -> float:
    """Max error of ``got`` against ``want``: absolute, or relative to max(1, |want|) for the fee rate."""
    d = np.abs(np.asarray(got, dtype=np.float64) - np.asarray(want, dtype=np.float64))
    if task == "fee":
        d = d / np.maximum(1.0, np.abs(np.asarray(want, dtype=np.float64)))
    return float(d.max()) if d.size else 0.0


def decision(task: str, out: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """What a node does with each row's output; thresholds come from the float32 ``reference`` outputs.

    fraud: flag the riskiest 1 % (probability >= the reference's 99th percentile: a fixed 0.5 would flag
    almost nothing for a rare class). network: flag an attack at probability 0.5; liquidity: expect the hop to
    forward at probability 0.5. anomaly: alert on the top 1 % of scores. fee: the fee-rate bucket a
    wallet picks, ``floor(log(rate) / log(1.1))`` (10 % steps, two of Bitcoin Core's 5 % fee buckets: at
    5 % steps, int8 moves 0.4-6 % of rows to a neighbouring bucket, because many rows sit near a boundary).
    """
    out = np.asarray(out, dtype=np.float64)
    if task in ("network", "liquidity"):  # the attack flag; whether a payer expects the hop to forward
        return out >= 0.5
    if task == "fee":
        return np.floor(np.log(np.maximum(out, 1e-9)) / np.log(FEE_BUCKET_RATIO))
    return out >= np.quantile(np.asarray(reference, dtype=np.float64), 0.99)


def agreement(task: str, got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean(decision(task, got, want) == decision(task, want, want))) if len(want) else 1.0


def _arrays() -> dict:
    """Every task's rows: the simulated chain's, telemetry of simulated nodes under attack (network) and a simulated
    Lightning network's channels (liquidity)."""
    from anya_fl.experiments.sample_data import sample_task_arrays
    from core.data.chain import ChainConfig, simulate_chain

    return sample_task_arrays(simulate_chain(ChainConfig(**CHAIN)), NETWORK_SEED)


def task_rows(task: str, n: int = ROWS, seed: int = 0) -> np.ndarray:
    """``n`` realistic rows of ``task`` (all splits), resampled up to ``n``."""
    from core.data.datasets import SPLITS

    arrays = _cached("arrays", _arrays)
    x = np.concatenate([arrays[task].x[s] for s in SPLITS])
    rng = np.random.default_rng(seed)
    if len(x) >= n:
        return np.ascontiguousarray(x[rng.permutation(len(x))[:n]])
    extra = x[rng.integers(0, len(x), n - len(x))]
    return np.ascontiguousarray(np.concatenate([x, extra]))


def _one_torch_thread():
    """models.training.single_torch_thread (imported late: the host side only needs torch here)."""
    from models.training import single_torch_thread

    return single_torch_thread()


def trained_model(task: str, steps: int = TRAIN_STEPS, seed: int = MODEL_SEED):
    """The task model after ``steps`` Adam steps (batch 256, the task's lr) on the chain's train split;
    the fee model also gets nonzero calibration offsets."""
    import torch

    from models.tasks import build_model, targets, task_spec

    arrays = _cached("arrays", _arrays)
    spec, split = task_spec(task), arrays[task]
    x = torch.from_numpy(split.x["train"])
    y = torch.from_numpy(np.ascontiguousarray(targets(task, split, "train"), dtype=np.float32))
    model = build_model(task, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with _one_torch_thread():
        for _ in range(steps):
            idx = torch.randint(0, len(x), (256,), generator=gen)
            opt.zero_grad()
            spec.loss(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    if task == "fee":
        with torch.no_grad():
            model.calib_offset.copy_(torch.tensor(FEE_CALIB_OFFSETS))
    return model


def export(task: str, model) -> bytes:
    from models.export import export_onnx

    with _one_torch_thread():
        return export_onnx(task, model, {"run": "riscv-check", "round": 0, "steps": TRAIN_STEPS})


def ort_int8_exact() -> bool:
    """Whether onnxruntime's MatMulInteger accumulates exactly in int32 on this CPU.

    Its u8 x s8 kernel for AVX2 without VNNI (``vpmaddubsw``) saturates each pair of products at int16:
    255 * 127 four times gives 65,534 instead of 129,540. There, onnxruntime's dynamic-int8 output is
    not the exact reference the int8-tensor comparison needs (measured on an AVX2-only AMD EPYC).
    """
    if "ort_int8_exact" not in _CACHE:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 4])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])
        b = helper.make_tensor("b", TensorProto.INT8, [4, 1], [127] * 4)
        graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "probe", [a], [y], [b])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = int(sess.run(None, {"a": np.full((1, 4), 255, np.uint8)})[0][0, 0])
        _CACHE["ort_int8_exact"] = got == 255 * 127 * 4
    return bool(_CACHE["ort_int8_exact"])


ORT_INT8_INEXACT = ("onnxruntime's int8 MatMulInteger saturates at int16 on this CPU (AVX2 without VNNI), so its "
                    "int8 output is not an exact reference: not compared")


def ort_outputs(onnx_bytes: bytes, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's float32 output and its dynamic-int8 (per-channel QInt8 weights) output for ``x``."""
    import logging
    import tempfile

    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    want = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"]).run(None, {"features": x})[0]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "m.onnx", Path(tmp) / "m.int8.onnx"
        src.write_bytes(onnx_bytes)
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's "consider pre-processing" note
        try:
            quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8, op_types_to_quantize=["Gemm", "MatMul"])
        finally:
            logging.getLogger().setLevel(level)
        sess = ort.InferenceSession(dst.read_bytes(), opts, providers=["CPUExecutionProvider"])
        want_int8 = sess.run(None, {"features": x})[0]
    return want, want_int8


_CACHE: dict[str, object] = {}


def _cached(key: str, make):
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def prepare(directory: Path, rows: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        onnx_bytes = export(task, trained_model(task))
        x = task_rows(task, rows)
        want, want_int8 = ort_outputs(onnx_bytes, x)
        (directory / f"{task}.onnx").write_bytes(onnx_bytes)
        np.save(directory / f"{task}.rows.npy", x)
        np.save(directory / f"{task}.ort.npy", want)
        np.save(directory / f"{task}.ort-int8.npy", want_int8)
        (directory / "ort-int8-exact").write_text("1" if ort_int8_exact() else "0")
        print(f"riscv-check: {task}: model {len(onnx_bytes)} bytes, {len(x)} rows, onnxruntime references written")


def check(task: str, mode: str, got: np.ndarray, want: np.ndarray, want_int8: np.ndarray,
          int8_reference_exact: bool = True) -> tuple[bool, dict]:
    """Whether ``got`` (the executor's ``mode`` output) passes, and the numbers behind the verdict.

    int8-tensor is compared with onnxruntime's dynamic int8 only where that is exact
    (``int8_reference_exact``, :func:`ort_int8_exact` on the machine that made the reference); elsewhere
    it is reported with ``skipped`` and not judged.
    """
    if got.shape != want.shape or not np.isfinite(got).all():
        return False, {"problem": f"shape {got.shape} (want {want.shape}) or non-finite values"}
    facts = {"error": error(task, got, want), "agreement": agreement(task, got, want)}
    if mode == "int8-tensor":
        facts["vs_ort_int8"] = error(task, got, want_int8)
        if not int8_reference_exact:
            facts["skipped"] = ORT_INT8_INEXACT
            return True, facts
        return facts["vs_ort_int8"] <= INT8_VS_ORT_MAX_ERROR, facts
    facts["limit"] = FLOAT_MAX_ERROR if mode == "float32" else INT8_MAX_ERROR[task]
    differ = round((1 - facts["agreement"]) * len(want))
    decisions_ok = facts["agreement"] >= DECISION_AGREEMENT or differ <= 1  # one row of 200 is already 0.5 %
    return facts["error"] <= facts["limit"] and decisions_ok, facts


def compare(directory: Path) -> bool:
    """Print one line per task and mode; True when every line passes. Columns: max error against
    onnxruntime float32 and its limit, against onnxruntime dynamic int8 and its limit (int8-tensor only),
    share of equal decisions (asserted >= 99.5 % except for int8-tensor, shown in parentheses)."""
    ok = True
    header = (f"{'task':8} {'mode':12} {'rows':>5} {'vs ort f32':>10} {'limit':>6} {'vs ort int8':>11} {'limit':>6} "
              f"{'decisions':>10}  result")
    print(header)
    print("-" * len(header))
    marker = directory / "ort-int8-exact"
    exact = not marker.is_file() or marker.read_text().strip() == "1"
    for task in TASKS:
        want = np.load(directory / f"{task}.ort.npy")
        want_int8 = np.load(directory / f"{task}.ort-int8.npy")
        for mode in MODES:
            path = directory / f"{task}.{mode}.out.npy"
            if not path.is_file():
                print(f"{task:8} {mode:12} {'-':>5}  missing {path.name}  FAIL")
                ok = False
                continue
            got = np.load(path)
            passed, f = check(task, mode, got, want, want_int8, exact)
            ok &= passed
            if "problem" in f:
                print(f"{task:8} {mode:12} {len(got):>5}  {f['problem']}  FAIL")
                continue
            tensor = mode == "int8-tensor"
            f32_limit = f"{'-':>6}" if tensor else f"{f['limit']:6.0e}"
            vs = f"{f['vs_ort_int8']:11.2e} {INT8_VS_ORT_MAX_ERROR:6.0e}" if tensor else f"{'-':>11} {'-':>6}"
            agree = f"({f['agreement']:.2%})" if tensor else f"{f['agreement']:.2%}"
            verdict = "not compared" if "skipped" in f else ("ok" if passed else "FAIL")
            print(f"{task:8} {mode:12} {len(got):>5} {f['error']:10.2e} {f32_limit} {vs} {agree:>10}  {verdict}")
    if not exact:
        print(f"note: {ORT_INT8_INEXACT}")
    return ok


# --- the Debian mirror for the riscv64 root -------------------------------------------------------------------

MIRROR_ENV = "ANYA_FL_DEBIAN_MIRROR"
APT_DIR = Path("/etc/apt")
_SCHEMES = ("http://", "https://", "ftp://", "file:/")  # what debootstrap can fetch from


def apt_sources(apt_dir: Path = APT_DIR) -> list[tuple[str, list[str]]]:
    """``(uri, suites)`` of every enabled binary (``deb``) source in apt's configuration, in apt's reading order.

    Reads ``sources.list`` and then ``sources.list.d/*.list`` (one-line format: ``deb [options] URI suite
    [component...]``) and ``sources.list.d/*.sources`` (deb822 stanzas: ``Types:``, ``URIs:``, ``Suites:``,
    ``Enabled:``) by file name, as apt does. Comments, ``deb-src`` entries, disabled stanzas and files with
    other extensions are skipped; an unreadable file counts as empty.
    """
    d = apt_dir / "sources.list.d"
    files = [apt_dir / "sources.list"]
    if d.is_dir():
        files += sorted((f for f in d.iterdir() if f.suffix in (".list", ".sources") and f.is_file()),
                        key=lambda f: f.name)
    found: list[tuple[str, list[str]]] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        found += _deb822_sources(text) if f.suffix == ".sources" else _one_line_sources(text)
    return found


def _one_line_sources(text: str) -> list[tuple[str, list[str]]]:
    found = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 3 or words[0] != "deb":
            continue
        rest = words[1:]
        if rest[0].startswith("["):  # options: "[arch=amd64 signed-by=...]", possibly split over several words
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if rest:
            found.append((rest[0], rest[1:2]))
    return found


def _deb822_sources(text: str) -> list[tuple[str, list[str]]]:
    stanzas: list[dict[str, str]] = [{}]
    key = None
    for line in text.splitlines():
        if not line.strip():
            stanzas.append({})
            key = None
        elif line.startswith("#"):
            continue
        elif line[0] in " \t" and key is not None:  # continuation of the previous field
            stanzas[-1][key] += " " + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            stanzas[-1][key] = value.strip()
    found = []
    for st in stanzas:
        if "deb" not in st.get("types", "").split() or st.get("enabled", "yes").lower() in ("no", "false", "0"):
            continue
        suites = st.get("suites", "").split()
        found += [(uri, suites) for uri in st.get("uris", "").split()]
    return found


def _is_debian_archive(uri: str, suites: list[str]) -> bool:
    """A Debian archive root (the directory holding ``dists/`` and ``pool/``): its path ends in ``/debian``.

    That leaves out ``debian-security`` and ``debian-ports`` (other archives) and third-party repositories.
    """
    if not uri.startswith(_SCHEMES) or (suites and all(s.endswith("-security") for s in suites)):
        return False
    return uri.rstrip("/").rsplit("/", 1)[-1] == "debian"


def debian_mirror(environ: Mapping[str, str] | None = None, apt_dir: Path = APT_DIR) -> str | None:
    """``$ANYA_FL_DEBIAN_MIRROR`` if set, else the first Debian archive in apt's sources; None when neither."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(MIRROR_ENV, "").strip()
    if chosen:
        return chosen
    return next((uri for uri, suites in apt_sources(apt_dir) if _is_debian_archive(uri, suites)), None)


def no_mirror_message(apt_dir: Path = APT_DIR) -> str:
    return (f"no Debian mirror to build the riscv64 root from: {MIRROR_ENV} is not set and apt's sources "
            f"({apt_dir / 'sources.list'}, {apt_dir / 'sources.list.d'}/*.list and *.sources) name no Debian archive "
            f"(a deb URI ending in /debian); set {MIRROR_ENV} to a Debian mirror's archive URL "
            f"(the directory holding dists/ and pool/), or add that mirror to apt's sources")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="riscv_check.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("dir", type=Path)
    p.add_argument("--rows", type=int, default=200)
    c = sub.add_parser("compare")
    c.add_argument("dir", type=Path)
    m = sub.add_parser("mirror")
    m.add_argument("--apt-dir", type=Path, default=APT_DIR)
    args = parser.parse_args(argv)
    if args.cmd == "mirror":
        url = debian_mirror(apt_dir=args.apt_dir)
        if url is None:
            print(no_mirror_message(args.apt_dir), file=sys.stderr)
            return 2
        print(url)
        return 0
    if args.cmd == "prepare":
        start = time.perf_counter()
        prepare(args.dir, args.rows)
        print(f"riscv-check: host preparation took {time.perf_counter() - start:.1f} s")
        return 0
    return 0 if compare(args.dir) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
