"""onnxruntime on a `savedeep convert` ONNX file against the torch engine, forward only, side by side.

For each benchmark case (benchmarks/common.py's CASES), the same preprocessed batch goes through
the torch engine (its defaults: channels_last on the CPU) and through onnxruntime's CPU provider on
the converted model, both with the same number of threads; the two alternate, batch after batch,
so that the shared machine's drift hits both alike. Prints images/s (median over the timed
batches) and the largest relative difference between the two, and writes out/onnx.json.

    .venv/bin/python benchmarks/bench_onnx.py [--threads 2] [--reps 5]

About 40 s on 2 cores. It decides whether an `--engine onnxruntime` would pay (issue #24): only if
onnxruntime is faster for every case.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from common import CASES, MODELS, OUT, machine, machine_line, print_table, wait_for_quiet, write_json

BATCH = {"caffenet": 32, "nsfw": 16}


def bench_case(case: str, threads: int, reps: int) -> dict:
    import onnxruntime as ort
    import torch

    from savedeep.engines.conversion import convert
    from savedeep.engines.torch_engine import TorchEngine
    from savedeep.caffe.model import load_model

    model_name, blobs = CASES[case]
    directory = MODELS[model_name]()
    model = load_model(directory)
    n = BATCH[model_name]
    path = convert(directory, "onnx", OUT / "onnx" / f"{case}.onnx", blobs, overwrite=True)
    torch.set_num_threads(threads)
    engine = TorchEngine(model.net, "cpu", n, threads=threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(0, 50, size=(n, *model.net.input_shape[1:])).astype(np.float32)
    feed = {session.get_inputs()[0].name: x}

    def run_torch() -> list[np.ndarray]:
        out = engine.forward(x, blobs)
        return [out[b] for b in blobs]

    def run_ort() -> list[np.ndarray]:
        return session.run(blobs, feed)

    times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    for rep in range(reps + 1):  # the first round warms both up and is not counted
        for name, fn in (("torch", run_torch), ("onnxruntime", run_ort)):
            t0 = time.perf_counter()
            fn()
            if rep:
                times[name].append(time.perf_counter() - t0)
    err = max(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)) for a, b in zip(run_torch(), run_ort()))
    engine.close()
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    return {
        "case": case,
        "batch": n,
        "threads": threads,
        "torch_img_s": round(rate["torch"], 1),
        "onnxruntime_img_s": round(rate["onnxruntime"], 1),
        "ort_over_torch": round(rate["onnxruntime"] / rate["torch"], 3),
        "max_rel_diff": f"{err:.1e}",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--cases", default=",".join(CASES))
    args = p.parse_args()
    wait_for_quiet()
    m = machine()
    rows = [bench_case(c, args.threads, args.reps) for c in args.cases.split(",")]
    print(machine_line(m))
    print_table(rows, title="forward only, side by side: torch engine vs onnxruntime on the converted model")
    write_json(OUT / "onnx.json", {"machine": m, "rows": rows})


if __name__ == "__main__":
    main()
