"""Job arrays on a real Slurm: a one-node cluster on this machine (tests/slurm_cluster.py), real photos, real tasks.

The four cases of issue 15, each through sbatch, scancel and scontrol as a user would:
- ``savedeep slurm --submit`` of 3 tasks, then the merge job after them: equal row
  for row to a single run;
- a task cancelled with scancel mid-run: merge names what is missing and the index
  to resubmit; ``sbatch --array=<that index>`` of the same script, then merge, completes it;
- two tasks of different configs into one output: the second is refused;
- a task whose node dies (SIGKILL of its whole process tree) is requeued
  (``scontrol requeue``) and resumes its own shards.

Bugs these are for: a generated script that does not run under slurmd (wrong
executable, environment, working directory), K not taken from the array index,
N taken from SLURM_ARRAY_TASK_COUNT (the resubmission of index 1 alone would then
split 1 way), a requeued task that recomputes or loses its finished shards or
is blocked by its dead attempt's lock, a merge job that runs before the tasks.

Needs root and Debian's slurmctld, slurmd, slurm-client and munge (scripts/setup.sh
installs them, as root); skipped only without root, and an error, not a skip, where root lacks them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import savedeep

from conftest import copy_photos
from slurm_cluster import SlurmCluster, missing_binaries

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

if os.geteuid() != 0:  # pragma: no cover - CI runs as root
    pytest.skip("a one-node Slurm needs root (its daemons run as root here)", allow_module_level=True)
# As root, scripts/setup.sh installs the Slurm packages: missing ones are a set-up defect, not a reason to skip
# (a silent skip here would hide the job-array tests in CI).
if missing_binaries():
    raise RuntimeError(
        f"the Slurm tests need {missing_binaries()}: run scripts/setup.sh as root (it installs "
        "slurmctld, slurmd, slurm-client and munge)"
    )

BLOBS = "pool,prob"
NAMES = ("cat.jpg", "cat_gray.jpg", "fish-bike.jpg", "astronaut.png", "coffee.png", "chelsea.png")
SAVEDEEP = str(Path(sys.executable).parent / "savedeep")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture(scope="module")
def images(photos, tmp_path_factory) -> Path:
    return copy_photos(photos, tmp_path_factory.mktemp("slurm_imgs"), NAMES)


def _flags(nsfw_dir: Path, images: Path, out: Path, blobs: str = BLOBS) -> list[str]:
    # 6 images, one per shard: task K of 3 owns shards K and K+3
    return [
        "-m",
        str(nsfw_dir),
        "-i",
        str(images),
        "-o",
        str(out),
        "-b",
        blobs,
        "--gpus",
        "cpu",
        "--batch-size",
        "1",
        "--shard-size",
        "1",
        "--producers",
        "1",
        # The same forward configuration (two consumers of one thread) in every run and task: rows are
        # compared bit for bit, and cpu_consumers auto gives a task with fewer batches fewer consumers of
        # more threads, which changes the float summation order (differences of ~1e-7).
        "--cpu-consumers",
        "2",
    ]


@pytest.fixture(scope="module")
def reference(nsfw_dir, images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slurm_ref") / "acts.pk"
    subprocess.run([SAVEDEEP, "run", *_flags(nsfw_dir, images, out), "--no-progress", "-q"], check=True)
    return out


def _same_rows(got: Path, want: Path) -> None:
    a, b = savedeep.load(got), savedeep.load(want)
    assert list(a["image"]) == list(b["image"]) == sorted(NAMES)  # every row exactly once
    for blob in BLOBS.split(","):
        assert np.array_equal(np.stack(a[blob]), np.stack(b[blob])), blob


def _scripts(cluster, nsfw_dir, images, out, *extra) -> tuple[Path, Path]:
    p = subprocess.run(
        [SAVEDEEP, "slurm", *_flags(nsfw_dir, images, out), "--tasks", "3", "--cpus-per-task", "1", *extra],
        env=cluster.env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    d = out.with_name("acts.slurm")
    return d / "array.sh", d / "merge.sh"


def _sbatch(cluster, *args, env: dict | None = None) -> str:
    p = subprocess.run(
        ["sbatch", "--parsable", *args], env={**cluster.env, **(env or {})}, capture_output=True, text=True, check=True
    )
    return p.stdout.strip().split(";")[0]


def _merge(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SAVEDEEP, "merge", str(out)], capture_output=True, text=True)


def _wait_for(
    cond, what: str, timeout: float = 180, cluster=None, job: str | None = None, log: Path | None = None
) -> None:
    """Wait for ``cond``; fail at once, with the task's log, if ``job`` ended first."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if (
            job is not None
            and cluster.states(job)
            and not any(s in ("PENDING", "RUNNING", "CONFIGURING") for s in cluster.states(job).values())
        ):
            text = log.read_text() if log is not None and log.exists() else ""
            pytest.fail(f"job {job} ended ({cluster.states(job)}) before {what}:\n{text}")
        time.sleep(0.2)


