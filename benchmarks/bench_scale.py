"""A run at scale (issue 30): 100,000 small images through a tiny net, the end steps at 10k and 100k, a merge of
64 tasks over 1,000+ shards, and the loaders on the 100k output, with their peak memory.

The net is the tiny one of tests/test_runner_load.py (conv 8x3x3 stride 2, ReLU, max pool, fc 10 on a 32x32 input)
with seeded random weights (``savedeep.caffe.synthetic.random_weights(seed=0)``), so the pipeline's own costs show,
not a forward pass. The images are 40x40 JPEG crops of the real photos (tests/data's and scikit-image's),
seeded, in 100 folders. Blobs ``pool1`` (8x7x7) and ``fc`` (10), float32: 1.57 KiB per image. Everything
else is savedeep's default (batch 32, shards of 1,024, ``cpu_consumers: auto``, the pickle written).

Each measured step is a fresh interpreter (this script with ``--child``), so that one step's memory does
not count in the next:

- **run** at 10,000 and at 100,000 images: wall, steady rate (``RunResult.steady_images_per_s``), the
  parent's peak RSS and the largest worker's (psutil, every 50 ms), and the time of each end step inside
  ``Manifest.finish``: the failures table, the manifest marked complete, the pickle (reading the shards
  back and pickling); also the recording of the shards (``Manifest.record_shard``: a journal line each,
  and the manifest's whole rewrites it triggers, counted apart). The ratio 100k / 10k of each: 10 is in
  proportion to the images; more is a step that grows faster. ``--runs-only`` measures these runs alone;
- **merge**: the same images as 64 tasks (``savedeep.run(task=...)`` one after another in one process,
  shards of 96: 1,042 shards at 100k, 105 at 10k), then ``savedeep.merge`` in a fresh process, timed
  the same way (the check of every shard, the manifest, the failures table, the pickle). Each task's wall
  gives the cost of a task's start-up: (sum of the 64 task walls - the one run's wall) / 63;
- **loading** the 100k output: ``savedeep.load`` (the pickle), ``load_array(out, "pool1")`` (the Parquet
  shards) and ``load_xarray(out, lazy=True)`` (opened, then one mean over the blob computed shard by
  shard), each in a fresh process: wall and peak RSS (the kernel's VmHWM) above the RSS after the imports.

Writes benchmarks/out/scale.json. About 10 minutes on 2 cores (most of it the 128 task runs).

Usage: python benchmarks/bench_scale.py [--images 100000] [--small 10000] [--tasks 64] [--quick] [--runs-only]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import OUT  # noqa: E402

SCALE = OUT / "scale"
TINY = """name: "tiny"
input: "data"
input_shape { dim: 1 dim: 3 dim: 32 dim: 32 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 10 } }
"""
BLOBS = ["pool1", "fc"]
TASK_SHARD = 96


# --------------------------------------------------------------------------- inputs


def tiny_model() -> Path:
    import numpy as np

    from savedeep.caffe.model import load_net
    from savedeep.caffe.synthetic import random_weights, write_caffemodel

    d = OUT / "models" / "tiny"
    if (d / "weights.caffemodel").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    (d / "deploy.prototxt").write_text(TINY)
    np.save(d / "mean.npy", np.array([104, 117, 123], np.float32))
    net = load_net(d / "deploy.prototxt")
    write_caffemodel(d / "weights.caffemodel", net, random_weights(net, seed=0))
    return d


def image_list(n: int) -> Path:
    """A list file of the first ``n`` 40x40 crops (made once, seeded: image i is the same whatever n)."""
    import cv2
    import numpy as np

    d = SCALE / "imgs"
    names = [f"d{i % 100:02d}/img_{i:06d}.jpg" for i in range(n)]
    marker = SCALE / f".made_{n}"
    if not marker.exists():
        sources = [s for s in (cv2.imread(str(p)) for p in common.source_photos()) if s is not None]
        rng = np.random.default_rng(2026)
        params = rng.random((n, 3))
        for i, name in enumerate(names):
            path = d / name
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            s = sources[int(params[i, 0] * len(sources))]
            y, x = int(params[i, 1] * (s.shape[0] - 40)), int(params[i, 2] * (s.shape[1] - 40))
            cv2.imwrite(str(path), s[y : y + 40, x : x + 40], [cv2.IMWRITE_JPEG_QUALITY, 90])
        marker.write_text("")
    lst = SCALE / f"list_{n}.txt"
    if not lst.exists():
        lst.write_text("".join(f"imgs/{name}\n" for name in names))
    return lst


def config(images: Path, out: Path, **keys: Any):
    return common.savedeep_config(tiny_model(), images, out, BLOBS, log_file=out.with_suffix(".log"), **keys)


# --------------------------------------------------------------------------- measuring inside a child


class Peaks:
    """The peak RSS of this process and of its largest descendant, sampled every 50 ms."""

    def __init__(self) -> None:
        self.parent = self.worker = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Peaks":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            try:
                self.parent = max(self.parent, me.memory_info().rss)
                for p in me.children(recursive=True):
                    try:
                        self.worker = max(self.worker, p.memory_info().rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            self._stop.wait(0.05)


def timed_end_steps() -> dict[str, Any]:
    """Wrap the end steps (inside Manifest.finish) and the manifest's rewrites; returns the dict they fill."""
    import savedeep.runner.manifest as man

    times: dict[str, Any] = {
        "failures_table_s": 0.0,
        "manifest_s": 0.0,
        "pickle_s": 0.0,
        "manifest_rewrites": 0,
        "manifest_rewrites_s": 0.0,
        "shards_recorded": 0,
        "recording_s": 0.0,
    }
    inside = [False]

    def wrap(name: str, key: str):
        fn = getattr(man, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                if inside[0]:
                    times[key] += time.perf_counter() - t

        setattr(man, name, timed)

    wrap("write_failures", "failures_table_s")
    wrap("write_manifest", "manifest_s")
    wrap("write_pickle", "pickle_s")
    finish, write, record = man.Manifest.finish, man.Manifest.write, man.Manifest.record_shard

    def finishing(self, **k):
        inside[0] = True
        t = time.perf_counter()
        try:
            return finish(self, **k)
        finally:
            inside[0] = False
            times["finish_s"] = time.perf_counter() - t

    def rewrite(self):
        t = time.perf_counter()
        try:
            return write(self)
        finally:
            times["manifest_rewrites"] += 1
            times["manifest_rewrites_s"] += time.perf_counter() - t

    def recording(self, *a, **k):
        t = time.perf_counter()
        try:
            return record(self, *a, **k)
        finally:
            times["shards_recorded"] += 1
            times["recording_s"] += time.perf_counter() - t

    man.Manifest.finish, man.Manifest.write, man.Manifest.record_shard = finishing, rewrite, recording
    return times


def child_run(args: argparse.Namespace) -> dict[str, Any]:
    import savedeep

    times = timed_end_steps()
    cfg = config(Path(args.list), Path(args.out))
    with Peaks() as peaks:
        t = time.perf_counter()
        res = savedeep.run(cfg, overwrite=True)
        wall = time.perf_counter() - t
    return {
        "images": res.images,
        "rows": res.rows,
        "wall_s": wall,
        "steady_images_per_s": res.steady_images_per_s(),
        "shards": res.shards_done,
        "producers": res.producers,
        "writers": res.writers,
        "devices": res.devices,
        "parent_peak_rss": peaks.parent,
        "worker_peak_rss": peaks.worker,
        **times,
        "pickle_bytes": Path(args.out).stat().st_size,
    }


def child_tasks(args: argparse.Namespace) -> dict[str, Any]:
    import savedeep
    from savedeep.runner.tasks import parse_task

    cfg = config(Path(args.list), Path(args.out), shard_size=TASK_SHARD)
    walls = []
    for k in range(args.tasks):
        t = time.perf_counter()
        savedeep.run(cfg, task=parse_task(f"{k}/{args.tasks}"))
        walls.append(time.perf_counter() - t)
    return {"task_walls_s": walls}


def child_merge(args: argparse.Namespace) -> dict[str, Any]:
    import savedeep

    times = timed_end_steps()
    with Peaks() as peaks:
        t = time.perf_counter()
        res = savedeep.merge(args.out)
        wall = time.perf_counter() - t
    return {
        "wall_s": wall,
        "shards": res.shards,
        "tasks": res.tasks,
        "rows": res.rows,
        "parent_peak_rss": peaks.parent,
        **times,
    }


def vm_hwm() -> int:
    """This process's peak RSS since it started (the kernel's high-water mark; ``ru_maxrss`` would carry the
    parent's peak across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child_load(args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    import savedeep

    out = Path(args.out)
    if args.what == "load_xarray":
        import dask  # noqa: F401 - imports before the baseline
        import xarray  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    base = psutil.Process().memory_info().rss
    hwm_before = vm_hwm()
    t = time.perf_counter()
    if args.what == "load":
        value = savedeep.load(out)
        shape = list(value.shape)
    elif args.what == "load_array":
        value = savedeep.load_array(out, "pool1")
        shape = list(value.shape)
    else:
        ds = savedeep.load_xarray(out, lazy=True)
        opened = time.perf_counter() - t
        mean = float(ds["pool1"].mean().compute())
        shape = [int(s) for s in ds["pool1"].shape]
    wall = time.perf_counter() - t
    peak = vm_hwm()
    out_d = {
        "what": args.what,
        "wall_s": wall,
        "shape": shape,
        "rss_after_imports": base,
        "peak_rss": peak,
        "peak_before_the_call": hwm_before,
        "peak_above_imports": peak - base,
    }
    if args.what == "load_xarray":
        out_d.update(opened_s=opened, mean=mean)
    return out_d


def child(argv: list[str]) -> dict[str, Any]:
    """Run this script with ``--child ...`` in a fresh interpreter; its last stdout line is JSON."""
    r = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"child {argv} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the driver


def mib(n: float) -> float:
    return round(n / 2**20, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--tasks", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="2,000 and 400 images, 8 tasks: a check of the script")
    ap.add_argument("--runs-only", action="store_true", help="the two runs alone: no tasks, merge or loading")
    ap.add_argument("--child", choices=["run", "tasks", "merge", "load"])
    ap.add_argument("--list")
    ap.add_argument("--out")
    ap.add_argument("--what")
    args = ap.parse_args()
    if args.child:
        fn = {"run": child_run, "tasks": child_tasks, "merge": child_merge, "load": child_load}[args.child]
        print(json.dumps(fn(args), default=str))
        return
    if args.quick:
        args.images, args.small, args.tasks = 2000, 400, 8
    m = common.machine()
    print(common.machine_line(m), flush=True)
    tiny_model()
    t = time.perf_counter()
    lists = {n: image_list(n) for n in (args.small, args.images)}
    print(f"images ready in {time.perf_counter() - t:.1f} s", flush=True)
    sizes = [args.small, args.images]
    runs, merges = {}, {}
    for n in sizes:
        out = SCALE / f"run_{n}" / "acts.pk"
        runs[n] = child(["run", "--list", str(lists[n]), "--out", str(out)])
        r = runs[n]
        print(
            f"run {n}: wall {r['wall_s']:.1f} s, steady {r['steady_images_per_s'] or 0:.0f} images/s, parent peak "
            f"{mib(r['parent_peak_rss'])} MiB, largest worker {mib(r['worker_peak_rss'])} MiB; end: failures "
            f"{r['failures_table_s']:.3f} s, manifest {r['manifest_s']:.3f} s, pickle {r['pickle_s']:.2f} s; "
            f"{r['manifest_rewrites']} manifest rewrites {r['manifest_rewrites_s']:.3f} s; "
            f"{r['shards_recorded']} shards recorded in {r['recording_s']:.3f} s",
            flush=True,
        )
    if args.runs_only:
        common.write_json(OUT / "scale_runs.json", {"machine": m, "images": sizes, "runs": runs})
        return
    for n in sizes:
        out = SCALE / f"tasks_{n}" / "acts.pk"
        if out.parent.exists():
            import shutil

            shutil.rmtree(out.parent)
        tasks = child(["tasks", "--list", str(lists[n]), "--out", str(out), "--tasks", str(args.tasks)])
        merges[n] = child(["merge", "--out", str(out)])
        merges[n]["task_walls_s"] = tasks["task_walls_s"]
        total = sum(tasks["task_walls_s"])
        merges[n]["task_startup_s"] = (total - runs[n]["wall_s"]) / (args.tasks - 1)
        g = merges[n]
        print(
            f"{args.tasks} tasks over {n} images: {total:.1f} s in all (one run: {runs[n]['wall_s']:.1f} s), so "
            f"{g['task_startup_s']:.2f} s per task beyond the first; merge of {g['shards']} shards: "
            f"{g['wall_s']:.2f} s (failures {g['failures_table_s']:.3f} s, manifest {g['manifest_s']:.3f} s, "
            f"pickle {g['pickle_s']:.2f} s), peak {mib(g['parent_peak_rss'])} MiB",
            flush=True,
        )
    big = SCALE / f"run_{args.images}" / "acts.pk"
    loads = [child(["load", "--out", str(big), "--what", w]) for w in ("load", "load_array", "load_xarray")]
    for lo in loads:
        print(
            f"{lo['what']}: {lo['wall_s']:.2f} s, shape {lo['shape']}, peak RSS {mib(lo['peak_rss'])} MiB "
            f"({mib(lo['peak_above_imports'])} MiB above the imports)",
            flush=True,
        )

    a, b = sizes
    rows = []
    for key in (
        "wall_s",
        "failures_table_s",
        "manifest_s",
        "pickle_s",
        "manifest_rewrites_s",
        "recording_s",
        "parent_peak_rss",
        "worker_peak_rss",
    ):
        rows.append(
            {
                "figure": f"run {key}",
                str(a): runs[a][key],
                str(b): runs[b][key],
                "ratio": runs[b][key] / runs[a][key] if runs[a][key] else None,
            }
        )
    for key in ("wall_s", "failures_table_s", "manifest_s", "pickle_s", "parent_peak_rss"):
        rows.append(
            {
                "figure": f"merge {key}",
                str(a): merges[a][key],
                str(b): merges[b][key],
                "ratio": merges[b][key] / merges[a][key] if merges[a][key] else None,
            }
        )
    common.print_table(
        rows,
        title=f"\n{b} against {a} images ({b / a:.0f}x): a ratio near {b / a:.0f} is in proportion; more grows faster",
    )
    common.write_json(
        OUT / "scale.json",
        {"machine": m, "images": sizes, "tasks": args.tasks, "runs": runs, "merges": merges, "loads": loads},
    )


if __name__ == "__main__":
    main()
