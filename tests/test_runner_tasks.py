"""Tasks of one output (``run --task K/N``) and ``merge``, without a scheduler (tests/test_runner_slurm.py has a real one).

Bugs these are for:
- a split that depends on anything but (shard plan, K, N), or that loses or doubles a
  shard: the merged rows differ from a single run's;
- K read from the wrong variable, SGE/LSF's 1-based index taken as is, or N read from
  SLURM_ARRAY_TASK_COUNT (resubmitting some indices would change the split);
- a merge that writes a complete-looking output while shards are missing, or that
  does not say which array indices to resubmit;
- a task of another config (or another N) allowed to write into the same output;
- a task deleting another task's shard in progress when it shuts down (a whole run
  deletes every ``.part-*.inprogress`` it finds);
- a rerun task recomputing the shards it had finished;
- task records that confuse Parquet readers of the directory (Dask) before merge.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import savedeep
from savedeep.cli import main
from savedeep.errors import ConfigError, OutputError
from savedeep.runner.lock import LockedError, OutputLock
from savedeep.runner.tasks import TaskSpec, owner, parse_task, task_from_env
from savedeep.runner.validate import validate

from conftest import copy_photos, make_bad_images

pytestmark = pytest.mark.slow

BLOBS = ["fc7", "prob"]
NAMES = ("cat.jpg", "cat_gray.jpg", "fish-bike.jpg", "astronaut.png", "coffee.png")


# --------------------------------------------------------------------------- the split and the index


def test_every_shard_belongs_to_exactly_one_task():
    for n in range(1, 7):
        for shards in (1, 5, 11):
            owners = [[k for k in range(n) if TaskSpec(k, n).owns(s)] for s in range(shards)]
            assert all(len(o) == 1 and o[0] == owner(s, n) for s, o in enumerate(owners)), (n, shards)


@pytest.mark.parametrize(
    "env,count,k",
    [
        ({"SLURM_ARRAY_TASK_ID": "2"}, 3, 2),
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "2"}, 4, 3),  # resubmitted: N stays 4
        ({"PBS_ARRAY_INDEX": "0"}, 2, 0),
        ({"SGE_TASK_ID": "1"}, 2, 0),  # SGE starts at 1
        ({"SGE_TASK_ID": "undefined", "LSB_JOBINDEX": "4"}, 4, 3),  # LSF starts at 1
        ({"LSB_JOBINDEX": "0", "SLURM_ARRAY_TASK_ID": "1"}, 2, 1),
    ],
)
def test_task_index_from_the_scheduler(env, count, k):
    t = task_from_env(count, env)
    assert (t.index, t.count) == (k, count)
    assert next(v for v in ("SLURM_ARRAY_TASK_ID", "PBS_ARRAY_INDEX", "SGE_TASK_ID", "LSB_JOBINDEX") if v in t.source)


def test_task_index_refusals():
    with pytest.raises(ConfigError, match="not an array job"):
        task_from_env(3, {"SLURM_ARRAY_TASK_COUNT": "3"})
    with pytest.raises(ConfigError, match=r"SLURM_ARRAY_TASK_ID=3 gives task 3, not in 0..2.*--array=0-2"):
        task_from_env(3, {"SLURM_ARRAY_TASK_ID": "3"})
    with pytest.raises(ConfigError, match=r"SGE_TASK_ID=4 .*--array=1-3"):
        task_from_env(3, {"SGE_TASK_ID": "4"})
    assert parse_task(" 1 / 3 ") == TaskSpec(1, 3, "--task")
    for bad in ("3/3", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError, match="--task"):
            parse_task(bad)


# --------------------------------------------------------------------------- tasks and merge


@pytest.fixture(scope="module")
def images(photos, tmp_path_factory) -> Path:
    d = copy_photos(photos, tmp_path_factory.mktemp("task_imgs"), NAMES)
    bad = make_bad_images(d, d / "cat.jpg")
    for name in list(bad)[1:]:  # one failure is enough to see the failures merged
        (d / name).unlink()
    return d


def _config(model: Path, images: Path, out: Path, **kw):
    keys = dict(
        model=model,
        images=images,
        output=out,
        blobs=BLOBS,
        gpus="cpu",
        batch_size=1,
        shard_size=1,
        producers=1,
        cpu_consumers=1,
        consumer_threads=1,
    )  # one forward configuration: rows compared bit for bit
    keys.update(kw)
    return savedeep.load_config(None, **keys)


@pytest.fixture(scope="module")
def reference(caffenet_dir, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("task_ref") / "acts.pk"
    savedeep.run(_config(caffenet_dir, images, out))
    return out


def _same_output(got: Path, want: Path) -> None:
    a, b = savedeep.load(got), savedeep.load(want)
    assert list(a["image"]) == list(b["image"]) and len(set(a["image"])) == len(a)
    for blob in BLOBS:
        assert np.array_equal(np.stack(a[blob]), np.stack(b[blob])), blob
    import pandas as pd

    # the failures table, combined by merge from the tasks' records
    ta = pd.read_parquet(got.with_name("acts.failures.parquet"))
    tb = pd.read_parquet(want.with_name("acts.failures.parquet"))
    assert ta.sort_values("image").values.tolist() == tb.sort_values("image").values.tolist() and len(tb) == 1


def _run_task(cfg, k: int, n: int):
    return savedeep.run(cfg, task=f"{k}/{n}")


@pytest.mark.parametrize("n", [3, 8])
def test_tasks_then_merge_equal_one_run(caffenet_dir, images, reference, tmp_path, n):
    """Any N (8 > the 6 shards: two tasks have nothing to do) gives the rows of a single run."""
    import dask.dataframe as dd

    out = tmp_path / "acts.pk"
    cfg = _config(caffenet_dir, images, out, report=n == 3)  # the report asked for: written by the merge
    for k in reversed(range(n)):
        _run_task(cfg, k, n)
    pq_dir = out.with_suffix(".parquet")
    assert not (pq_dir / "_manifest.json").exists() and not out.exists()
    assert not out.with_name("acts.failures.parquet").exists()
    assert sorted(p.name for p in pq_dir.glob("_task-*.json")) == [f"_task-{k:05d}.json" for k in range(n)]
    # Before the merge the directory is already one Parquet table: the task records are skipped by readers.
    df = dd.read_parquet(pq_dir).compute(scheduler="synchronous").sort_values("image")
    want = savedeep.load(reference)
    assert list(df["image"]) == list(want["image"])
    assert np.array_equal(np.stack([np.asarray(v, dtype=np.float32) for v in df["prob"]]), np.stack(want["prob"]))

    assert not out.with_name("acts.report.html").exists()  # no task writes it: a task holds a share of the rows
    assert main(["merge", str(out), "-q"]) == 0
    _same_output(out, reference)
    assert out.with_name("acts.report.html").is_file() == (n == 3)
    m = json.loads((pq_dir / "_manifest.json").read_text())
    assert m["complete"] and [t["index"] for t in m["tasks"]] == list(range(n))
    assert all(t["attempts"][-1]["status"] == "done" for t in m["tasks"])
    before = sorted((p.name, p.stat().st_mtime_ns) for p in pq_dir.iterdir())
    with pytest.raises(OutputError, match=r"task 0 of \d refused: .*acts.pk exists"):
        _run_task(cfg, 0, n)  # a task requeued after the merge: the merged output is left as it is
    assert sorted((p.name, p.stat().st_mtime_ns) for p in pq_dir.iterdir()) == before


def test_merge_names_what_is_missing_writes_nothing_then_completes(caffenet_dir, images, reference, tmp_path, capsys):
    out = tmp_path / "acts.pk"
    cfg = _config(caffenet_dir, images, out)
    _run_task(cfg, 0, 3)
    _run_task(cfg, 2, 3)
    pq_dir = out.with_suffix(".parquet")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["merge", str(out)]) == 5
    err = capsys.readouterr().err
    # 6 shards: task 1 of 3 owns shards 1 and 4
    assert "2 of 6 shards are missing" in err and "1 (images 1-1), 4 (images 4-4)" in err, err
    assert "task(s) 1 of 3" in err and "--array=1 " in err and "Nothing was written" in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert not (pq_dir / "_manifest.json").exists() and not out.exists()
    _run_task(cfg, 1, 3)
    assert main(["merge", str(out)]) == 0
    _same_output(out, reference)


def test_task_of_another_run_is_refused_and_writes_nothing(caffenet_dir, images, tmp_path):
    out = tmp_path / "acts.pk"
    _run_task(_config(caffenet_dir, images, out), 0, 3)
    pq_dir = out.with_suffix(".parquet")
    before = {p.name: p.stat().st_mtime_ns for p in pq_dir.iterdir()}
    with pytest.raises(OutputError, match=r"task 1 of 3 refused: .*_task-00000.json .* config keys blobs"):
        _run_task(_config(caffenet_dir, images, out, blobs=["fc6"]), 1, 3)
    # validate --task gives the same refusal before a job is submitted, and the task's share when it fits
    with pytest.raises(OutputError, match=r"task 1 of 3 refused: .*_task-00000.json .* config keys blobs"):
        validate(_config(caffenet_dir, images, out, blobs=["fc6"]), task="1/3")
    assert "task 1 of 3: 2 shard(s), 2 image(s); 0 of them finished and kept, 2 to compute" in validate(
        _config(caffenet_dir, images, out), task="1/3"
    )
    with pytest.raises(OutputError, match=r"the number of tasks \(3 against 2\)"):
        _run_task(_config(caffenet_dir, images, out), 1, 2)
    assert {p.name: p.stat().st_mtime_ns for p in pq_dir.iterdir()} == before
    assert not list(tmp_path.glob(".acts.task-*.lock"))


def test_merge_waits_for_running_tasks(caffenet_dir, images, tmp_path):
    out = tmp_path / "acts.pk"
    cfg = _config(caffenet_dir, images, out)
    for k in range(2):
        _run_task(cfg, k, 2)
    with OutputLock(out, task=1):  # task 1 still running (requeued, say)
        with pytest.raises(LockedError, match=r"in use by another savedeep run.*\.acts\.task-1\.lock"):
            savedeep.merge(out)
    assert not (out.with_suffix(".parquet") / "_manifest.json").exists()
    savedeep.merge(out)


def test_a_task_leaves_the_other_tasks_files_alone_and_a_rerun_keeps_its_shards(caffenet_dir, images, tmp_path):
    out = tmp_path / "acts.pk"
    cfg = _config(caffenet_dir, images, out)
    pq_dir = out.with_suffix(".parquet")
    pq_dir.mkdir()
    theirs = pq_dir / ".part-00001.parquet.inprogress"  # task 1 of 2 is writing shard 1
    theirs.write_bytes(b"task 1's shard, half written")
    _run_task(cfg, 0, 2)
    assert theirs.read_bytes() == b"task 1's shard, half written"
    mine = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in pq_dir.glob("part-*.parquet")}
    assert sorted(mine) == ["part-00000.parquet", "part-00002.parquet", "part-00004.parquet"]
    result = _run_task(cfg, 0, 2)  # requeued after it finished: nothing to compute again
    assert result.shards_kept == 3 and result.shards_done == 0
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in pq_dir.glob("part-*.parquet")} == mine
    record = json.loads((pq_dir / "_task-00000.json").read_text())
    assert [a["status"] for a in record["attempts"]] == ["done", "done"]
    assert theirs.read_bytes() == b"task 1's shard, half written"  # the rerun's tidying left it too


def test_a_task_requeued_onto_another_node_breaks_its_own_old_lock(caffenet_dir, images, tmp_path, monkeypatch):
    """Its first instance died with its node, leaving its lock; the same job id may take it, nothing else may."""
    out = tmp_path / "acts.pk"
    cfg = _config(caffenet_dir, images, out)
    lock = out.with_name(".acts.task-1.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(
        json.dumps(
            {"host": "node-that-died", "pid": 4242, "since": "2026-11-29 01:00:00 UTC", "task": 1, "job_id": "77_1"}
        )
    )
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "78")  # another job: it cannot know whether 77_1 still runs
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    with pytest.raises(LockedError, match=r"pid 4242 on host node-that-died.*--break-lock"):
        _run_task(cfg, 1, 2)
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")  # the same job, requeued
    result = _run_task(cfg, 1, 2)
    assert result.rows + result.failures == 3 and not lock.exists()


def test_slurm_scripts_are_complete_and_a_bad_config_writes_none(caffenet_dir, images, tmp_path, monkeypatch, capsys):
    """What the scripts must hold for a task to run under slurmd from any directory, and be resubmitted by index."""
    monkeypatch.chdir(tmp_path)
    args = [
        "slurm",
        "-m",
        str(caffenet_dir),
        "-i",
        str(images),
        "-o",
        "out/acts.pk",
        "-b",
        "fc7",
        "--tasks",
        "3",
        "--gpus-per-task",
        "1",
        "--cpus-per-task",
        "4",
        "--mem",
        "8G",
        "--time",
        "1:00:00",
        "--partition",
        "gpu",
        "--array-limit",
        "2",
        "--sbatch-arg=--account=lab",
        "--setup",
        "module load cuda",
    ]
    assert main(args) == 0
    d = tmp_path / "out" / "acts.slurm"
    array, merge = (d / "array.sh").read_text(), (d / "merge.sh").read_text()
    for line in (
        "#SBATCH --array=0-2%2",
        f"#SBATCH --output={d}/logs/%A_%a.out",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "#SBATCH --gpus-per-task=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=8G",
        "#SBATCH --time=1:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "module load cuda",
        f"cd {tmp_path}",
    ):
        assert any(ln.startswith(line) for ln in array.splitlines()), line
    run_line = array.splitlines()[-1]
    assert run_line.startswith("exec $SAVEDEEP run ") and run_line.endswith("--tasks 3 --no-progress"), run_line
    assert f"--output {tmp_path / 'out' / 'acts.pk'}" in run_line and f"--model {caffenet_dir}" in run_line
    exe = next(ln for ln in array.splitlines() if ln.startswith("SAVEDEEP="))
    assert Path(exe.split("=", 1)[1].split()[0]).is_absolute()
    assert merge.splitlines()[-1] == f"exec $SAVEDEEP merge {tmp_path / 'out' / 'acts.pk'}"
    # every #SBATCH line comes before the first command, or sbatch ignores it
    lines = array.splitlines()
    first_command = next(i for i, ln in enumerate(lines) if ln and not ln.startswith("#"))
    assert max(i for i, ln in enumerate(lines) if ln.startswith("#SBATCH")) < first_command
    capsys.readouterr()
    assert (
        main(
            [
                "slurm",
                "-m",
                str(caffenet_dir),
                "-i",
                str(images),
                "-o",
                "bad/acts.pk",
                "-b",
                "fc7",
                "--tasks",
                "3",
                "--batch-size",
                "0",
            ]
        )
        == 2
    )
    assert "batch_size" in capsys.readouterr().err and not (tmp_path / "bad").exists()
