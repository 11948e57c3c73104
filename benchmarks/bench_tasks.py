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

Usage: python benchmarks/bench_tasks.py [--images 64] [--shard-size 8] [--tasks 2,4,8] [--rounds 3] [--merge-shards 200]
"""

from __future__ import annotations

import argparse
import resource
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


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall s, CPU s) of a command: the CPU time of it and every process it waited for (its workers)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tasks", default="2,4,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--merge-shards",
        type=int,
        default=0,
        help="also: merge one task's output of this many one-image shards (merge's cost per shard)",
    )
    args = ap.parse_args()
    counts = [int(n) for n in args.tasks.split(",")]
    m = common.machine()
    model, images = common.nsfw_dir(), common.make_images(args.images)
    root = OUT / "tasks"
    flags = [
        "-m",
        str(model),
        "-i",
        str(images),
        "-b",
        "pool,prob",
        "--gpus",
        "cpu",
        "--batch-size",
        str(args.batch_size),
        "--shard-size",
        str(args.shard_size),
        "--no-progress",
        "-q",
    ]
    walls: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}

    def add(name: str, wall: float, cpu: float) -> None:
        walls.setdefault(name, []).append(wall)
        cpus.setdefault(name, []).append(cpu)

    for r in range(args.rounds):
        shutil.rmtree(root, ignore_errors=True)
        add("1 run", *timed([SAVEDEEP, "run", *flags, "-o", str(root / "one" / "acts.pk")]))
        for n in counts:
            out = root / f"n{n}" / "acts.pk"
            each = [timed([SAVEDEEP, "run", *flags, "-o", str(out), "--task", f"{k}/{n}"]) for k in range(n)]
            add(f"{n} tasks", sum(w for w, _ in each), sum(c for _, c in each))
            add(f"{n} tasks: slowest task", max(w for w, _ in each), max(c for _, c in each))
            if n == max(counts):
                add(f"merge --no-pickle ({n} tasks)", *timed([SAVEDEEP, "merge", str(out), "--no-pickle", "-q"]))
                (out.with_suffix(".parquet") / "_manifest.json").unlink()
                add(f"merge with the pickle ({n} tasks)", *timed([SAVEDEEP, "merge", str(out), "-q"]))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    # The machine may be shared: the best wall of the rounds is the least disturbed; CPU seconds (user + sys
    # of the command and its workers) depend far less on other work, so they carry the start-up figure.
    one_w, one_c = min(walls["1 run"]), statistics.median(cpus["1 run"])
    table = []
    for name in walls:
        w, c = min(walls[name]), statistics.median(cpus[name])
        row = {
            "case": name,
            "best wall s": round(w, 2),
            "wall / 1 run": round(w / one_w, 2),
            "CPU s": round(c, 2),
            "CPU / 1 run": round(c / one_c, 2),
            "walls": [round(x, 1) for x in walls[name]],
        }
        if name.endswith(" tasks"):
            n = int(name.split()[0])
            row["CPU s per extra task"] = round((c - one_c) / (n - 1), 2)
        table.append(row)
    print(common.machine_line(m))
    print(
        f"{args.images} images (500x375 JPEG), open_nsfw pool+prob, torch on the CPU, batch {args.batch_size}, "
        f"shard_size {args.shard_size} ({-(-args.images // args.shard_size)} shards); one process per command, "
        "tasks one after another"
    )
    common.print_table(
        table, ["case", "best wall s", "wall / 1 run", "CPU s", "CPU / 1 run", "CPU s per extra task", "walls"]
    )
    print(f"single run: {args.images / one_w:.1f} images/s (best wall), {args.images / one_c:.1f} images per CPU s")
    if args.merge_shards:
        many = common.make_images(args.merge_shards)
        out = root / "many" / "acts.pk"
        timed(
            [
                SAVEDEEP,
                "run",
                "-m",
                str(model),
                "-i",
                str(many),
                "-b",
                "pool,prob",
                "--gpus",
                "cpu",
                "--batch-size",
                "1",
                "--shard-size",
                "1",
                "--no-progress",
                "-q",
                "-o",
                str(out),
                "--task",
                "0/1",
            ]
        )
        few = root / "n8" / "acts.pk"
        rows = []
        for name, target, n in (
            ("merge --no-pickle", few, -(-args.images // args.shard_size)),
            ("merge --no-pickle", out, args.merge_shards),
        ):
            ws = []
            for _ in range(3):
                (target.with_suffix(".parquet") / "_manifest.json").unlink(missing_ok=True)
                ws.append(timed([SAVEDEEP, "merge", str(target), "--no-pickle", "-q"]))
            rows.append(
                {
                    "case": f"{name}, {n} shards",
                    "best wall s": round(min(w for w, _ in ws), 3),
                    "CPU s": round(statistics.median(c for _, c in ws), 3),
                }
            )
        few_shards = -(-args.images // args.shard_size)
        per = (rows[1]["best wall s"] - rows[0]["best wall s"]) / (args.merge_shards - few_shards)
        common.print_table(rows, ["case", "best wall s", "CPU s"])
        print(f"merge: {per * 1000:.2f} ms of wall per shard beyond the first few")
        table += rows
    common.write_json(OUT / "tasks.json", {"machine": m, "args": vars(args), "rows": table})


if __name__ == "__main__":
    main()
