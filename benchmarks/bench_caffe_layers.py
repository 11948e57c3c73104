"""What the preflight's look at pycaffe's layer registry costs (NOTE [caffe engine refusals] in
savedeep/engines/caffe_layers.py).

Interleaved ``--rounds`` times, medians printed:

- ``probe (extension only)``: :func:`savedeep.engines.caffe_layers.probe_registry`, the subprocess
  the preflight runs when its cache has no answer: it loads only pycaffe's ``_caffe`` extension;
- ``probe (import caffe)``: the same question through the whole package (``import caffe``, whose
  ``__init__`` imports scikit-image and protobuf), what the probe avoids;
- ``cache hit``: :func:`~savedeep.engines.caffe_layers.layer_registry` answered from its cache
  file (read it, stat the libraries it names);
- ``validate caffe, cold`` / ``warm`` / ``validate torch``: ``savedeep validate`` on CaffeNet fc7
  (tests/data's three photos, ``--gpus cpu``) timed from outside, with an empty cache
  (``XDG_CACHE_HOME`` a fresh folder: the probe runs), with the cache
  filled, and with the torch engine (no probe at all).

Writes benchmarks/out/caffe_layers.json.

Usage: python benchmarks/bench_caffe_layers.py [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import OUT, PYTHON, ROOT, TESTDATA  # noqa: E402

from savedeep.engines.caffe_layers import layer_registry, probe_registry, pycaffe_dir  # noqa: E402

WHOLE_PACKAGE = "import os; os.environ['GLOG_minloglevel'] = '2'; import caffe; print(len(caffe.layer_type_list()))"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _validate(model: Path, out: Path, engine: str, cache: str) -> None:
    cmd = [PYTHON, "-m", "savedeep", "validate", "-m", str(model), "-b", "fc7", "-i", str(TESTDATA / "images")]
    cmd += ["-o", str(out), "--gpus", "cpu", "--engine", engine]
    env = {**os.environ, "XDG_CACHE_HOME": cache, "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=300)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one round: a smoke test of the script")
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds
    m = common.machine()
    print(common.machine_line(m), flush=True)
    pkg = pycaffe_dir()
    if pkg is None:
        raise SystemExit("pycaffe is not importable here: bash scripts/setup.sh builds it")
    model = common.caffenet_dir()
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm"
        cache = warm / "savedeep" / "caffe-layers.json"
        layer_registry(pkg, cache)  # fills the warm cache
        out = Path(tmp) / "out" / "acts.pk"
        for r in range(rounds):
            cold = Path(tmp) / f"cold{r}"
            cases = {
                "probe (extension only)": lambda: probe_registry(pkg),
                "probe (import caffe)": lambda: subprocess.run(
                    [PYTHON, "-c", WHOLE_PACKAGE], check=True, capture_output=True, timeout=300
                ),
                "cache hit": lambda: layer_registry(pkg, cache),
                "validate caffe, cold": lambda cold=cold: _validate(model, out, "caffe", str(cold)),
                "validate caffe, warm": lambda: _validate(model, out, "caffe", str(warm)),
                "validate torch": lambda: _validate(model, out, "torch", str(warm)),
            }
            for name, fn in cases.items():
                times.setdefault(name, []).append(_timed(fn))
    rows = [
        {"case": k, "median_ms": statistics.median(v) * 1e3, "min_ms": min(v) * 1e3, "rounds": len(v)}
        for k, v in times.items()
    ]
    common.print_table(rows, title=f"pycaffe in {pkg}; {rounds} round(s)")
    common.write_json(OUT / "caffe_layers.json", {"machine": m, "pycaffe": str(pkg), "rows": rows, "times_s": times})


if __name__ == "__main__":
    main()
