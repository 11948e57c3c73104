"""What splitting a run into N tasks (Slurm job arrays, issue 15) costs on one machine: start-up and merge.

The same images and config are computed as one ``savedeep run`` and as N tasks
(``savedeep run --task K/N``, one after another, each a fresh process as an array task
is), then merged (``savedeep merge``; once without and once with the pickle). Every
command is a subprocess timed from outside, as a scheduler would see it; the cases of a
round run back to back and rounds repeat, so that the ratios compare figures from the
same minutes. With W the work and S one process's start-up, one run costs S + W and N
tasks N*S + W, so each task beyond the first costs (T_N - T_1) / (N - 1): the start-up.

Tasks run one after another here because this machine has 2 cores: running them at once
would only share the cores. On a cluster each task has its own node, and the wall is the
slowest task's plus the merge.

Writes benchmarks/out/tasks.json.

Usage: python benchmarks/bench_tasks.py [--images 128] [--shard-size 16] [--tasks 2,4,8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import OUT  # noqa: E402

SAVEDEEP = str(Path(sys.executable).parent / "savedeep")


def timed(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--tasks", default="2,4,8")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    counts = [int(n) for n in args.tasks.split(",")]
    m = common.machine()
    model, images = common.nsfw_dir(), common.make_images(args.images)
    root = OUT / "tasks"
    flags = ["-m", str(model), "-i", str(images), "-b", "pool,prob", "--gpus", "cpu", "--batch-size",
             str(args.batch_size), "--shard-size", str(args.shard_size), "--no-progress", "-q"]
    rows: dict[str, list[float]] = {}
    merges: dict[str, list[float]] = {"merge --no-pickle": [], "merge (pickle)": []}
    for r in range(args.rounds):
        shutil.rmtree(root, ignore_errors=True)
        rows.setdefault("1 run", []).append(timed([SAVEDEEP, "run", *flags, "-o", str(root / "one" / "acts.pk")]))
        for n in counts:
            out = root / f"n{n}" / "acts.pk"
            walls = [timed([SAVEDEEP, "run", *flags, "-o", str(out), "--task", f"{k}/{n}"]) for k in range(n)]
            rows.setdefault(f"{n} tasks", []).append(sum(walls))
            rows.setdefault(f"{n} tasks: slowest task", []).append(max(walls))
            if n == max(counts):
                merges["merge --no-pickle"].append(timed([SAVEDEEP, "merge", str(out), "--no-pickle", "-q"]))
                (out.with_suffix(".parquet") / "_manifest.json").unlink()
                merges["merge (pickle)"].append(timed([SAVEDEEP, "merge", str(out), "-q"]))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    one = statistics.median(rows["1 run"])
    table = []
    for name, walls in rows.items():
        med = statistics.median(walls)
        row = {"case": name, "wall s (median)": round(med, 2), "walls": [round(w, 2) for w in walls],
               "of 1 run": round(med / one, 2)}
        if name.endswith(" tasks"):
            n = int(name.split()[0])
            row["start-up per extra task s"] = round((med - one) / (n - 1), 2)
        table.append(row)
    for name, walls in merges.items():
        table.append({"case": f"{name} ({max(counts)} tasks)", "wall s (median)": round(statistics.median(walls), 2),
                      "walls": [round(w, 2) for w in walls], "of 1 run": round(statistics.median(walls) / one, 2)})
    print(common.machine_line(m))
    print(f"{args.images} images (500x375 JPEG), open_nsfw pool+prob, torch on the CPU, batch {args.batch_size}, "
          f"shard_size {args.shard_size} ({-(-args.images // args.shard_size)} shards); one process per command")
    common.print_table(table, ["case", "wall s (median)", "of 1 run", "start-up per extra task s", "walls"])
    print(f"images/s of the single run, whole wall: {args.images / one:.1f}")
    common.write_json(OUT / "tasks.json", {"machine": m, "args": vars(args), "rows": table})


if __name__ == "__main__":
    main()
