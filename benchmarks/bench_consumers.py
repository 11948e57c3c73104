"""One CPU consumer with every core as threads, against one single-thread consumer per core.

For each case, the stage bound of the default configuration (one consumer, every core as
threads, batch 32, the producers ``auto`` gives) is measured first, with
``bench_stages.bound_now``; then ``savedeep.run`` runs the case with ``cpu_consumers: 1``
and ``cpu_consumers: <cores>`` (``consumer_threads: auto`` then gives each consumer one
core), interleaved, ``--rounds`` times. Each run's steady rate
(``RunResult.steady_images_per_s``: the first window of batches left out) is reported with
its fraction of the bound measured beside it, so that no figure is compared with a bound
from another moment of a drifting machine.

Writes benchmarks/out/consumers.json.

Usage: python benchmarks/bench_consumers.py [--quick] [--rounds 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from bench_stages import bound_now  # noqa: E402
from common import OUT  # noqa: E402

# case -> images (the 4,000-image fc case shows the steady state past the second consumer's start-up)
CASES = {"caffenet-fc": (1000, 4000), "caffenet-conv1": (1000,), "nsfw-pool": (512,)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one small case, for a smoke test")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--bound-seconds", type=float, default=5.0)
    args = p.parse_args()
    from savedeep.devices import usable_cpus

    m = common.machine()
    print(common.machine_line(m), flush=True)
    cores = usable_cpus()
    cases = {"caffenet-fc": (96,)} if args.quick else CASES
    rows = []
    for case, sizes in cases.items():
        model_name, blobs = common.CASES[case]
        model = common.MODELS[model_name]()
        print(f"{case}: stage bound of one {cores}-thread consumer ...", flush=True)
        bound = bound_now(case, "torch", 32, 1, seconds=2.0 if args.quick else args.bound_seconds)
        print(f"  bound {bound['bound']} images/s ({bound['limiting']})", flush=True)
        for n in sizes:
            images = common.make_images(n)
            for r in range(args.rounds):
                for consumers in (1, cores):
                    res = common.run_savedeep(OUT / "consumers_run", model, images, blobs, engine="torch",
                                              batch_size=32, pickle=False, cpu_consumers=consumers)
                    steady = res["steady_images_per_s"]
                    row = {"case": case, "images": n, "round": r + 1, "consumers": consumers,
                           "threads_each": max(1, cores // consumers), "wall_s": res["wall_s"],
                           "steady_images_per_s": steady, "bound": bound["bound"],
                           "steady_of_bound": round(steady / bound["bound"], 3) if steady else None,
                           "busy": res["busy"]}
                    rows.append(row)
                    print(f"  {n} images, {consumers} consumer(s): wall {res['wall_s']} s, steady {steady} "
                          f"images/s = {row['steady_of_bound']} of the bound; busy {res['busy']}", flush=True)
    print()
    common.print_table(rows, ["case", "images", "round", "consumers", "threads_each", "wall_s",
                              "steady_images_per_s", "bound", "steady_of_bound"],
                       title="one consumer x all cores against one consumer per core (torch, batch 32, no pickle)")
    common.write_json(OUT / "consumers.json", {"machine": m, "cores": cores, "rows": rows})


if __name__ == "__main__":
    main()