def test_submit_three_tasks_then_merge_equals_one_run(cluster, nsfw_dir, images, reference, tmp_path):
    out = tmp_path / "out" / "acts.pk"
    p = subprocess.run(
        [SAVEDEEP, "slurm", *_flags(nsfw_dir, images, out), "--tasks", "3", "--cpus-per-task", "1", "--submit"],
        env=cluster.env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("submitted array job"))
    array_job, merge_job = line.split()[3], line.split()[7]
    assert f"squeue -j {array_job},{merge_job}" in p.stdout
    states = cluster.wait_done(array_job)
    assert sorted(states) == [f"{array_job}_{k}" for k in range(3)] and set(states.values()) == {"COMPLETED"}, states
    assert cluster.wait_done(merge_job) == {merge_job: "COMPLETED"}
    _same_rows(out, reference)
    logs = sorted((out.with_name("acts.slurm") / "logs").iterdir())
    task_logs = [p for p in logs if not p.name.startswith("merge_")]
    assert len(task_logs) == 3
    for k in range(3):
        text = (out.with_name("acts.slurm") / "logs" / f"{array_job}_{k}.out").read_text()
        assert f"task {k} of 3 (the index from SLURM_ARRAY_TASK_ID)" in text, text
        record = json.loads((out.with_suffix(".parquet") / f"_task-{k:05d}.json").read_text())
        assert record["attempts"][-1]["job_id"] == f"{array_job}_{k}"


def _submit_with_task_1_stalled(cluster, array: Path, out: Path, tmp_path: Path) -> tuple[str, str]:
    """Submit tasks 0 and 2, and task 1, which writes its first shard (shard 1) and then stalls before its
    second (shard 4), still holding its lock; returns once it is there: (job of 0 and 2, job of 1)."""
    rest = _sbatch(cluster, "--array=0,2", str(array))
    job = _sbatch(
        cluster,
        "--array=1",
        str(array),
        env={"SAVEDEEP_FAULT": f"role=producer,batch=1,action=wait,file={tmp_path / 'never'}"},
    )
    shard, lock = out.with_suffix(".parquet") / "part-00001.parquet", out.with_name(".acts.task-1.lock")
    _wait_for(
        lambda: shard.exists() and lock.exists(),
        "task 1's first shard",
        cluster=cluster,
        job=job,
        log=array.parent / "logs" / f"{job}_1.out",
    )
    return rest, job


def test_cancelled_task_merge_names_it_then_resubmit_completes(cluster, nsfw_dir, images, reference, tmp_path):
    out = tmp_path / "acts.pk"
    array, merge_job = _scripts(cluster, nsfw_dir, images, out)
    pq_dir = out.with_suffix(".parquet")
    rest, stalled = _submit_with_task_1_stalled(cluster, array, out, tmp_path)
    cluster.cmd("scancel", f"{stalled}_1")
    assert cluster.wait_done(stalled) == {f"{stalled}_1": "CANCELLED"}
    assert set(cluster.wait_done(rest).values()) == {"COMPLETED"}
    m = _merge(out)
    assert m.returncode == 5, m.stderr
    assert "1 of 6 shards are missing or incomplete: 4 (images 4-4)" in m.stderr, m.stderr
    assert f"task(s) 1 of 3: resubmit those array indices (sbatch --array=1 {array}" in m.stderr, m.stderr
    assert not (pq_dir / "_manifest.json").exists() and not out.exists()
    again = _sbatch(cluster, "--array=1", str(array))  # the same script: N=3 is in it
    assert cluster.wait_done(again) == {f"{again}_1": "COMPLETED"}
    m = _merge(out)
    assert m.returncode == 0, m.stderr
    _same_rows(out, reference)


