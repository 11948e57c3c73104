"""Faults, interruption and resume: each scenario runs `savedeep run` in a subprocess with a hard timeout.

Every scenario checks the same things afterwards: the exit code and a message naming
the failed role; no process of the run and no shared-memory segment left; no shard
or pickle that looks complete but is not; and a `--resume` that completes the output
with every row exactly once, equal to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import savedeep
from savedeep.data.output import read_manifest

pytestmark = pytest.mark.slow

TIMEOUT_S = 240
BLOBS = "conv1,fc7"


@pytest.fixture(scope="module")
def images(photos, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fault_imgs")
    for p in photos[:12]:
        shutil.copyfile(p, d / p.name)
    return d


def _cmd(model: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "savedeep",
        "run",
        "-m",
        str(model),
        "-i",
        str(images),
        "-o",
        str(out),
        "-b",
        BLOBS,
        "--gpus",
        "cpu",
        "--producers",
        "2",
        "--cpu-consumers",
        "2",
        "--batch-size",
        "2",
        "--shard-size",
        "2",
        "--no-progress",
        *extra,
    ]


def _env(tag: str, fault: str | None = None) -> dict[str, str]:
    env = dict(os.environ, SAVEDEEP_TEST_TAG=tag, OMP_NUM_THREADS="1")
    env.pop("SAVEDEEP_FAULT", None)
    if fault:
        env["SAVEDEEP_FAULT"] = fault
    return env


def _tagged_pids(tag: str) -> list[int]:
    """Every live process whose environment carries our tag (the run and all its workers)."""
    needle = f"SAVEDEEP_TEST_TAG={tag}".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes()
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if needle in env.split(b"\0") and stat.split(") ", 1)[1][0] != "Z":
            pids.append(int(d.name))
    return pids


def _assert_clean(tag: str, parent_pid: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        left = _tagged_pids(tag)
        shm = [n for n in os.listdir("/dev/shm") if n.startswith(f"savedeep_{parent_pid}_")]
        if not left and not shm:
            return
        time.sleep(0.2)
    raise AssertionError(f"left behind: processes {left}, shared memory {shm}")


def _assert_nothing_false_looking(out: Path) -> None:
    d = out.with_name(out.stem + ".parquet")
    assert not out.exists(), "a pickle was written by a run that did not complete"
    assert not list(d.glob(".part-*")), "an unfinished shard was left"
    manifest = read_manifest(d)  # the manifest as every reader sees it: its journal folded in
    assert manifest is not None and manifest["complete"] is False
    listed = {s["file"] for s in manifest["shards"] if s["complete"]}
    on_disk = {f.name for f in d.glob("part-*.parquet")}
    assert on_disk == listed  # every shard file is complete and listed; nothing else
    for f in on_disk:
        pq.read_table(d / f)  # and readable


def _launch(cmd: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw
    )


def _finish(p: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = p.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGUSR1)  # every process of the run prints its stacks (savedeep.runner.ui)
        time.sleep(2.0)
        os.killpg(p.pid, signal.SIGKILL)
        _, err = p.communicate()
        raise AssertionError(
            f"run hung for {TIMEOUT_S} s; its stderr (with the stacks) ended with:\n{err[-12000:]}"
        ) from None
    # The parent unlinks every segment it made, on every path out. Where it did not, the
    # resource tracker unlinks them when the parent exits and says so: the segments are then
    # gone by the time the test looks, so this line is the only trace of the leak.
    assert "leaked shared_memory" not in err, err[-3000:]
    return p.returncode, err


@pytest.fixture(scope="module")
def reference(caffenet_dir, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "acts.pk"
    p = _launch(_cmd(caffenet_dir, images, out), _env(uuid.uuid4().hex))
    rc, err = _finish(p)
    assert rc == 0, err
    return savedeep.load(out)


def _resume_and_compare(cmd: list[str], out: Path, reference, env=None) -> str:
    tag = uuid.uuid4().hex
    p = _launch(cmd + ["--resume"], env or _env(tag))
    rc, err = _finish(p)
    assert rc == 0, err
    df = savedeep.load(out)
    assert list(df["image"]) == list(reference["image"])  # every row exactly once, in order
    for b in BLOBS.split(","):
        assert np.array_equal(np.stack(df[b]), np.stack(reference[b])), b
    return err


def _wait_for_shards(out: Path, n: int, p: subprocess.Popen) -> None:
    d = out.with_name(out.stem + ".parquet")
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        assert p.poll() is None, p.communicate()[1]
        try:
            if sum(s["complete"] for s in read_manifest(d)["shards"]) >= n:  # type: ignore[index]
                return
        except (OSError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.1)
    raise AssertionError("no progress")


@pytest.mark.parametrize(
    "role,writers,holding",
    [
        ("producer", 1, ""),
        ("consumer", 1, ""),
        ("writer", 1, ""),
        ("writer", 2, ""),
        # A SIGKILL that lands while the worker's queue thread is inside a send leaves that
        # queue's write lock held forever (a process-shared semaphore has no owner to release
        # it). The parent used to block on such a lock while stopping: the log listener's
        # stop put its sentinel through the logs queue, and the stop flag was an Event with
        # a lock; the run then hung before unlinking its shared memory.
        ("consumer", 1, "logs"),
        ("consumer", 1, "stop"),
    ],
)
def test_sigkill_of_a_worker(role, writers, holding, caffenet_dir, images, reference, tmp_path):
    out, tag = tmp_path / "acts.pk", uuid.uuid4().hex
    cmd = _cmd(caffenet_dir, images, out, "--writers", str(writers))
    p = _launch(cmd, _env(tag, f"role={role},batch=3,action=kill" + (f",holding={holding}" if holding else "")))
    rc, err = _finish(p)
    assert rc == 6, err
    assert f"{role} " in err and "killed by signal 9 (SIGKILL)" in err and "--resume" in err
    _assert_clean(tag, p.pid)
    _assert_nothing_false_looking(out)
    _resume_and_compare(cmd, out, reference)


@pytest.mark.parametrize("role", ["producer", "consumer"])
def test_exception_in_decoding_or_forward(role, caffenet_dir, images, reference, tmp_path):
    out, tag = tmp_path / "acts.pk", uuid.uuid4().hex
    cmd = _cmd(caffenet_dir, images, out)
    p = _launch(cmd, _env(tag, f"role={role},batch=3,action=raise"))
    rc, err = _finish(p)
    assert rc == 6, err
    assert f"{role} " in err and "failed on batch 3" in err and "InjectedFault" in err
    assert "Traceback" in err  # the worker's own traceback reaches the user
    _assert_clean(tag, p.pid)
    _assert_nothing_false_looking(out)
    _resume_and_compare(cmd, out, reference)


_SCRIPT = """
import sys
{prelude}
import savedeep

