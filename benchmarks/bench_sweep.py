"""End-to-end sweep: batch size x engine x producers, through savedeep.run, on three cases.

Cases: CaffeNet (random weights) saving fc6+fc7, CaffeNet saving conv1 (float32, zstd), and
the real open_nsfw model saving pool+prob. One CPU consumer (it gets all cores as threads: 2
here), producers 1 and 2, batch sizes 1, 8, 32, 64, 128, engines caffe and torch. Each point
is one fresh ``savedeep.run`` (workers spawned, engine built, output written, no pickle) over
the first N benchmark JPEGs (256 for CaffeNet, 128 for open_nsfw by default).

Reported per point: wall time (start-up included), images/s over the wall time, the steady
rate (``RunResult.steady_images_per_s``: after the first window of batches), the busy fraction of each role, and
the stage bound for that configuration with the steady rate as a fraction of it. The bound
is measured side by side: before the runs of each (case, engine, batch), its three stages
alone (``bench_stages.bound_now``: forward, decode, write, ~10 s), so that a point is never
compared with a bound from another moment of this drifting machine. ``--stages-json`` uses
the bounds of benchmarks/out/stages.json instead (faster, less exact).

Writes benchmarks/out/sweep.json, sweep.csv, sweep.png.

Usage: python benchmarks/bench_sweep.py [--quick] [--images 256] [--nsfw-images 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from bench_stages import bound_for, bound_now, load_stages  # noqa: E402
from common import OUT  # noqa: E402

BATCHES = (1, 8, 32, 64, 128)
CASES = ("caffenet-fc", "caffenet-conv1", "nsfw-pool")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few small points, for a smoke test")
    p.add_argument("--images", type=int, default=256, help="images per CaffeNet point")
    p.add_argument("--nsfw-images", type=int, default=128, help="images per open_nsfw point")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--engines", default="caffe,torch")
    p.add_argument("--producers", default="1,2")
    p.add_argument(
        "--cpu-consumers",
        type=int,
        default=1,
        help="CPU consumer processes (each gets cores/N threads); the sweep's setting is 1",
    )
    p.add_argument("--out-name", default="sweep", help="base name of the files written in benchmarks/out")
    p.add_argument(
        "--stages-json",
        action="store_true",
        help="bounds from benchmarks/out/stages.json instead of measuring each configuration's stages",
    )
    p.add_argument("--bound-seconds", type=float, default=3.0, help="forward-only seconds per side-by-side bound")
    p.add_argument(
        "--rebound",
        action="store_true",
        help="only recompute the bounds of the last sweep.json from the current stages.json",
    )
    args = p.parse_args()
    m = common.machine()
    print(common.machine_line(m), flush=True)
    if args.quick:
        args.images, args.nsfw_images, args.batches = 32, 16, "8,32"
    cases = args.cases.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    engines = args.engines.split(",")
    producers_list = [int(x) for x in args.producers.split(",")]
    stages = load_stages()
    if args.rebound:
        old = json.loads((OUT / f"{args.out_name}.json").read_text())
        for row in old["rows"]:
            add_bound(row, stages)
        report(
            old["rows"],
            old["machine"],
            old,
            cases=list(dict.fromkeys(r["case"] for r in old["rows"])),
            engines=list(dict.fromkeys(r["engine"] for r in old["rows"])),
            producers_list=sorted({r["producers"] for r in old["rows"]}),
            name=args.out_name,
        )
        return
    rows = []
    t_all = time.perf_counter()
    for case in cases:
        model_name, blobs = common.CASES[case]
        model = common.MODELS[model_name]()
        n = args.nsfw_images if model_name == "nsfw" else args.images
        images = common.make_images(n)
        for engine in engines:
            for batch in batches:
                now = None
                if not args.stages_json and args.cpu_consumers == 1:
                    try:
                        now = bound_now(case, engine, batch, 1, seconds=1.0 if args.quick else args.bound_seconds)
                        print(
                            f"{case:15s} {engine:5s} b{batch:<3d} stages now: forward {now['forward_images_per_s']}"
                            f", decode {now['decode_images_per_s_per_core']}/core, write "
                            f"{now['write_images_per_s']} images/s",
                            flush=True,
                        )
                    except Exception as exc:  # noqa: BLE001 - a bound that fails leaves the runs unbounded
                        print(f"{case} {engine} b{batch}: bound FAILED {exc}", flush=True)
                for producers in producers_list:
                    try:
                        r = common.run_savedeep(
                            OUT / "sweep_run",
                            model,
                            images,
                            blobs,
                            engine=engine,
                            batch_size=batch,
                            producers=producers,
                            pickle=False,
                            cpu_consumers=args.cpu_consumers,
                        )
                    except Exception as exc:  # noqa: BLE001 - record the failure, go on
                        print(f"{case} {engine} p{producers} b{batch}: FAILED {exc}", flush=True)
                        rows.append(
                            {
                                "case": case,
                                "engine": engine,
                                "producers": producers,
                                "batch": batch,
                                "error": str(exc)[-300:],
                            }
                        )
                        continue
                    row = {
                        "case": case,
                        "engine": engine,
                        "producers": producers,
                        "batch": batch,
                        "cpu_consumers": args.cpu_consumers,
                        **r,
                    }
                    b = add_bound(row, stages, now)
                    rows.append(row)
                    print(
                        f"{case:15s} {engine:5s} p{producers} b{batch:<3d} {r['wall_s']:6.1f} s "
                        f"{r['images_per_s']:7.1f} img/s (steady {r['steady_images_per_s']}) busy {r['busy']}"
                        + (f" bound {b['bound']} -> {row.get('steady_of_bound')}" if b else ""),
                        flush=True,
                    )
    report(
        rows,
        m,
        {"images": args.images, "nsfw_images": args.nsfw_images, "total_s": round(time.perf_counter() - t_all, 1)},
        cases,
        engines,
        producers_list,
        args.out_name,
    )


def add_bound(row: dict, stages: dict | None, now: dict | None = None) -> dict | None:
    """Put the stage bound of the row's configuration and the fraction reached into `row`.

    `now` is bound_now's measurement for 1 producer (side by side); its stages give the bound
    for the row's producer count. Without it, the bound comes from stages.json.
    """
    if "error" in row or row.get("cpu_consumers", 1) != 1:
        return None
    if now is not None:
        from bench_stages import stage_bound

        b = stage_bound(
            __import__("savedeep.runner.devices").devices.usable_cpus(),
            now["threads"],
            row["producers"],
            now["forward_images_per_s"],
            now["decode_images_per_s_per_core"],
            now["write_images_per_s"],
        )
        row["bound_from"] = "side by side"
        row["stages_now"] = {
            k: now[k] for k in ("forward_images_per_s", "decode_images_per_s_per_core", "write_images_per_s")
        }
    elif stages:
        b = bound_for(stages, row["case"], row["engine"], row["batch"], row["producers"])
        if b:
            row["bound_from"] = "stages.json " + stages["machine"]["date_utc"]
    else:
        return None
    if b:
        row["bound"] = b["bound"]
        row["limiting"] = b["limiting"]
        if row.get("steady_images_per_s"):
            row["steady_of_bound"] = round(row["steady_images_per_s"] / b["bound"], 3)
        row["wall_of_bound"] = round(row["images_per_s"] / b["bound"], 3)
    return b


def report(
    rows: list, m: dict, info: dict, cases: list, engines: list, producers_list: list, name: str = "sweep"
) -> None:
    """Print the table, write sweep.json, sweep.csv and sweep.png."""
    print()
    common.print_table(
        [r for r in rows if "error" not in r],
        [
            "case",
            "engine",
            "producers",
            "batch",
            "images",
            "wall_s",
            "images_per_s",
            "steady_images_per_s",
            "busy",
            "bound",
            "steady_of_bound",
        ],
        f"sweep (one CPU consumer, {m['cores']} threads; no pickle)",
    )
    common.write_json(
        OUT / f"{name}.json",
        {
            "machine": m,
            "images": info["images"],
            "nsfw_images": info["nsfw_images"],
            "total_s": info["total_s"],
            "rows": rows,
            "bounds_from": "each row's bound_from",
        },
    )
    common.write_csv(OUT / f"{name}.csv", rows)
    plt = common.plt()
    fig, axes = plt.subplots(1, len(cases), figsize=(5.5 * len(cases), 4), squeeze=False)
    for ax, case in zip(axes[0], cases):
        for engine in engines:
            for producers in producers_list:
                pts = [
                    (r["batch"], r["steady_images_per_s"] or r["images_per_s"])
                    for r in rows
                    if r["case"] == case and r["engine"] == engine and r["producers"] == producers and "error" not in r
                ]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=f"{engine}, {producers} producer(s)")
        bpts = [
            (r["batch"], r["bound"])
            for r in rows
            if r["case"] == case and r.get("bound") and r["engine"] == "torch" and r["producers"] == 1
        ]
        if bpts:
            ax.plot(*zip(*bpts), "k--", alpha=0.5, label="stage bound (torch)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("steady images/s")
        ax.set_title(case)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    common.save_fig(fig, OUT / f"{name}.png")


if __name__ == "__main__":
    main()
