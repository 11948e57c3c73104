"""The headline: the naive pycaffe loop against savedeep, same images, same blobs, same machine, one run.

**The naive way** (written here, as a pycaffe user writes it): one process, batch 1, pycaffe;
each image loaded the caffe.io way (``skimage.io.imread`` -> float in [0, 1] ->
``skimage.transform.resize`` as old ``caffe.io.resize_image`` did it: min-max normalise,
``resize(order=1, mode='constant')``, back) and preprocessed like ``caffe.io.Transformer``
(transpose (2,0,1), channel swap (2,1,0), raw scale 255, per-channel mean); forward; the blobs
copied into a list of rows; a pandas DataFrame pickled at the end. (The fork's
``caffe.io.resize_image`` lacks its ``from skimage.transform import resize``, so the loop calls
scikit-image directly.) OpenBLAS keeps its default threads (all cores), as a user would.

**savedeep**: ``python -m savedeep run`` with its defaults (torch engine, batch 32, producers
auto, pickle on) and the same run with ``--engine caffe``.

**The stage bound, side by side.** Right after the savedeep (torch) run, this script measures
the three stages alone on the same machine with ``bench_stages.bound_now`` (the forward of
CaffeNet fc6+fc7 with the torch engine at batch 32 and the threads of one consumer of the
configuration ``cpu_consumers: auto`` picks, best of 5 windows over ``--bound-seconds``, times its
number of consumers; decoding + preprocessing on one core; writing fc6+fc7 with
``ShardWriter``) and computes bench_stages.py's bound from them, so that the fraction of the bound does not compare runs made
at different times on a shared machine. The bound from ``out/stages.json`` is reported too.

Each of the three runs as its own command, timed from outside: the wall time includes the
interpreter, the imports, building the net and writing the pickle ("start-up included").
They run one after the other in this script, on the same 1,000 images (``--images``). With
``--naive-images K`` (K < N) the naive loop runs on the first K images only and its time is
extrapolated to N per image (start-up counted once); the table says so.

Writes benchmarks/out/naive.json and naive.png.

Usage: python benchmarks/bench_naive.py [--images 1000] [--naive-images K] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import OUT, PYTHON, ROOT  # noqa: E402

BLOBS = ["fc6", "fc7"]


def naive_worker(model: Path, image_list: Path, output: Path, limit: int) -> None:
    """The naive loop; prints one JSON line with its phase times."""
    t_start = time.perf_counter()
    import numpy as np
    import pandas as pd
    import skimage
    import skimage.io
    from skimage.transform import resize

    import caffe

    t_imports = time.perf_counter()
    caffe.set_mode_cpu()
    net = caffe.Net(str(model / "deploy.prototxt"), caffe.TEST, weights=str(model / "weights.caffemodel"))
    net.blobs["data"].reshape(1, 3, 227, 227)
    net.reshape()
    mean = np.load(model / "mean.npy").mean(1).mean(1)  # per-channel mean, as most pycaffe scripts do
    h, w = net.blobs["data"].data.shape[2:]
    t_net = time.perf_counter()
    rows = []
    base = image_list.parent
    keys = [line.strip() for line in image_list.read_text().splitlines() if line.strip()][:limit]
    for key in keys:
        # caffe.io.load_image
        img = skimage.img_as_float(skimage.io.imread(base / key)).astype(np.float32)
        if img.ndim == 2:
            img = np.tile(img[:, :, np.newaxis], (1, 1, 3))
        elif img.shape[2] == 4:
            img = img[:, :, :3]
        # caffe.io.resize_image (upstream), with the import the fork lacks
        im_min, im_max = img.min(), img.max()
        if im_max > im_min:
            im_std = (img - im_min) / (im_max - im_min)
            img = resize(im_std, (h, w), order=1, mode="constant") * (im_max - im_min) + im_min
        else:
            img = np.full((h, w, img.shape[-1]), im_min, dtype=np.float32)
        # caffe.io.Transformer.preprocess: transpose, channel swap, raw scale, mean
        x = img.astype(np.float32).transpose(2, 0, 1)[[2, 1, 0]] * 255.0
        x -= mean[:, np.newaxis, np.newaxis]
        net.blobs["data"].data[...] = x
        net.forward()
        rows.append({"image": key, **{b: net.blobs[b].data[0].copy() for b in BLOBS}})
    t_loop = time.perf_counter()
    df = pd.DataFrame(rows)
    df.to_pickle(output)
    t_end = time.perf_counter()
    print(
        json.dumps(
            {
                "images": len(rows),
                "imports_s": round(t_imports - t_start, 3),
                "net_s": round(t_net - t_imports, 3),
                "loop_s": round(t_loop - t_net, 3),
                "pickle_s": round(t_end - t_loop, 3),
                "total_in_process_s": round(t_end - t_start, 3),
                "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
            }
        )
    )


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    full_env = dict(os.environ, GLOG_minloglevel="2", **(env or {}))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return wall, proc


def run_savedeep_cli(model: Path, images: Path, out_dir: Path, engine: str) -> dict:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    cmd = [
        PYTHON,
        "-m",
        "savedeep",
        "run",
        "-m",
        str(model),
        "-b",
        ",".join(BLOBS),
        "-i",
        str(images),
        "-o",
        str(out_dir / "acts.pk"),
        "--gpus",
        "cpu",
        "--engine",
        engine,
        "--no-progress",
    ]
    wall, proc = timed(cmd)
    busy = {}
    m = re.search(r"busy: (.*?) \(", proc.stderr)
    if m:
        for part in m.group(1).split(", "):
            role, frac = part.rsplit(" ", 1)
            busy[role] = float(frac.rstrip("%")) / 100
    import pandas as pd

    df = pd.read_pickle(out_dir / "acts.pk")
    # The summary's steady rate: from the parent's timestamps of batches written, the first
    # window of batches left out (RunResult.steady_images_per_s).
    m = re.search(r"steady ([\d.]+) images/s after the first \d+ batches", proc.stderr)
    steady = float(m.group(1)) if m else None
    return {
        "command": " ".join(cmd[1:]),
        "wall_s": round(wall, 2),
        "rows": len(df),
        "images_per_s": round(len(df) / wall, 2),
        "steady_images_per_s": round(steady, 2) if steady else None,
        "busy": busy,
        "columns": list(df.columns),
        "pickle_bytes": (out_dir / "acts.pk").stat().st_size,
    }


def check_values(model: Path, naive, work: Path, n: int) -> dict:
    """Max relative error of savedeep's rows against the naive loop's, blob by blob, on the first n images.

    The headline runs use savedeep's default preprocessing (OpenCV warp), which differs from the
    naive loop's caffe.io resize in the pixels, so this check runs savedeep once more on the first
    n images with ``preprocess.resize: caffe-io`` (the same arithmetic as caffe.io), with each
    engine, and compares values: the rows must be the same activations, not only the same keys
    and shapes. Errors are max |a - b| / max |b| per blob (b: the naive loop's).
    """
    import numpy as np

    import savedeep

    listing = common.make_images(n)
    out = {}
    for engine in ("caffe", "torch"):
        cfg = common.savedeep_config(
            model, listing, work / engine / "acts.pk", BLOBS, engine=engine, preprocess={"resize": "caffe-io"}
        )
        savedeep.run(cfg, overwrite=True)
        got = savedeep.load(work / engine / "acts.pk")
        want = naive.iloc[:n]
        if list(got["image"]) != list(want["image"]):
            raise RuntimeError(f"savedeep ({engine}) and the naive loop list different images")
        out[engine] = {
            b: float(f"{np.abs(np.stack(got[b]) - np.stack(want[b])).max() / np.abs(np.stack(want[b])).max():.2e}")
            for b in BLOBS
        }
    out["images"] = n
    return out


def measure_bound(seconds: float) -> dict:
    """The stage bound of the headline configuration, from stages measured now (see the docstring)."""
    from bench_consumers import auto_plan
    from bench_stages import bound_now, stage_bound

    # The configuration the default (cpu_consumers: auto) picks here: N consumers of T threads;
    # each image still costs T/F core-seconds, and the forward's own cap is N x F.
    plan = auto_plan("caffenet-fc", "float32", 1000)
    bound = bound_now("caffenet-fc", "torch", 32, plan.producers, threads=plan.threads, seconds=seconds)
    from savedeep.runner.devices import usable_cpus

    bound.update(
        stage_bound(
            usable_cpus(),
            plan.threads,
            plan.producers,
            plan.consumers * bound["forward_images_per_s"],
            bound["decode_images_per_s_per_core"],
            bound["write_images_per_s"],
        )
    )
    bound["consumers"] = plan.consumers
    print(
        f"  default plan: {plan.consumers} consumer(s) x {plan.threads} thread(s), {plan.producers} producer(s)",
        flush=True,
    )
    print(
        f"  stages now: forward {bound['forward_images_per_s']} images/s (median "
        f"{bound['forward_median_images_per_s']}), decode {bound['decode_images_per_s_per_core']} images/s per "
        f"core, write {bound['write_images_per_s']} images/s -> bound {bound['bound']} ({bound['limiting']})",
        flush=True,
    )
    return bound


def bound_fraction(r: dict) -> dict | None:
    """The headline savedeep run (torch) as a fraction of the stage bound from stages.json."""
    from bench_stages import bound_for, load_stages

    stages = load_stages()
    bound = bound_for(stages, "caffenet-fc", "torch", 32, 1) if stages else None  # producers auto = 1 on 2 cores
    if not bound:
        return None
    frac = {
        "bound": bound,
        "steady_of_bound": round(r["steady_images_per_s"] / bound["bound"], 3),
        "wall_of_bound": round(r["images_per_s"] / bound["bound"], 3),
        "bounds_from": stages["machine"]["date_utc"],
    }
    print(
        f"\nstage bound (torch, batch 32, 1 producer): {bound['bound']} images/s ({bound['limiting']}); "
        f"savedeep steady {r['steady_images_per_s']} = {frac['steady_of_bound']:.0%} of it, "
        f"over the whole wall time {frac['wall_of_bound']:.0%}"
    )
    return frac


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--naive-images", type=int, default=None, help="run the naive loop on fewer and extrapolate")
    p.add_argument("--quick", action="store_true", help="40 images, for a smoke test")
    p.add_argument(
        "--rebound",
        action="store_true",
        help="only recompute the stage-bound fraction of the last naive.json from the current stages.json",
    )
    p.add_argument(
        "--bound-seconds",
        type=float,
        default=10.0,
        help="seconds of forward-only timing for the side-by-side stage bound",
    )
    p.add_argument("--naive-worker", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.naive_worker:
        model, lst, out, limit = args.naive_worker
        naive_worker(Path(model), Path(lst), Path(out), int(limit))
        return
    if args.rebound:
        data = json.loads((OUT / "naive.json").read_text())
        data["bound"] = bound_fraction(data["results"]["savedeep (torch)"])
        common.write_json(OUT / "naive.json", data)
        return
    if args.quick:
        args.images = 40
    m = common.machine()
    print(common.machine_line(m), flush=True)
    model = common.caffenet_dir()
    images = common.make_images(args.images)
    k = min(args.naive_images or args.images, args.images)
    work = OUT / "naive_run"
    work.mkdir(parents=True, exist_ok=True)

    print(f"naive loop on {k} images ...", flush=True)
    wall, proc = timed([PYTHON, __file__, "--naive-worker", str(model), str(images), str(work / "naive.pk"), str(k)])
    naive = json.loads(proc.stdout.strip().splitlines()[-1])
    naive["wall_s"] = round(wall, 2)
    startup = wall - naive["loop_s"]
    naive["per_image_ms"] = round(1000 * naive["loop_s"] / k, 2)
    naive["wall_s_for_all"] = round(wall if k == args.images else startup + naive["loop_s"] * args.images / k, 2)
    naive["extrapolated"] = k != args.images
    print(f"  {naive}", flush=True)

    results = {"naive (pycaffe, batch 1)": naive}
    for engine in ("torch", "caffe"):
        print(f"savedeep --engine {engine} on {args.images} images ...", flush=True)
        r = run_savedeep_cli(model, images, work / f"savedeep_{engine}", engine)
        print(f"  {r}", flush=True)
        results[f"savedeep ({engine})"] = r
        if engine == "torch":
            print("stages alone, now (for the bound) ...", flush=True)
            now = measure_bound(2.0 if args.quick else args.bound_seconds)

    import pandas as pd

    dn = pd.read_pickle(work / "naive.pk")
    ds = pd.read_pickle(work / "savedeep_torch" / "acts.pk")
    df_naive_cols = {
        "naive_rows": len(dn),
        "naive_columns": list(dn.columns),
        "same_first_keys": list(dn["image"][:k]) == list(ds["image"][:k]),
        "fc7_shape": [list(dn["fc7"][0].shape), list(ds["fc7"][0].shape)],
    }
    print(
        "values: savedeep with the naive loop's preprocessing (resize: caffe-io) against the naive rows ...", flush=True
    )
    df_naive_cols["values"] = check_values(model, dn, work / "values", min(k, 64))
    print(f"  {df_naive_cols['values']}", flush=True)

    table = []
    naive_wall = naive["wall_s_for_all"]
    for name, r in results.items():
        wall_all = r.get("wall_s_for_all", r["wall_s"])
        table.append(
            {
                "method": name,
                "images": args.images,
                "wall_s": wall_all,
                "images_per_s": round(args.images / wall_all, 1),
                "steady_images_per_s": (
                    round(1000 / r["per_image_ms"], 1) if "per_image_ms" in r else r.get("steady_images_per_s")
                ),
                "speedup_vs_naive": round(naive_wall / wall_all, 2),
                "note": "extrapolated from %d images" % k if r.get("extrapolated") else "",
            }
        )
    print()
    common.print_table(
        table,
        title=f"CaffeNet fc6+fc7 (random weights), {args.images} images of 500x375, "
        "wall time of the whole command (start-up and pickle included)",
    )
    st = results["savedeep (torch)"]
    if st["steady_images_per_s"] is None:
        print("too few batches for a steady rate (it leaves out the first window of batches): no bound fraction")
        frac, side = None, None
    else:
        frac = bound_fraction(st)
        side = {
            "bound": now,
            "steady_of_bound": round(st["steady_images_per_s"] / now["bound"], 3),
            "wall_of_bound": round(st["images_per_s"] / now["bound"], 3),
        }
        print(
            f"stage bound measured in this run: {now['bound']} images/s ({now['limiting']}); savedeep steady "
            f"{st['steady_images_per_s']} = {side['steady_of_bound']:.0%} of it, over the whole wall time "
            f"{side['wall_of_bound']:.0%}; steady / forward alone = "
            f"{st['steady_images_per_s'] / now['forward_images_per_s']:.0%}"
        )
    like = {
        "torch": round(naive["wall_s_for_all"] / results["savedeep (torch)"]["wall_s"], 2),
        "caffe": round(naive["wall_s_for_all"] / results["savedeep (caffe)"]["wall_s"], 2),
    }
    print(
        f"speed-up over the naive pycaffe loop, start-up included: like for like (--engine caffe, pycaffe "
        f"in both) {like['caffe']}x; torch engine {like['torch']}x"
    )
    common.write_json(
        OUT / "naive.json",
        {
            "machine": m,
            "images": args.images,
            "naive_images": k,
            "results": results,
            "table": table,
            "check": df_naive_cols,
            "bound": frac,
            "bound_side_by_side": side,
            "speedup": like,
        },
    )
    plt = common.plt()
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh([t["method"] for t in table], [t["wall_s"] for t in table], color=["C3", "C0", "C2"])
    for i, t in enumerate(table):
        ax.text(t["wall_s"], i, f" {t['wall_s']:.0f} s ({t['speedup_vs_naive']}x)", va="center")
    ax.set_xlabel(f"wall seconds for {args.images} images (CaffeNet fc6+fc7)")
    ax.set_xlim(0, max(t["wall_s"] for t in table) * 1.3)
    common.save_fig(fig, OUT / "naive.png")


if __name__ == "__main__":
    main()