def main():
    savedeep.run(None, model=sys.argv[1], images=sys.argv[2], output=sys.argv[3], blobs=["fc7"], gpus="cpu",
                 producers=2, batch_size=2, shard_size=2, overwrite=True)

{call}
"""


def _run_script(tmp_path: Path, tag: str, caffenet_dir: Path, images: Path, prelude: str, call: str):
    script = tmp_path / "user_script.py"
    script.write_text(_SCRIPT.format(prelude=prelude, call=call))
    out = tmp_path / "out" / "acts.pk"
    p = _launch([sys.executable, str(script), str(caffenet_dir), str(images), str(out)], _env(tag), cwd=tmp_path)
    rc, err = _finish(p)
    return p, rc, err, out


def test_a_worker_dying_while_starting_does_not_hang_the_run(caffenet_dir, images, tmp_path):
    # Each worker's start-up arguments are larger than a pipe holds (the mean image is
    # 786 KB); a child that exits before reading them used to block the parent forever.
    tag = uuid.uuid4().hex
    p, rc, err, out = _run_script(
        tmp_path,
        tag,
        caffenet_dir,
        images,
        prelude='if __name__ == "__mp_main__":\n    sys.exit(3)',
        call='if __name__ == "__main__":\n    main()',
    )
    assert rc == 1, err
    assert "WorkerError" in err and "exited with code 3 without reporting an error" in err
    _assert_clean(tag, p.pid)
    assert not out.exists()


def test_a_script_without_a_main_guard_gets_told_the_fix(caffenet_dir, images, tmp_path):
    tag = uuid.uuid4().hex
    p, rc, err, out = _run_script(tmp_path, tag, caffenet_dir, images, prelude="", call="main()")
    assert rc == 1, err
    assert "was called while a savedeep worker process was importing" in err
    assert str(tmp_path / "user_script.py") in err and 'if __name__ == "__main__":' in err
    _assert_clean(tag, p.pid)
    assert not out.exists()


def _small_shm_cmd(size: str, cmd: list[str]) -> list[str]:
    """``cmd`` in a private mount namespace whose /dev/shm is a tmpfs of ``size`` (as in a container)."""
    import shlex

    return ["unshare", "--mount", "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs /dev/shm && exec {shlex.join(cmd)}"]


@pytest.fixture(scope="module")
def private_shm():
    probe = subprocess.run(_small_shm_cmd("1m", ["true"]), capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private /dev/shm here (needs root and unshare): {probe.stderr.strip()}")


def test_a_small_dev_shm_shrinks_the_rings_and_the_output_is_the_same(
    private_shm, caffenet_dir, images, reference, tmp_path
):
    # The comfortable rings need 21.6 MB here (6 input slots of 1.2 MB, 6 output slots of 2.4 MB)
    # and before this was handled, workers died of SIGBUS in a 16 MB /dev/shm.
    out, tag = tmp_path / "acts.pk", uuid.uuid4().hex
    p = _launch(_small_shm_cmd("16m", _cmd(caffenet_dir, images, out)), _env(tag))
    rc, err = _finish(p)
    assert rc == 0, err
    assert "/dev/shm has 16.0 MiB free: the rings hold" in err and "--shm-size" in err
    _assert_clean(tag, p.pid)
    df = savedeep.load(out)
    assert list(df["image"]) == list(reference["image"])
    for b in BLOBS.split(","):
        assert np.array_equal(np.stack(df[b]), np.stack(reference[b])), b


def test_a_dev_shm_too_small_for_one_batch_is_a_clear_error(private_shm, caffenet_dir, images, tmp_path):
    out, tag = tmp_path / "acts.pk", uuid.uuid4().hex
    p = _launch(_small_shm_cmd("6m", _cmd(caffenet_dir, images, out)), _env(tag))
    rc, err = _finish(p)
    assert rc == 2, err
    assert re.search(
        r"/dev/shm has 6\.0 MiB free, and this run needs at least 3\.\d MiB of shared memory "
        r"\(one input batch of 1\.2 MiB and one output batch of 2\.2 MiB\)",
        err,
    ), err
    assert "batch_size" in err and "--shm-size" in err and "Traceback" not in err
    _assert_clean(tag, p.pid)
    assert not out.exists()


def test_sigkill_of_the_parent(caffenet_dir, images, reference, tmp_path):
    out, tag = tmp_path / "acts.pk", uuid.uuid4().hex
    cmd = _cmd(caffenet_dir, images, out)
    p = _launch(cmd, _env(tag, "role=writer,batch=3,action=sleep,seconds=120"))
    _wait_for_shards(out, 3, p)
    p.kill()
    p.communicate(timeout=TIMEOUT_S)
    _assert_clean(tag, p.pid)  # workers notice the dead parent; the tracker unlinks the rings
    _assert_nothing_false_looking(out)
    lock = out.with_name(".acts.lock")
    assert json.loads(lock.read_text())["pid"] == p.pid  # the killed run's lock is still there: stale
    err = _resume_and_compare(cmd, out, reference)
    assert f"breaking a stale lock: pid {p.pid} on host {socket.gethostname()}" in err
    assert not lock.exists()


def test_a_crash_of_the_parent_between_a_journal_line_and_the_manifest_rewrite(
    caffenet_dir, images, reference, tmp_path
):
    # Recording a shard appends one fsynced line to the manifest's journal; the manifest itself is rewritten
    # later (savedeep/runner/manifest.py). The parent dies just after shard 2's line: the file lists none of
    # the shards, the journal lists 0-2, and every reader and --resume must see them.
    out, tag = tmp_path / "acts.pk", uuid.uuid4().hex
    cmd = _cmd(caffenet_dir, images, out, "--writers", "1")
    p = _launch(cmd, _env(tag, "role=manifest,batch=2,action=kill"))
    _, err = p.communicate(timeout=TIMEOUT_S)  # the parent died: the resource tracker unlinks the rings
    assert p.returncode == -signal.SIGKILL, err
    _assert_clean(tag, p.pid)
    d = out.with_name(out.stem + ".parquet")
    assert not any(s["complete"] for s in json.loads((d / "_manifest.json").read_text())["shards"])
    manifest = read_manifest(d)
    assert manifest is not None and not manifest["complete"] and not out.exists()
    listed = {s["index"] for s in manifest["shards"] if s["complete"]}
    assert listed == {0, 1, 2}  # one writer: the shards are recorded in order
    assert {f"part-0000{k}.parquet" for k in listed} <= {f.name for f in d.glob("part-*.parquet")}
    partial = savedeep.load(out.with_name(out.stem + ".parquet"))  # the complete shards only
    assert list(partial["image"]) == list(reference["image"])[:6]
    err = _resume_and_compare(cmd, out, reference)
    assert "had not been reported: [0" not in err  # kept from the journal, not found again on disk
    assert not (d / "_manifest.journal.jsonl").exists()  # a finished output: its manifest alone


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupt_exits_130_and_resumes(how, caffenet_dir, images, reference, tmp_path):
    out, tag = tmp_path / "acts.pk", uuid.uuid4().hex
    cmd = _cmd(caffenet_dir, images, out)
    p = _launch(cmd, _env(tag, "role=writer,batch=3,action=sleep,seconds=120"))
    _wait_for_shards(out, 3, p)
    if how == "ctrl-c":
        os.killpg(p.pid, signal.SIGINT)  # a terminal sends it to the whole process group
    else:
        p.send_signal(signal.SIGTERM)
    rc, err = _finish(p)
    assert rc == 130, err
    assert "--resume" in err
    _assert_clean(tag, p.pid)
    _assert_nothing_false_looking(out)
    _resume_and_compare(cmd, out, reference)


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def test_disk_full_then_resume(caffenet_dir, images, reference, tmp_path):
    disk = tmp_path / "disk"
    mounted = _mount_tmpfs(disk, "3m")
    try:
        out, tag = disk / "acts.pk", uuid.uuid4().hex
        # --no-space-check: the preflight would refuse the 3 MiB disk before any work (tests/test_runner_sizes.py);
        # this test is about a disk that fills up while the run writes.
        cmd = _cmd(caffenet_dir, images, out, "--no-space-check")
        if mounted:
            p = _launch(cmd, _env(tag))
        else:  # no tmpfs here: a per-file size limit fails the first shard that outgrows it

            def limit():
                resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, 1_500_000))

            p = _launch(cmd, _env(tag), preexec_fn=limit)
        rc, err = _finish(p)
        assert rc == 5, err
        assert "cannot write" in err and "--resume" in err
        _assert_clean(tag, p.pid)
        d = disk / "acts.parquet"
        assert not out.exists() and not list(d.glob(".part-*"))
        manifest = read_manifest(d)
        assert manifest is not None
        assert {s["file"] for s in manifest["shards"] if s["complete"]} == {f.name for f in d.glob("part-*.parquet")}
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
        _resume_and_compare(cmd, out, reference)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)])


def test_resume_refuses_changed_inputs(caffenet_dir, images, tmp_path):
    out = tmp_path / "acts.pk"
    cmd = _cmd(caffenet_dir, images, out)
    p = _launch(cmd, _env(uuid.uuid4().hex, "role=consumer,batch=2,action=raise"))
    assert _finish(p)[0] == 6
    # another blob list
    changed = [c if c != BLOBS else "fc7" for c in cmd]
    rc, err = _finish(_launch(changed + ["--resume"], _env(uuid.uuid4().hex)))
    assert rc == 5 and "cannot resume" in err and "blobs" in err
    # another image list
    more = tmp_path / "more_images"
    shutil.copytree(images, more)
    shutil.copyfile(next(images.iterdir()), more / "zz_extra.jpg")
    moved = [str(more) if c == str(images) else c for c in cmd]
    rc, err = _finish(_launch(moved + ["--resume"], _env(uuid.uuid4().hex)))
    assert rc == 5 and "image list" in err and "12 images then, 13 now" in err


def _files(root: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``root``, with the files' bytes."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def test_sigusr1_prints_where_every_process_is_and_the_run_goes_on(caffenet_dir, images, reference, tmp_path):
    # A run that seems stuck: `kill -USR1 PID` of the parent prints every process's stacks
    # (the parent's, then each worker's) and changes nothing else. Before, SIGUSR1 ended the run.
    out, tag, go = tmp_path / "out" / "acts.pk", uuid.uuid4().hex, tmp_path / "go"
    cmd = _cmd(caffenet_dir, images, out)
    p = _launch(cmd, _env(tag, f"role=writer,batch=3,action=wait,file={go}"))
    try:
        _wait_for_shards(out, 3, p)  # the writer now waits at batch 3 until `go` exists
        os.kill(p.pid, signal.SIGUSR1)
        time.sleep(2.0)
        assert p.poll() is None
    finally:
        go.touch()
    rc, err = _finish(p)
    assert rc == 0, err
    assert "in _supervise" in err  # the parent's main thread
    assert "in maybe_fail" in err and "in _write" in err  # the writer, waiting where the fault holds it
    _assert_clean(tag, p.pid)
    df = savedeep.load(out)
    assert list(df["image"]) == list(reference["image"])


def test_a_second_run_on_a_busy_output_is_refused_and_the_first_completes(caffenet_dir, images, reference, tmp_path):
    # The same job started twice: the second one, plain, --overwrite or --resume, must
    # change nothing, and the first must finish as if it had been alone.
    out, tag, go = tmp_path / "out" / "acts.pk", uuid.uuid4().hex, tmp_path / "go"
    cmd = _cmd(caffenet_dir, images, out)
    p = _launch(cmd, _env(tag, f"role=writer,batch=3,action=wait,file={go}"))
    try:
        _wait_for_shards(out, 3, p)  # 3 shards written; the writer waits at batch 3 until `go` exists
        before = _files(out.parent)
        for mode in ([], ["--overwrite"], ["--resume"]):
            rc, err = _finish(_launch(cmd + mode, _env(uuid.uuid4().hex)))
            assert rc == 5, err
            errors = [line for line in err.splitlines() if "error" in line]
            assert len(errors) == 1 and "Traceback" not in err, err
            assert errors[0].startswith(
                f"savedeep: error: {out} is in use by another savedeep run: pid {p.pid} on "
                f"host {socket.gethostname()}, since "
            ), err
            assert f"(lock {out.with_name('.acts.lock')}); nothing was changed; " in errors[0]
            after = _files(out.parent)
            log = "acts.log"  # the first run may still log a line meanwhile
            assert after[log].startswith(before[log])
            assert {k: v for k, v in after.items() if k != log} == {k: v for k, v in before.items() if k != log}
    finally:
        go.touch()
    rc, err = _finish(p)
    assert rc == 0, err
    _assert_clean(tag, p.pid)
    df = savedeep.load(out)
    assert list(df["image"]) == list(reference["image"])
    for b in BLOBS.split(","):
        assert np.array_equal(np.stack(df[b]), np.stack(reference[b])), b
    assert not out.with_name(".acts.lock").exists()
