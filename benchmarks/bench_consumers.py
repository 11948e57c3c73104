"""CPU consumers: one with every core as threads, one single-thread consumer per core, and ``auto``.

For each case, ``savedeep.run`` runs three configurations, interleaved, ``--rounds`` times
(torch, batch 32, no pickle):

- ``1 x all``: ``cpu_consumers: 1`` (every usable core as threads of one forward; the default
  until round 6), producers and writers ``auto``;
- ``per core``: ``cpu_consumers: <cores>`` (``consumer_threads: auto`` gives each one core);
- ``auto``: ``cpu_consumers: auto``, the rule of savedeep/runner/devices.py (NOTE [cpu_consumers: auto]),
  which also picks the threads, producers and writers (printed for each case).

Before each case the stage bound of each configuration is measured with
``bench_stages.bound_now`` (its consumer's threads; the forward term times its number of
consumers), so that each run's steady rate (``RunResult.steady_images_per_s``) is a fraction of
a bound measured minutes, not hours, from it. The table gives the medians over the rounds.

Writes benchmarks/out/consumers.json.

Usage: python benchmarks/bench_consumers.py [--quick] [--rounds 3] [--cases caffenet-fc,...] [--rule-only]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from bench_stages import bound_now, stage_bound  # noqa: E402
from common import OUT  # noqa: E402

# case -> (benchmark case, images, stored dtype)
CASES = {
    "caffenet-fc": ("caffenet-fc", 1000, "float32"),
    "caffenet-conv1-f16": ("caffenet-conv1", 1000, "float16"),
    "nsfw-pool": ("nsfw-pool", 1024, "float32"),
}


def auto_plan(case: str, dtype: str, n_images: int):
    """What ``cpu_consumers: auto`` chooses for a case on this machine (savedeep.runner.devices.plan_cpu)."""
    from savedeep.runner.devices import available_memory_bytes, cpu_load, plan_cpu, usable_cpus
    from savedeep.caffe.model import load_model
    from savedeep.data.output import ColumnSpec

    model_name, blobs = common.CASES[case]
    m = load_model(common.MODELS[model_name](), weights=False)
    shapes = m.net.blob_shapes(1)
    cols = [ColumnSpec(b, tuple(shapes[b][1:]), dtype) for b in blobs]
    load = cpu_load("torch", m.net, blobs, cols, os.path.getsize(m.weights), 32)
    batches = -(-n_images // 32)
    return plan_cpu(usable_cpus(), load, available_memory_bytes(), batches, -(-n_images // 1024))


def rule_table(cores_list=(2, 16, 64), memory_gib=(23.5, 64, 256)) -> list[dict]:
    """What the rule picks for each case and engine on nodes of these cores and memory (no run)."""
    from savedeep.runner.devices import cpu_load, plan_cpu
    from savedeep.caffe.model import load_model
    from savedeep.data.output import ColumnSpec

    rows = []
    for label, (case, _n, dtype) in CASES.items():
        model_name, blobs = common.CASES[case]
        m = load_model(common.MODELS[model_name](), weights=False)
        shapes = m.net.blob_shapes(1)
        cols = [ColumnSpec(b, tuple(shapes[b][1:]), dtype) for b in blobs]
        for engine in ("torch", "caffe"):
            load = cpu_load(engine, m.net, blobs, cols, os.path.getsize(m.weights), 32)
            row = {
                "case": label,
                "engine": engine,
                "core-ms f/d/w": f"{1e3 * load.forward_s:.1f}/{1e3 * load.decode_s:.1f}/{1e3 * load.write_s:.1f}",
                "MiB each": round(load.memory_per_consumer / 2**20),
            }
            for cores, gib in zip(cores_list, memory_gib):
                p = plan_cpu(cores, load, int(gib * 2**30), 10**6, 10**4)
                row[f"{cores} cores ({gib} GiB)"] = f"{p.consumers}x{p.threads} P{p.producers} W{p.writers}"
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one small case, for a smoke test")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bound-seconds", type=float, default=4.0)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument(
        "--rule-only",
        action="store_true",
        help="print what cpu_consumers: auto picks on 2, 16 and 64 cores for each case, and stop",
    )
    args = p.parse_args()
    from savedeep.runner.devices import usable_cpus

    if args.rule_only:
        common.print_table(
            rule_table(),
            title="cpu_consumers: auto (consumers x threads, producers, writers; "
            "forward/decode/write core-ms per image, memory per consumer)",
        )
        return

    m = common.machine()
    print(common.machine_line(m), flush=True)
    cores = usable_cpus()
    cases = (
        {"caffenet-fc": ("caffenet-fc", 96, "float32")} if args.quick else {k: CASES[k] for k in args.cases.split(",")}
    )
    rows, table = [], []
    for label, (case, n, dtype) in cases.items():
        model_name, blobs = common.CASES[case]
        model = common.MODELS[model_name]()
        blob_items = [{"name": b, "dtype": dtype} for b in blobs]
        plan = auto_plan(case, dtype, n)
        print(f"{label}: {plan.note}", flush=True)
        configs = {"1 x all": (1, cores), "per core": (cores, 1), "auto": (plan.consumers, plan.threads)}
        bounds = {}
        for name, (consumers, threads) in configs.items():
            b = bound_now(
                case,
                "torch",
                32,
                plan.producers if name == "auto" else 1,
                dtype=dtype,
                threads=threads,
                seconds=1.0 if args.quick else args.bound_seconds,
            )
            # N consumers of T threads: each image still costs T/F core-seconds; the forward's own cap is N x F
            bounds[name] = stage_bound(
                cores,
                threads,
                plan.producers if name == "auto" else 1,
                consumers * b["forward_images_per_s"],
                b["decode_images_per_s_per_core"],
                b["write_images_per_s"],
            )
            bounds[name]["forward_one"] = b["forward_images_per_s"]
            print(
                f"  bound {name} ({consumers} x {threads}): {bounds[name]['bound']} images/s "
                f"({bounds[name]['limiting']})",
                flush=True,
            )
        images = common.make_images(n)
        for r in range(args.rounds):
            for name, (consumers, threads) in configs.items():
                keys = {"cpu_consumers": "auto"} if name == "auto" else {"cpu_consumers": consumers}
                res = common.run_savedeep(
                    OUT / "consumers_run",
                    model,
                    images,
                    blob_items,
                    engine="torch",
                    batch_size=32,
                    pickle=False,
                    **keys,
                )
                steady = res["steady_images_per_s"]
                row = {
                    "case": label,
                    "images": n,
                    "round": r + 1,
                    "config": name,
                    "consumers": len(res["devices"]),
                    "threads_each": threads,
                    "producers": res["producers"],
                    "writers": res["writers"],
                    "wall_s": res["wall_s"],
                    "images_per_s": res["images_per_s"],
                    "steady_images_per_s": steady,
                    "bound": bounds[name]["bound"],
                    "steady_of_bound": round(steady / bounds[name]["bound"], 3) if steady else None,
                    "busy": res["busy"],
                }
                rows.append(row)
                print(
                    f"  round {r + 1} {name:8s} {row['consumers']} x {threads}: wall {res['wall_s']} s, "
                    f"steady {steady} images/s = {row['steady_of_bound']} of its bound",
                    flush=True,
                )
        for name in configs:
            mine = [x for x in rows if x["case"] == label and x["config"] == name]

            def med(k: str, mine: list[dict] = mine) -> float | None:
                vals = [x[k] for x in mine if x[k] is not None]
                return round(statistics.median(vals), 3) if vals else None

            wall_rate, steady = med("images_per_s"), med("steady_images_per_s")
            table.append(
                {
                    "case": label,
                    "images": n,
                    "config": name,
                    "consumers x threads": f"{mine[0]['consumers']} x {mine[0]['threads_each']}",
                    "P/W": f"{mine[0]['producers']}/{mine[0]['writers']}",
                    "bound": bounds[name]["bound"],
                    "median wall s": med("wall_s"),
                    "median steady": steady,
                    "of bound": med("steady_of_bound"),
                    "wall of steady": round(wall_rate / steady, 3) if steady else None,
                }
            )
    print()
    common.print_table(
        table, title=f"CPU consumers, medians of {args.rounds} interleaved rounds (torch, batch 32, no pickle)"
    )
    common.write_json(OUT / "consumers.json", {"machine": m, "cores": cores, "rows": rows, "table": table})


if __name__ == "__main__":
    main()
