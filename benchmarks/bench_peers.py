"""The converted module against savedeep's own engine, and thingsvision against `savedeep run`.

1. Forward only, side by side (same process, same threads, same batch, alternating batch after
   batch so that the shared machine's drift hits all alike): the torch engine (as a consumer calls
   it: blobs copied into ``out=`` buffers), the module of ``savedeep convert --to torch -o NAME.py``
   (its forward under ``torch.inference_mode``, the blobs copied into the same buffers), and, for
   reference, the torch.export program (``-o NAME.pt2``) fed an NCHW and a channels_last batch.
   Prints images/s (median of the timed batches), each against the engine, and the largest
   difference to the engine's blobs.
2. End to end on the same images, alternating ``--rounds`` times: thingsvision's documented
   extraction (``get_extractor_from_model`` on the converted module, its ``ImageDataset`` with
   ``transforms=savedeep.transform(...)``, its ``DataLoader``, ``extract_features`` on each blob's
   module), in the peers' venv (scripts/peer_env.sh), timed from outside (the whole command, so
   the imports count, as they count in `savedeep run`) and inside (the extraction alone); and the
   `savedeep run` command with savedeep's defaults. Prints both wall times and the agreement of the
   features with savedeep's rows.

    .venv/bin/python benchmarks/bench_peers.py [--images 1000] [--rounds 3] [--threads 2] [--reps 10]

CaffeNet (random weights, seed 1) fc6+fc7 on the benchmark JPEGs (500x375). About 6 minutes on
2 cores with 1,000 images and 3 rounds (the first call of scripts/peer_env.sh builds the peers'
venv: a few more minutes, once). ``--quick``: 32 images, 1 round, 3 reps.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import (
    OUT,
    PYTHON,
    ROOT,
    caffenet_dir,
    image_paths,
    machine,
    machine_line,
    print_table,
    wait_for_quiet,
    write_json,
)

BLOBS = ["fc6", "fc7"]
BATCH = 32

# thingsvision's documented extraction of a custom model (its README), with savedeep's transform
THINGSVISION = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np, savedeep
from thingsvision import get_extractor_from_model
from thingsvision.utils.data import DataLoader, ImageDataset
sys.path.insert(0, sys.argv[1])
module = __import__(sys.argv[2])
t1 = time.perf_counter()
extractor = get_extractor_from_model(model=module.load(), device="cpu", backend="pt")
dataset = ImageDataset(root=sys.argv[3], out_path=sys.argv[4], backend="pt",
                       transforms=savedeep.transform(f"{sys.argv[1]}/{sys.argv[2]}.py"))
batches = DataLoader(dataset=dataset, batch_size=int(sys.argv[5]), backend="pt")
features = extractor.extract_features(batches=batches, module_names=sys.argv[6].split(","), flatten_acts=True)
t2 = time.perf_counter()
np.savez(f"{sys.argv[4]}/features.npz", **features)
import torch
print(json.dumps({"imports_s": t1 - t0, "extract_s": t2 - t1, "torch": torch.__version__,
                  "threads": torch.get_num_threads()}))
"""


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def forward_side_by_side(directory: Path, threads: int, reps: int) -> list[dict]:
    """Images/s of the engine, the module and the .pt2 program on one batch, alternating."""
    import torch

    from savedeep.engines.conversion import convert
    from savedeep.engines.torch_engine import TorchEngine
    from savedeep.caffe.model import load_model

    torch.set_num_threads(threads)
    net = load_model(directory).net
    d = OUT / "peers"
    py = convert(directory, "torch", d / "caffenet_fc.py", BLOBS, overwrite=True)
    pt2 = convert(directory, "torch", d / "caffenet_fc.pt2", BLOBS, overwrite=True)
    module = load_module(py).load()
    program = torch.export.load(str(pt2)).module()
    engine = TorchEngine(net, "cpu", BATCH, threads=threads)
    x = np.random.default_rng(0).normal(0, 50, size=(BATCH, *net.input_shape[1:])).astype(np.float32)
    out = {b: np.empty((BATCH, *net.blob_shapes(1)[b][1:]), np.float32) for b in BLOBS}
    copies = {b: np.empty_like(v) for b, v in out.items()}

    def run_engine() -> dict:
        return engine.forward(x, BLOBS, out)

    def run_torch(fn, layout=None) -> dict:
        with torch.inference_mode():
            t = torch.from_numpy(x)
            if layout is not None:
                t = t.contiguous(memory_format=layout)
            values = fn(t)
            for b in BLOBS:
                torch.from_numpy(copies[b]).copy_(values[b])
        return copies

    runs = {
        "torch engine": run_engine,
        "module (.py)": lambda: run_torch(module),
        "program (.pt2), NCHW input": lambda: run_torch(program),
        "program (.pt2), channels_last input": lambda: run_torch(program, torch.channels_last),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(reps + 1):  # the first round warms every path up and is not counted
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            if rep:
                times[name].append(time.perf_counter() - t0)
    reference = {b: v.copy() for b, v in run_engine().items()}
    rows = []
    base = BATCH / statistics.median(times["torch engine"])
    for name, fn in runs.items():
        got = fn()
        diff = max(float(np.abs(got[b] - reference[b]).max() / np.abs(reference[b]).max()) for b in BLOBS)
        rate = BATCH / statistics.median(times[name])
        rows.append(
            {
                "forward": name,
                "batch": BATCH,
                "threads": threads,
                "img_s": round(rate, 1),
                "ms_per_img": round(1000 / rate, 2),
                "vs_engine": round(rate / base, 3),
                "spread_ms_per_img": f"{1000 * min(times[name]) / BATCH:.2f}-{1000 * max(times[name]) / BATCH:.2f}",
                "max_rel_diff": f"{diff:.1e}",
            }
        )
    engine.close()
    return rows


def peers_python() -> str:
    r = subprocess.run(["bash", str(ROOT / "scripts" / "peer_env.sh")], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"scripts/peer_env.sh failed:\n{r.stderr[-3000:]}")
    return r.stdout.strip().splitlines()[-1]


def end_to_end(directory: Path, n: int, rounds: int) -> tuple[list[dict], dict]:
    """thingsvision's extraction and `savedeep run`, alternating, on the same n images."""
    from savedeep.engines.conversion import convert

    python = peers_python()
    d = OUT / "peers"
    convert(directory, "torch", d / "caffenet.py", overwrite=True)  # the whole net: every layer's module
    paths = image_paths(n)
    folder = d / f"images_{n}"  # thingsvision's ImageDataset reads a folder: the same files, linked
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        if not (folder / p.name).exists():
            (folder / p.name).symlink_to(p)
    lst = paths[0].parent.parent / f"list_{n}.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    rows, agreement = [], {}
    for r in range(rounds):
        for tool in ("thingsvision", "savedeep run"):
            out = d / f"run_{tool.split()[0]}"
            t0 = time.perf_counter()
            if tool == "thingsvision":
                proc = subprocess.run(
                    [
                        python,
                        "-c",
                        THINGSVISION,
                        str(d),
                        "caffenet",
                        str(folder),
                        str(out),
                        str(BATCH),
                        ",".join(BLOBS),
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                )
            else:
                proc = subprocess.run(
                    [
                        str(Path(PYTHON).parent / "savedeep"),
                        "run",
                        "--model",
                        str(directory),
                        "--images",
                        str(lst),
                        "-o",
                        str(out / "acts.pk"),
                        "--blobs",
                        ",".join(BLOBS),
                        "--overwrite",
                        "--no-progress",
                        "-q",
                    ],
                    capture_output=True,
                    text=True,
                )
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"{tool} failed:\n{proc.stderr[-3000:]}")
            row = {"round": r + 1, "tool": tool, "images": n, "wall_s": round(wall, 2), "img_s": round(n / wall, 1)}
            if tool == "thingsvision":
                inside = json.loads(proc.stdout.strip().splitlines()[-1])
                row.update(
                    extract_s=round(inside["extract_s"], 2),
                    imports_s=round(inside["imports_s"], 2),
                    torch=inside["torch"],
                    threads=inside["threads"],
                )
            rows.append(row)
    import savedeep

    df = savedeep.load(d / "run_savedeep" / "acts.pk").set_index("image")
    order = (d / "run_thingsvision" / "file_names.txt").read_text().split()
    with np.load(d / "run_thingsvision" / "features.npz") as z:
        for b in BLOBS:
            ours = np.stack([df.loc[f"all/{name}", b] for name in order])
            theirs = z[b].reshape(ours.shape)
            agreement[b] = {
                "max_abs_diff": float(np.abs(theirs - ours).max()),
                "max_rel_diff": float(np.abs(theirs - ours).max() / np.abs(ours).max()),
            }
    return rows, agreement


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="32 images, 1 round, 3 reps: checks the script")
    p.add_argument("--skip-end-to-end", action="store_true", help="the forward comparison only")
    args = p.parse_args()
    if args.quick:
        args.images, args.rounds, args.reps = 32, 1, 3
    wait_for_quiet()
    m = machine()
    directory = caffenet_dir()
    forward = forward_side_by_side(directory, args.threads, args.reps)
    print(machine_line(m))
    print_table(forward, title=f"forward only, CaffeNet {'+'.join(BLOBS)}, side by side (alternating batches)")
    result = {"machine": m, "forward": forward}
    if not args.skip_end_to_end:
        rows, agreement = end_to_end(directory, args.images, args.rounds)
        print_table(rows, title=f"end to end, {args.images} images, CaffeNet {'+'.join(BLOBS)}, alternating")
        for tool in ("thingsvision", "savedeep run"):
            walls = [r["wall_s"] for r in rows if r["tool"] == tool]
            print(f"{tool}: median wall {statistics.median(walls):.2f} s over {len(walls)} runs")
        tv = statistics.median(r["wall_s"] for r in rows if r["tool"] == "thingsvision")
        sd = statistics.median(r["wall_s"] for r in rows if r["tool"] == "savedeep run")
        print(f"savedeep run is {tv / sd:.2f}x as fast as thingsvision (median walls)")
        print(
            "agreement (thingsvision's features against savedeep's rows):",
            json.dumps({b: {k: f"{v:.1e}" for k, v in a.items()} for b, a in agreement.items()}),
        )
        result.update(end_to_end=rows, agreement=agreement, speedup=round(tv / sd, 3))
    write_json(OUT / "peers.json", result)


if __name__ == "__main__":
    sys.exit(main())