def test_tasks_of_two_configs_into_one_output_are_refused(cluster, nsfw_dir, images, tmp_path):
    out = tmp_path / "acts.pk"
    array, _ = _scripts(cluster, nsfw_dir, images, out)
    first = _sbatch(cluster, "--array=0", str(array))
    assert cluster.wait_done(first) == {f"{first}_0": "COMPLETED"}
    other_dir = tmp_path / "other"
    p = subprocess.run(
        [SAVEDEEP, "slurm", *_flags(nsfw_dir, images, out, blobs="prob"), "--tasks", "3", "--dir", str(other_dir)],
        env=cluster.env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    before = sorted(p.name for p in out.with_suffix(".parquet").iterdir())
    second = _sbatch(cluster, "--array=1", str(other_dir / "array.sh"))
    assert cluster.wait_done(second) == {f"{second}_1": "FAILED"}
    text = (other_dir / "logs" / f"{second}_1.out").read_text()
    assert "task 1 of 3 refused" in text and "config keys blobs" in text and "Nothing was changed" in text, text
    assert sorted(p.name for p in out.with_suffix(".parquet").iterdir()) == before


def _kill_tree(pid: int) -> None:
    """SIGKILL a task's savedeep and every worker at once, as a dying node would.

    Python's resource tracker, whose only job is to unlink what its dead parent
    left in /dev/shm, is spared: on a real node that memory dies with the node;
    here the machine lives on, and nothing else could tell which segments were left.
    """
    root = psutil.Process(pid)
    procs = [
        root,
        *(c for c in root.children(recursive=True) if not any("resource_tracker" in part for part in c.cmdline())),
    ]
    for p in procs:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)


def test_task_whose_node_dies_is_requeued_and_resumes(cluster, nsfw_dir, images, reference, tmp_path):
    out = tmp_path / "acts.pk"
    array, _ = _scripts(cluster, nsfw_dir, images, out)
    pq_dir = out.with_suffix(".parquet")
    rest, job = _submit_with_task_1_stalled(cluster, array, out, tmp_path)
    lock = out.with_name(".acts.task-1.lock")
    first = (pq_dir / "part-00001.parquet").stat()
    holder = json.loads(lock.read_text())["pid"]
    _kill_tree(holder)
    assert cluster.wait_done(job)[f"{job}_1"] == "FAILED"
    assert lock.exists()  # left by the dead attempt: stale, so the requeued one breaks it
    cluster.cmd("scontrol", "requeue", f"{job}_1")
    # Slurm makes a requeued job eligible only ~2 minutes later (its begin time); no need to wait here.
    cluster.cmd("scontrol", "update", f"JobId={job}_1", "StartTime=now")
    _wait_for(lambda: cluster.states(job).get(f"{job}_1") == "COMPLETED", "the requeued task")
    assert set(cluster.wait_done(rest).values()) == {"COMPLETED"}
    kept = (pq_dir / "part-00001.parquet").stat()
    assert (kept.st_ino, kept.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # resumed, not recomputed
    record = json.loads((pq_dir / "_task-00001.json").read_text())
    assert [a["status"] for a in record["attempts"]] == ["running", "done"]  # the first never ended
    log = (out.with_name("acts.slurm") / "logs" / f"{job}_1.out").read_text()
    assert log.count("task 1 of 3 (the index from SLURM_ARRAY_TASK_ID)") == 2, log  # --open-mode=append
    assert "breaking a stale lock" in log
    m = _merge(out)
    assert m.returncode == 0, m.stderr
    _same_rows(out, reference)
