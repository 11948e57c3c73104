"""Start-up: how long until the first batch is forwarded, and the whole run against its steady rate.

Each run is a fresh interpreter that does what ``savedeep run`` does (import savedeep, load the
config, ``savedeep.run``; the pickle written, as in the headline), on CaffeNet fc6+fc7, 1,000
images, torch, batch 32, on the CPU; timed from outside (``wall``). The run's own figures:
the first batch written (seconds after ``savedeep.run`` began, plus the time before it), the
steady rate (``RunResult.steady_images_per_s``), the time from the last batch written to the
return of ``savedeep.run`` (the pickle, the manifest, the shutdown) and ``wall rate / steady``, the issue's
target (>= 85%). Where the code under test logs it (round 6 on), the first consumer's
start-up line splits its part: process start and imports, model files read, engine built
(``import torch`` included), waiting for the first batch, the first forward.

Variants run interleaved, ``--rounds`` times, medians printed:

- ``this``: this checkout with ``cpu_consumers: auto`` (the default) and with ``cpu_consumers: 1``;
- ``base``: with ``--base DIR``, an older tree (``git archive <commit> | tar -x -C DIR``) with
  ``cpu_consumers: 1`` (its default), run by the same interpreter, so that the two codes are
  measured side by side.

Writes benchmarks/out/startup.json.

Usage: python benchmarks/bench_startup.py [--rounds 3] [--images 1000] [--base DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import OUT, ROOT  # noqa: E402

DRIVER = r"""
import json, sys, time
t0 = time.time()
import savedeep
t_import = time.time()
spec = json.loads(sys.argv[1])
cfg = savedeep.load_config(None, **spec)
t_run = time.time()
r = savedeep.run(cfg, overwrite=True)
t_end = time.time()
print(json.dumps({"import_s": t_import - t0, "before_run_s": t_run - t0, "run_s": t_end - t_run,
                  "first_written_s": (t_run - t0) + r.written[0][0] if r.written else None,
                  "after_last_s": (t_end - t_run) - r.written[-1][0] if r.written else None,
                  "steady": r.steady_images_per_s(), "rows": r.rows, "consumers": len(r.devices),
                  "t0": t0}))
"""
STARTUP = re.compile(r"start-up: ([\d.]+|nan) s from spawn to the first batch forwarded \((.*)\)")


def one_run(code: Path, model: Path, images: Path, out: Path, consumers: int | str) -> dict:
    spec = {
        "model": str(model),
        "images": str(images),
        "output": str(out / "acts.pk"),
        "blobs": ["fc6", "fc7"],
        "gpus": "cpu",
        "engine": "torch",
        "batch_size": 32,
        "cpu_consumers": consumers,
        "log_file": str(out / "run.log"),
    }
    env = {**os.environ, "PYTHONPATH": str(code)}
    t0 = time.time()
    p = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(spec)], capture_output=True, text=True, env=env, cwd=code, timeout=900
    )
    wall = time.time() - t0
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["wall_s"] = wall
    res["interpreter_s"] = res.pop("t0") - t0  # process start until the driver's first line
    res["first_written_s"] = res["first_written_s"] + res["interpreter_s"] if res["first_written_s"] else None
    log = (out / "run.log").read_text()
    m = STARTUP.search(log)
    res["consumer_startup"] = m.group(2) if m else None
    res["wall_of_steady"] = round(res["rows"] / wall / res["steady"], 3) if res["steady"] else None
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--base", type=Path, help="an older source tree to measure beside this one")
    p.add_argument("--quick", action="store_true", help="96 images, one round: a smoke test")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.images = 1, 96
    m = common.machine()
    print(common.machine_line(m), flush=True)
    model, images = common.caffenet_dir(), common.make_images(args.images)
    variants = [("this", ROOT, "auto"), ("this", ROOT, 1)]
    if args.base:
        variants.append(("base", args.base.resolve(), 1))
    rows = []
    for r in range(args.rounds):
        for name, code, consumers in variants:
            res = one_run(code, model, images, OUT / "startup_run", consumers)
            row = {"code": name, "cpu_consumers": consumers, "round": r + 1, **res}
            rows.append(row)
            print(
                f"round {r + 1} {name} cpu_consumers={consumers} ({res['consumers']}): wall {res['wall_s']:.2f} s, "
                f"first batch written {res['first_written_s']:.2f} s, after the last {res['after_last_s']:.2f} s, steady {res['steady']:.1f} images/s, "
                f"wall rate / steady {res['wall_of_steady']}; consumer: {res['consumer_startup']}",
                flush=True,
            )
    table = []
    for name, _code, consumers in variants:
        mine = [x for x in rows if x["code"] == name and x["cpu_consumers"] == consumers]
        med = lambda k, mine=mine: round(statistics.median(x[k] for x in mine), 3)  # noqa: E731
        table.append(
            {
                "code": name,
                "cpu_consumers": consumers,
                "consumers": mine[0]["consumers"],
                "wall s": med("wall_s"),
                "import savedeep s": med("import_s"),
                "first batch written s": med("first_written_s"),
                "after the last batch s": med("after_last_s"),
                "steady images/s": med("steady"),
                "wall rate / steady": med("wall_of_steady"),
            }
        )
    print()
    common.print_table(
        table,
        title=f"start-up, CaffeNet fc6+fc7, {args.images} images, medians of {args.rounds} "
        "interleaved rounds (torch, batch 32, pickle written)",
    )
    common.write_json(OUT / "startup.json", {"machine": m, "rows": rows, "table": table})


if __name__ == "__main__":
    main()
