"""The netCDF and NumPy exports stream: peak memory stays far below the size of the output.

A synthetic conv output (real Parquet shards written by savedeep's ShardWriter,
real manifest; the reader path is the export's own) of 300 MiB is exported in a
fresh Python process; its peak resident set (``VmHWM``) minus its resident set after the
imports (an upper bound on what the export added) is compared with the data's size. Nothing is timed.

The children run Arrow's reader on one thread. The resident set counts what each thread's allocator keeps for
reuse, and whether Arrow's reader woke a second thread is the scheduler's choice: on a loaded 2-core machine
(10 runs each) the exports added 32 to 56 MiB with Arrow's default pools and 25 to 36 MiB with one thread,
and load_array 24 to 32 MiB above the blob against 24.0 to 24.3. The resident set stays the measure: the npy
windows are file pages and HDF5's buffers are C allocations, neither seen by tracemalloc.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_analysis_export import make_output

pytestmark = pytest.mark.slow
pytest.importorskip("h5netcdf")

N, SHAPE = 1200, (64, 32, 32)  # 256 KiB per image, 300 MiB in all
BUDGET = 100 * 2**20  # what the export may add to the process, a third of the output

CHILD = """
import json, sys
import h5netcdf, h5py, numpy, pyarrow.dataset, pyarrow.parquet, savedeep.caffe.receptive_field  # libraries: not the export's data
from savedeep.analysis.interop import export
pyarrow.set_cpu_count(1)  # one reader thread: see the module's text
pyarrow.set_io_thread_count(1)
def status(key):  # KiB
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1])
# VmHWM, not ru_maxrss: ru_maxrss keeps the peak of the process that forked this one (pytest's)
before = status("VmRSS:")  # what the export adds is at most peak - before (the peak may be an import's)
export(sys.argv[1], sys.argv[2], sys.argv[3], compression_level=0)
print(json.dumps({"before": before * 1024, "peak": status("VmHWM:") * 1024}))
"""

PATTERN = np.arange(int(np.prod(SHAPE)), dtype=np.float32).reshape(SHAPE) * np.float32(1e-3)


def _rows(a: int, b: int) -> np.ndarray:
    return PATTERN[None] + np.arange(a, b, dtype=np.float32)[:, None, None, None]


@pytest.fixture(scope="module")
def big_output(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("big") / "acts.parquet"
    make_output(
        out,
        {"conv": (SHAPE, "float32")},
        N,
        shard_size=400,
        storage="binary",
        write_rows=16,
        compression="none",
        fill=lambda c, a, b: _rows(a, b),
    )
    return out


@pytest.mark.parametrize("to", ["netcdf", "npy"])
def test_export_memory_is_bounded(big_output, tmp_path, to) -> None:
    dest = tmp_path / ("acts.nc" if to == "netcdf" else "acts_npy")
    r = subprocess.run([sys.executable, "-c", CHILD, str(big_output), to, str(dest)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    mem = json.loads(r.stdout.splitlines()[-1])
    size = N * int(np.prod(SHAPE)) * 4
    grew = mem["peak"] - mem["before"]
    print(
        f"{to}: output {size / 2**20:.0f} MiB, peak RSS {mem['peak'] / 2**20:.0f} MiB, "
        f"{grew / 2**20:.0f} MiB above the baseline after imports"
    )
    assert grew < BUDGET < size
    # and the values arrived: spot rows of every shard
    rows = [0, 15, 16, 399, 400, 777, N - 1]
    if to == "npy":
        got = np.load(dest / "conv.npy", mmap_mode="r")[rows]
    else:
        import h5py

        with h5py.File(dest) as f:
            got = f["conv"][rows]
    assert np.array_equal(got, np.concatenate([_rows(i, i + 1) for i in rows]))


LOAD_ARRAY_CHILD = """
import json, sys
import numpy, pyarrow.parquet, savedeep.data.output
pyarrow.set_cpu_count(1)  # one reader thread: see the module's text
pyarrow.set_io_thread_count(1)
def status(key):  # KiB
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1])
before = status("VmRSS:")
a = savedeep.data.output.load_array(sys.argv[1], "conv")
rows = [0, 15, 16, 399, 400, 777, a.shape[0] - 1]
numpy.save(sys.argv[2], a[rows])
print(json.dumps({"before": before * 1024, "peak": status("VmHWM:") * 1024, "shape": list(a.shape)}))
"""


def test_load_array_holds_the_blob_once(big_output, tmp_path) -> None:
    # load_array's result is the whole blob, so it needs that much; reading every shard and then
    # concatenating held it twice (issue 30: 328 MiB for 157 MB in benchmarks/bench_scale.py).
    r = subprocess.run(
        [sys.executable, "-c", LOAD_ARRAY_CHILD, str(big_output), str(tmp_path / "rows.npy")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    mem = json.loads(r.stdout.splitlines()[-1])
    size = N * int(np.prod(SHAPE)) * 4
    grew = mem["peak"] - mem["before"]
    assert mem["shape"] == [N, *SHAPE]
    assert size <= grew < size + 64 * 2**20, f"{grew / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB blob"
    rows = [0, 15, 16, 399, 400, 777, N - 1]
    assert np.array_equal(np.load(tmp_path / "rows.npy"), np.concatenate([_rows(i, i + 1) for i in rows]))
