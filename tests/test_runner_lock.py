"""The output lock (savedeep/runner/lock.py) held by real processes on real files: who holds it, when it is stale."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from savedeep.runner.lock import LockedError, OutputLock, held_locks, lock_path, process_start, read_holder

# A process that takes the lock of argv[1] (task argv[2] if given), says so, and holds it
# until its stdin closes.
_HOLDER = """
import os, sys, time
from savedeep.runner.lock import LockedError, OutputLock
task = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] != "-" else None
if len(sys.argv) > 3:  # start together: wait for the file argv[3]
    print("ready", flush=True)
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.001)
try:
    lock = OutputLock(sys.argv[1], task=task).acquire()
except LockedError as exc:
    print("refused", exc, flush=True)
    sys.exit(5)
print("held", flush=True)
sys.stdin.read()
lock.release()
"""


def _holder(out: Path, task: int | None = None) -> subprocess.Popen:
    """A real process holding the lock of ``out``; returns once it holds it."""
    p = _start_holder(out, task)
    line = p.stdout.readline()
    assert line == "held\n", line + p.communicate()[1]
    return p


def _start_holder(out: Path, task: int | None = None, go: Path | None = None) -> subprocess.Popen:
    args = [sys.executable, "-c", _HOLDER, str(out), "-" if task is None else str(task)]
    args += [str(go)] if go is not None else []
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _let_go(p: subprocess.Popen) -> None:
    p.communicate(timeout=60)
    assert p.returncode == 0


def _write_record(path: Path, **fields) -> bytes:
    rec = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": process_start(os.getpid()),
        "since": "2026-01-01 00:00:00 UTC",
        "fingerprint": "f" * 64,
        "task": None,
        **fields,
    }
    raw = json.dumps(rec).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return raw


def test_the_lock_is_a_hidden_file_beside_the_parquet_directory_recording_the_holder(tmp_path):
    out = tmp_path / "new" / "sub" / "acts.pk"
    with OutputLock(out, fingerprint="abc") as lock:
        assert lock.path == tmp_path / "new" / "sub" / ".acts.lock" == lock_path(out)
        rec = json.loads(lock.path.read_text())
        assert rec["host"] == socket.gethostname() and rec["pid"] == os.getpid()
        assert rec["pid_start"] == process_start(os.getpid()) and rec["fingerprint"] == "abc"
        assert rec["since"].endswith("UTC") and rec["task"] is None
        assert lock.owned()
        # only the lock file: no temporary name is left beside it
        assert sorted(p.name for p in lock.path.parent.iterdir()) == [".acts.lock"]
    assert not lock.path.exists()
    # the folders it had to make stayed empty: they go with the lock
    assert not (tmp_path / "new").exists()


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "acts.pk"
    p = _holder(out)
    try:
        before = lock_path(out).read_bytes()
        with pytest.raises(LockedError) as exc:
            OutputLock(out, break_lock=True).acquire()  # not even --break-lock takes it from a live local run
        msg = str(exc.value)
        assert exc.value.exit_code == 5 and "\n" not in msg
        assert f"pid {p.pid} on host {socket.gethostname()}, since " in msg and str(lock_path(out)) in msg
        assert f"kill {p.pid}" in msg and "nothing was changed" in msg
        assert lock_path(out).read_bytes() == before
    finally:
        _let_go(p)
    assert not lock_path(out).exists()
    with OutputLock(out):
        pass


def test_the_lock_of_a_killed_process_is_stale_and_taken(tmp_path, caplog):
    out = tmp_path / "acts.pk"
    p = _holder(out)
    p.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while read_holder(lock_path(out)).state() != "stale":  # a zombie until reaped: gone all the same
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        with caplog.at_level(logging.WARNING, logger="savedeep.runner.lock"), OutputLock(out) as lock:
            assert lock.owned()
        assert f"breaking a stale lock: pid {p.pid} on host {socket.gethostname()}" in caplog.text
    finally:
        p.communicate()


def test_a_recycled_pid_is_not_the_holder(tmp_path):
    # The pid of a live process, recorded with another start time: the pid was reused.
    out = tmp_path / "acts.pk"
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        start = process_start(other.pid)
        _write_record(lock_path(out), pid=other.pid, pid_start=start)
        with pytest.raises(LockedError, match=f"pid {other.pid} on host"):
            OutputLock(out).acquire()
        _write_record(lock_path(out), pid=other.pid, pid_start=start - 1)
        with OutputLock(out) as lock:
            assert lock.owned()
    finally:
        other.communicate()


def test_a_lock_from_another_host_needs_break_lock(tmp_path, caplog):
    out = tmp_path / "acts.pk"
    raw = _write_record(lock_path(out), host="node-17.cluster", pid=4242)
    with pytest.raises(LockedError) as exc:
        OutputLock(out).acquire()
    msg = str(exc.value)
    assert "pid 4242 on host node-17.cluster, since 2026-01-01 00:00:00 UTC" in msg and "--break-lock" in msg
    assert lock_path(out).read_bytes() == raw
    with caplog.at_level(logging.WARNING, logger="savedeep.runner.lock"), OutputLock(out, break_lock=True) as lock:
        assert lock.owned()
    assert "breaking the lock of pid 4242 on host node-17.cluster" in caplog.text
    assert not lock_path(out).exists()


def test_a_holder_in_another_pid_namespace_is_not_judged_from_here(tmp_path):
    # A container on this host may carry the host's name; its pids are not ours: a pid
    # that does not exist here may be alive there.
    out = tmp_path / "acts.pk"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_record(lock_path(out), pid=dead.pid, pid_start=None, pid_ns="pid:[1]")
    with pytest.raises(LockedError, match=f"pid {dead.pid} on host .*--break-lock"):
        OutputLock(out).acquire()
    with OutputLock(out, break_lock=True) as lock:
        assert lock.owned()


def test_a_lock_after_a_reboot_is_stale(tmp_path):
    if not Path("/proc/sys/kernel/random/boot_id").exists():
        pytest.skip("no boot id on this system")
    out = tmp_path / "acts.pk"
    _write_record(lock_path(out), boot_id="00000000-0000-0000-0000-000000000000")
    with OutputLock(out) as lock:  # our own pid, but from before the machine rebooted
        assert lock.owned()


def test_an_unreadable_lock_is_held_until_broken(tmp_path):
    out = tmp_path / "acts.pk"
    lock_path(out).write_bytes(b"")
    with pytest.raises(LockedError, match="an unknown run .* cannot be read.*--break-lock"):
        OutputLock(out).acquire()
    with OutputLock(out, break_lock=True) as lock:
        assert lock.owned()


def test_release_never_deletes_a_lock_that_is_not_ours(tmp_path, caplog):
    out = tmp_path / "acts.pk"
    lock = OutputLock(out).acquire()
    raw = _write_record(lock_path(out), host="node-3", pid=99)  # broken and taken from another host meanwhile
    assert not lock.owned()
    lock.release()
    assert lock_path(out).read_bytes() == raw
    assert "is no longer this run's lock" in caplog.text


def test_two_processes_for_the_same_task_one_is_refused(tmp_path):
    out = tmp_path / "acts.pk"
    p = _holder(out, task=3)
    try:
        assert lock_path(out, 3) == tmp_path / ".acts.task-3.lock"
        q = _start_holder(out, task=3)
        line, _ = q.communicate(timeout=60)
        assert q.returncode == 5 and line.startswith("refused task 3 of") and f"pid {p.pid}" in line
        with OutputLock(out, task=4):  # another task of the same output is not blocked
            assert {h.path.name for h in held_locks(out)} == {".acts.task-3.lock", ".acts.task-4.lock"}
        # the whole output is: a task holds a part of it
        with pytest.raises(LockedError, match=f"pid {p.pid}"):
            OutputLock(out).acquire()
        assert not lock_path(out).exists()
    finally:
        _let_go(p)
    assert held_locks(out) == []
    with OutputLock(out):
        with pytest.raises(LockedError):  # and a task waits for a whole-output run
            OutputLock(out, task=0).acquire()


def test_breaking_deletes_only_the_lock_that_was_judged_stale(tmp_path):
    # Two runs find the same stale lock; the first breaks it and takes the output. The
    # second, which read the stale record before that, must not delete the new lock.
    from savedeep.runner.lock import _remove_if_same

    out = tmp_path / "acts.pk"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_record(lock_path(out), pid=dead.pid, pid_start=None)
    seen = read_holder(lock_path(out))
    assert seen.state() == "stale"
    with OutputLock(out) as first:  # breaks it and takes it
        _remove_if_same(lock_path(out), seen)  # the second run's late break
        assert first.owned()
        with pytest.raises(LockedError, match=f"pid {os.getpid()} on host"):
            OutputLock(out).acquire()
    assert not lock_path(out).exists()


def test_a_guard_left_by_a_killed_breaker_does_not_block(tmp_path):
    # A run killed while breaking a lock leaves the guard (out/.acts.lock.break) behind.
    out = tmp_path / "acts.pk"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_record(lock_path(out), pid=dead.pid, pid_start=None)
    guard = _write_record(lock_path(out).with_name(".acts.lock.break"), pid=dead.pid, pid_start=None)
    assert guard
    with OutputLock(out) as lock:
        assert lock.owned()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
