"""Peak memory of a whole savedeep run in the number of images, and bytes on disk per image, for conv1.

**Memory.** ``python -m savedeep run`` (CaffeNet conv1, (96, 55, 55) per image, torch engine,
batch 32, producers auto, ``--no-pickle``: the final pickle is by design held whole) runs as a
child of this script over 1,000 and then 4,000 images, for float32 and float16 storage (zstd).
A thread here samples, every 50 ms, the child and all its descendants (producers, consumer,
writer, resource tracker) with psutil's ``memory_full_info()`` and records the peak of the
**sum of PSS** (proportional set size: a page shared by k processes counts 1/k in each, so the
shared-memory rings and shared libraries are counted once) and, for reference, the peak of the
sum of RSS (which counts shared pages once per process). Sampling costs a few ms of CPU per
process per sample, so these runs are not used for speed.

**Disk.** The same conv1 output over ``--disk-images`` images (1,000) for float32 / float16 x
zstd / none with the default tensor storage, and float16 + zstd with ``storage: binary``,
without the sampler, with one consumer of every core (the configuration of the stage bound
below; the memory runs use savedeep's default, ``cpu_consumers: auto``): the Parquet shard bytes per image, as a fraction of the raw
float32 bytes (96*55*55*4 = 1,161,600 B), and the steady rate of each run. Right after each
run, its stages alone (``bench_stages.bound_now``: the forward writing that dtype, decoding,
ShardWriter with that dtype, codec and storage): whether the writer alone keeps up with the
forward alone, and the run's steady rate as a fraction of the stage bound.

Writes benchmarks/out/memory_disk.json, memory_disk.csv and memory_disk.png.

Usage: python benchmarks/bench_memory_disk.py [--quick] [--counts 1000,4000] [--disk-images 256]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import OUT, PYTHON, ROOT  # noqa: E402

RAW_F32 = 96 * 55 * 55 * 4


def memory_run(model: Path, images: Path, out_dir: Path, dtype: str, interval: float) -> dict:
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
        "conv1",
        "-i",
        str(images),
        "-o",
        str(out_dir / "acts.pk"),
        "--gpus",
        "cpu",
        "--dtype",
        dtype,
        "--no-pickle",
        "--no-progress",
    ]
    env = dict(os.environ, GLOG_minloglevel="2")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    with common.MemorySampler(proc.pid, interval) as s:
        _, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    pq_dir = out_dir / "acts.parquet"
    return {
        "wall_s": round(wall, 2),
        "peak_pss_mib": round(s.peak_pss / 2**20, 1),
        "peak_rss_sum_mib": round(s.peak_rss / 2**20, 1),
        "processes": s.peak_procs,
        "samples": s.samples,
        "disk_bytes": common.dir_bytes(pq_dir),
        "timeline": s.timeline[::4],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument("--counts", default="1000,4000", help="image counts of the memory runs")
    p.add_argument("--dtypes", default="float32,float16", help="storage dtypes of the memory runs")
    p.add_argument("--disk-images", type=int, default=1000)
    p.add_argument("--interval", type=float, default=0.05, help="memory sampling interval, seconds")
    args = p.parse_args()
    if args.quick:
        args.counts, args.disk_images = "64,128", 32
    m = common.machine()
    print(common.machine_line(m), flush=True)
    model = common.caffenet_dir()
    counts = [int(c) for c in args.counts.split(",")]
    rows = []
    for dtype in args.dtypes.split(","):
        for n in counts:
            images = common.make_images(n)
            r = memory_run(model, images, OUT / "memory_run", dtype, args.interval)
            rows.append({"kind": "memory", "dtype": dtype, "compression": "zstd", "images": n, **r})
            print(
                f"memory conv1 {dtype} {n} images: peak PSS {r['peak_pss_mib']} MiB (RSS sum "
                f"{r['peak_rss_sum_mib']} MiB, {r['processes']} processes, {r['samples']} samples), "
                f"{r['wall_s']} s",
                flush=True,
            )
    shutil.rmtree(OUT / "memory_run", ignore_errors=True)

    from bench_stages import bound_now

    images = common.make_images(args.disk_images)
    for dtype, comp, storage in (
        ("float32", "zstd", "tensor"),
        ("float32", "none", "tensor"),
        ("float16", "zstd", "tensor"),
        ("float16", "none", "tensor"),
        ("float16", "zstd", "binary"),
    ):
        # One consumer of every core: the configuration bound_now measures the stages of.
        r = common.run_savedeep(
            OUT / "disk_run",
            model,
            images,
            ["conv1"],
            dtype=dtype,
            compression=comp,
            batch_size=32,
            pickle=False,
            storage=storage,
            cpu_consumers=1,
        )
        per = r["disk_bytes"] / r["rows"]
        b = bound_now(
            "caffenet-conv1",
            "torch",
            32,
            r["producers"],
            dtype=dtype,
            compression=comp,
            storage=storage,
            seconds=1.0 if args.quick else 3.0,
        )
        steady = r["steady_images_per_s"]
        rows.append(
            {
                "kind": "disk",
                "dtype": dtype,
                "compression": comp,
                "storage": storage,
                "images": r["rows"],
                "wall_s": r["wall_s"],
                "disk_bytes_per_image": round(per),
                "of_raw_f32": round(per / RAW_F32, 4),
                "steady_images_per_s": steady,
                "busy": r["busy"],
                "forward_alone": b["forward_images_per_s"],
                "write_alone": b["write_images_per_s"],
                "writer_keeps_up": b["write_images_per_s"] >= b["forward_images_per_s"],
                "bound": b["bound"],
                "limiting": b["limiting"],
                "of_bound": round(steady / b["bound"], 3) if steady else None,
                "stages_now": b,
            }
        )
        print(
            f"disk conv1 {dtype} {comp} {storage}: {per:,.0f} B/image = {per / RAW_F32:.1%} of raw float32; "
            f"steady {steady} images/s, busy {r['busy']}; alone: forward {b['forward_images_per_s']}, write "
            f"{b['write_images_per_s']}, bound {b['bound']} ({b['limiting']})",
            flush=True,
        )
    shutil.rmtree(OUT / "disk_run", ignore_errors=True)

    mem = [r for r in rows if r["kind"] == "memory"]
    disk = [r for r in rows if r["kind"] == "disk"]
    print()
    common.print_table(
        mem,
        ["dtype", "images", "peak_pss_mib", "peak_rss_sum_mib", "processes", "wall_s"],
        "peak memory of the whole run (sum over processes), conv1, --no-pickle",
    )
    flat = {}
    for dtype in {r["dtype"] for r in mem}:
        d = sorted((r for r in mem if r["dtype"] == dtype), key=lambda r: r["images"])
        if len(d) >= 2:
            flat[dtype] = round(d[-1]["peak_pss_mib"] / d[0]["peak_pss_mib"], 3)
            print(f"  {dtype}: peak PSS at {d[-1]['images']} / at {d[0]['images']} images = {flat[dtype]}")
    print()
    common.print_table(
        disk,
        [
            "dtype",
            "compression",
            "storage",
            "images",
            "disk_bytes_per_image",
            "of_raw_f32",
            "steady_images_per_s",
            "forward_alone",
            "write_alone",
            "writer_keeps_up",
            "bound",
            "of_bound",
            "busy",
        ],
        f"bytes on disk per image, conv1 (raw float32: {RAW_F32:,} B)",
    )
    common.write_json(
        OUT / "memory_disk.json",
        {
            "machine": m,
            "memory_measure": f"sum of psutil PSS (and RSS) over the run's process tree every {args.interval} s",
            "flatness_peak_ratio": flat,
            "rows": rows,
        },
    )
    common.write_csv(OUT / "memory_disk.csv", [{k: v for k, v in r.items() if k != "timeline"} for r in rows])
    plt = common.plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in mem:
        t = [x[0] for x in r["timeline"]]
        a.plot(t, [x[1] / 2**20 for x in r["timeline"]], label=f"{r['dtype']}, {r['images']} images")
    a.set_xlabel("seconds")
    a.set_ylabel("PSS of all processes, MiB")
    a.set_title("memory during a conv1 run (--no-pickle)")
    a.legend()
    a.grid(alpha=0.3)
    b.bar(
        [f"{r['dtype'][5:]}\n{r['compression']}\n{r['storage']}" for r in disk], [r["of_raw_f32"] * 100 for r in disk]
    )
    b.axhline(30, color="k", ls="--", alpha=0.5)
    b.set_ylabel("% of raw float32 bytes")
    b.set_title("conv1 bytes on disk per image")
    common.save_fig(fig, OUT / "memory_disk.png")


if __name__ == "__main__":
    main()
