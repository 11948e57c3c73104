"""The cost of recording finished shards in the manifest, at the shard counts of big runs, without a pipeline.

A run's parent records each shard a writer reports (``Manifest.record_shard``). This records ``--shards``
shards (ImageNet's 1,281,167 images in shards of 1,024: 1,252) into a fresh manifest whose header is a real
run's (``--header``: a ``_manifest.json``, by default the 100,000-image run of bench_scale.py), and prints the
wall time, the bytes handed to write(2) (``wchar`` of /proc/self/io) and the fsyncs, in all and per shard.
It imports savedeep from the tree it lives in, so the same script measures another checkout (copy it there).

Usage: python benchmarks/bench_manifest.py [--shards 1252] [--header benchmarks/out/scale/run_100000/acts.parquet/_manifest.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import OUT  # noqa: E402


def written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=1252)
    ap.add_argument("--header", default=str(OUT / "scale" / "run_100000" / "acts.parquet" / "_manifest.json"))
    args = ap.parse_args()
    import savedeep
    from savedeep.runner.manifest import Manifest

    fsyncs = [0]
    real = os.fsync

    def counting(fd: int) -> None:
        fsyncs[0] += 1
        real(fd)

    os.fsync = counting  # type: ignore[assignment]
    header = {k: v for k, v in json.loads(Path(args.header).read_text()).items() if k not in ("shards", "journal")}
    for k in ("complete", "failures", "summary", "devices", "pickle", "failures_table"):
        header.pop(k, None)
    n, size = args.shards, 1024
    print(common.machine_line(common.machine()), flush=True)
    with tempfile.TemporaryDirectory(dir=OUT) as d:
        m = Manifest.new(Path(d), header, [(k, k * size, (k + 1) * size) for k in range(n)])
        m.write()
        b0, fsyncs[0], t = written(), 0, time.perf_counter()
        for k in range(n):
            m.record_shard(k, f"part-{k:05d}.parquet", size, [])
        wall = time.perf_counter() - t
        b = written() - b0
    print(
        f"savedeep at {Path(savedeep.__file__).parent}: {n} shards recorded in {wall:.2f} s ({1000 * wall / n:.2f} ms "
        f"per shard), {b / 2**20:.1f} MiB written ({b / n / 1024:.1f} KiB per shard), {fsyncs[0]} fsyncs",
        flush=True,
    )


if __name__ == "__main__":
    main()
