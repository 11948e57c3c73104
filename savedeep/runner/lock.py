"""One writer per output: a lock file that a run holds from before it touches its output until it ends.

NOTE [savedeep output lock]
===========================

Where. For ``output: out/acts.pk`` the lock is ``out/.acts.lock``: beside the
Parquet directory, not in it, so that it exists before the directory does,
survives ``--overwrite`` deleting the directory, and no Parquet reader (given
the directory or ``out/*.parquet``) ever sees it. It is hidden (a leading dot).
A task of a multi-node run (``task=K``) gets its own lock,
``out/.acts.task-K.lock``: tasks own distinct shards and do not block each
other; two processes for the same task do. :func:`held_locks` lists every lock
of an output (the whole-output one and the tasks'), for a ``merge`` that must
wait until no task holds its lock.

How. flock/fcntl locks are not reliable on the file systems of clusters (NFS
depends on the lock daemon and the mount options; Lustre and GPFS need
``-o flock``, and some mounts accept the call and lock nothing). A lock file
whose *existence* is the lock works everywhere: the record is written whole to a
private temporary file, which is then hard-linked to the lock's name. ``link``
is atomic on local disks, NFS (v2 and later: this is the method ``open(2)``
recommends for NFS instead of ``O_EXCL``), Lustre and GPFS, and fails if the
name exists; if the server's reply is lost, the link count of the temporary
file (2) still tells whether the link was made. So a reader never sees a
half-written lock. Where hard links are not supported, ``O_CREAT | O_EXCL``
is used instead.

What it records (JSON): host, pid, the process's start time (``/proc/PID/stat``
field 22, so that a recycled pid is not mistaken for the holder), the boot id,
the pid namespace,
since when (UTC), the run's config fingerprint, the output, the task, the
command line and savedeep's version.

Stale locks. A lock is *stale* when its holder is provably gone: same host
and same pid namespace (and, where recorded, same boot) and either no process
has that pid, or it is a zombie, or its start time differs (the pid was
reused); or same host and another boot id (the machine rebooted). A holder in
another pid namespace (a container sharing the host's name) is treated like one
on another host. A holder on another host that was this very scheduler job
(the record's ``job_id``: Slurm's ``ARRAYJOB_TASK``, or the job id) is an
earlier instance of a requeued job, which the scheduler ran to its end before
starting this one: stale too. A stale lock is broken automatically,
with a warning naming the holder. A holder on another host cannot be checked
from here: the run is refused, and ``break_lock=True`` (``--break-lock``)
removes that lock, for after a crash on another node. ``break_lock`` never
breaks the lock of a process that is provably alive on this host: stop it
first. An unreadable lock file (a foreign file, or one cut short by a full
disk) is treated as held by an unknown run; ``break_lock`` removes it.

Breaking (and releasing) deletes the lock file only if it still holds the
bytes that were judged stale (or this run's own record), and does that
read-compare-delete under a second, short-lived lock file, the guard
(``out/.acts.lock.break``): so two runs breaking the same stale lock at once
cannot both take it, and a run never deletes a lock that another run has just
taken.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from savedeep.errors import OutputError
from savedeep.files import glob_escape

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"


class LockedError(OutputError):
    """The output is held by another run (exit code 5, as every output problem)."""


# --------------------------------------------------------------------------- names


def lock_path(output: Path | str, task: int | None = None) -> Path:
    """The lock file of ``output`` (the pickle path, e.g. out/acts.pk), or of task ``task`` of it."""
    output = Path(output)
    stem = output.stem
    name = f".{stem}{LOCK_SUFFIX}" if task is None else f".{stem}.task-{int(task)}{LOCK_SUFFIX}"
    return output.with_name(name)


def lock_paths(output: Path | str) -> list[Path]:
    """Every lock file of ``output`` present now: the whole output's and each task's."""
    output = Path(output)
    whole = lock_path(output)
    found = [whole] if whole.exists() else []
    try:
        found += sorted(output.parent.glob(f".{glob_escape(output.stem)}.task-*{LOCK_SUFFIX}"))
    except OSError:
        pass
    return found


# --------------------------------------------------------------------------- this process


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    """This process's pid namespace (containers on one host may share its name but not its pids)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process, or None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces or ')'
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), or None where /proc cannot tell."""
    st = _proc_stat(pid)
    return None if st is None else st[1]


def _have_proc() -> bool:
    return Path(f"/proc/{os.getpid()}/stat").exists()


def process_alive(pid: int, start: int | None) -> bool:
    """Whether the process ``pid`` that started at ``start`` still runs on this host (a zombie does not)."""
    if pid <= 0:
        return False
    if _have_proc():
        st = _proc_stat(pid)
        if st is None or st[0] in ("Z", "X"):
            return False
        return start is None or st[1] == start
    try:  # no /proc (not Linux): the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- the record


# (variable, ...): a scheduler job's id, joined by "_" (Slurm array task: ARRAYJOB_TASK).
JOB_ID_VARIABLES = (
    ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"),
    ("SLURM_JOB_ID",),
    ("PBS_JOBID",),
    ("JOB_ID", "SGE_TASK_ID"),
    ("LSB_JOBID", "LSB_JOBINDEX"),
)


def scheduler_job_id(env: Any = None) -> str | None:
    """The scheduler's id of this job (Slurm: ARRAYJOB_TASK, the same across a requeue), or None outside one."""
    env = os.environ if env is None else env
    for names in JOB_ID_VARIABLES:
        if all(env.get(n) for n in names):
            return "_".join(env[n] for n in names)
    return None


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its file says; ``raw`` is the file's bytes."""

    path: Path
    host: str | None = None
    pid: int | None = None
    pid_start: int | None = None
    boot_id: str | None = None
    pid_ns: str | None = None
    since: str | None = None
    fingerprint: str | None = None
    task: int | None = None
    command: str | None = None
    job_id: str | None = None
    raw: bytes = b""

    @property
    def readable(self) -> bool:
        return self.host is not None and self.pid is not None

    def describe(self) -> str:
        """host, pid, since when: the words of the one-line refusal."""
        if not self.readable:
            return f"an unknown run (the lock file {self.path} cannot be read)"
        return f"pid {self.pid} on host {self.host}, since {self.since}"

    def state(self) -> str:
        """'alive' (provably running here), 'stale' (provably gone), or 'unknown' (another host, unreadable)."""
        if not self.readable:
            return "unknown"
        if self.host != socket.gethostname():
            return "stale" if self.earlier_attempt_of_this_job() else "unknown"
        here = _boot_id()
        if self.boot_id and here and self.boot_id != here:
            return "stale"  # this host rebooted since the lock was taken
        if self.pid_ns and self.pid_ns != _pid_namespace():
            return "unknown"  # another container on this host: its pids are not ours to check
        return "alive" if process_alive(self.pid, self.pid_start) else "stale"

    def earlier_attempt_of_this_job(self) -> bool:
        """Whether the holder was this very scheduler job (e.g. Slurm array task 1234_5) on another host.

        A scheduler runs one instance of a job at a time: a job requeued onto another
        node after its node died finds the lock of its own earlier instance, which is gone.
        """
        here = scheduler_job_id()
        return bool(here and self.job_id == here)


def read_holder(path: Path) -> Holder | None:
    """The holder recorded in the lock file ``path``, or None if there is no such file."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return Holder(Path(path))
    try:
        rec = json.loads(raw)
        return Holder(
            Path(path),
            host=str(rec["host"]),
            pid=int(rec["pid"]),
            pid_start=rec.get("pid_start"),
            boot_id=rec.get("boot_id"),
            pid_ns=rec.get("pid_ns"),
            since=rec.get("since"),
            fingerprint=rec.get("fingerprint"),
            task=rec.get("task"),
            command=rec.get("command"),
            job_id=rec.get("job_id"),
            raw=raw,
        )
    except (ValueError, KeyError, TypeError):
        return Holder(Path(path), raw=raw)


def held_locks(output: Path | str) -> list[Holder]:
    """The locks of ``output`` (whole output and tasks) whose holder is not provably gone."""
    out = []
    for p in lock_paths(output):
        h = read_holder(p)
        if h is not None and h.state() != "stale":
            out.append(h)
    return out


def _record(output: Path, fingerprint: str | None, task: int | None) -> bytes:
    from savedeep.version import __version__

    pid = os.getpid()
    rec: dict[str, Any] = {
        "host": socket.gethostname(),
        "pid": pid,
        "pid_start": process_start(pid),
        "boot_id": _boot_id(),
        "pid_ns": _pid_namespace(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "fingerprint": fingerprint,
        "output": str(output),
        "task": task,
        "command": " ".join(sys.argv),
        "job_id": scheduler_job_id(),  # the scheduler's job, if any: a requeued job may break its own old lock
        "savedeep": __version__,
        "nonce": uuid.uuid4().hex,  # two records are never the same bytes
    }
    return (json.dumps(rec, indent=1) + "\n").encode()


# --------------------------------------------------------------------------- taking and giving back


def _link_create(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` only if it does not exist; True if this call created it."""
    tmp = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                return _excl_create(path, data)  # no hard links here
            # NFS: the link may have been made and the reply lost; the link count tells.
            with contextlib.suppress(OSError):
                if os.stat(tmp).st_nlink == 2:
                    return True
            raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _excl_create(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


GUARD_SUFFIX = ".break"
GUARD_STALE_S = 60.0  # a guard from another host older than this is left over from a crash


def _remove_if_same(path: Path, seen: Holder) -> None:
    """Remove the lock ``path`` only if it still holds ``seen``'s bytes.

    Between reading a lock and deleting it, another run may have broken it and taken
    it: deleting then would free a live run's lock. So the read-compare-delete is done
    under a second lock file, the guard (``path`` + ``.break``), that every remover
    takes the same way; a lock file can only be removed by its holder or under the
    guard, and only created when absent, so the compared bytes are the deleted ones.
    The guard is held for microseconds; one left by a remover that died there is
    stale by the same rules as a lock (or, from another host, after GUARD_STALE_S).
    """
    guard = path.with_name(path.name + GUARD_SUFFIX)
    mine = _record(path, None, None)
    deadline = time.monotonic() + 30.0
    while not _link_create(guard, mine):
        g = read_holder(guard)
        if g is None:
            continue
        try:
            age = time.time() - guard.stat().st_mtime
        except FileNotFoundError:
            continue
        if g.state() == "stale" or (g.state() == "unknown" and age > GUARD_STALE_S):
            _unlink_if(guard, g.raw)
            continue
        if time.monotonic() > deadline:
            raise LockedError(
                f"{path} is being broken by {g.describe()} (guard {guard}) for more than 30 s; "
                f"if that run is gone, delete {guard}"
            )
        time.sleep(0.01)
    try:
        _unlink_if(path, seen.raw)
    finally:
        _unlink_if(guard, mine)


def _unlink_if(path: Path, raw: bytes) -> None:
    try:
        if path.read_bytes() == raw:
            path.unlink()
    except FileNotFoundError:
        pass


class OutputLock:
    """The lock of one output (or one task of it): ``acquire``, ``release``, ``holder``, ``owned``.

    Use as a context manager::

        with OutputLock("out/acts.pk", fingerprint=cfg.fingerprint()):
            ...  # this process alone writes out/acts.*

    ``acquire`` raises :class:`LockedError` (exit code 5) naming the holder when another
    live (or unverifiable) run holds it; a stale lock is broken with a warning.
    """

    def __init__(
        self, output: Path | str, *, task: int | None = None, fingerprint: str | None = None, break_lock: bool = False
    ) -> None:
        self.output = Path(output)
        self.task = task
        self.path = lock_path(self.output, task)
        self.fingerprint = fingerprint
        self.break_lock = break_lock
        self._record: bytes | None = None
        self._made_dir: Path | None = None

    def holder(self) -> Holder | None:
        """Who holds this lock now (None: nobody)."""
        return read_holder(self.path)

    def owned(self) -> bool:
        """Whether the lock file is still this object's own record."""
        if self._record is None:
            return False
        try:
            return self.path.read_bytes() == self._record
        except OSError:
            return False

    def _refusal(self, h: Holder) -> LockedError:
        what = f"task {self.task} of {self.output}" if self.task is not None else str(self.output)
        state = h.state()
        if state == "alive":
            fix = f"wait for it to finish or stop it (kill {h.pid}), then rerun"
        elif h.readable:
            fix = (
                "wait for it to finish; if that run is gone (crashed, or its node died), rerun with --break-lock"
                " (break_lock=True)"
            )
        else:
            fix = "if no run is using this output, rerun with --break-lock (break_lock=True)"
        return LockedError(
            f"{what} is in use by another savedeep run: {h.describe()} (lock {h.path}); nothing was changed; {fix}"
        )

    def check(self) -> None:
        """Raise the refusal ``acquire`` would raise if another run holds the lock now; changes nothing.

        The preflight calls it before judging the output on disk, so that a run started beside a
        running one is told that, not that the output 'exists'.
        """
        h = self.holder()
        if h is None:
            return
        state = h.state()
        if state == "stale" or (state == "unknown" and self.break_lock):
            return
        raise self._refusal(h)

    def acquire(self) -> OutputLock:
        """Take the lock, breaking it if it is stale (or if ``break_lock`` and the holder is not alive here)."""
        if self._record is not None:
            raise RuntimeError(f"{self.path} is already held by this object")
        parent = self.path.parent
        if not parent.is_dir():
            top = parent
            while not top.parent.exists() and top.parent != top:
                top = top.parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(
                    f"cannot create the output's folder {parent}: {exc.strerror}; "
                    "choose another output or fix its permissions"
                ) from exc
            self._made_dir = top
        record = _record(self.output, self.fingerprint, self.task)
        for _ in range(20):
            try:
                if _link_create(self.path, record):
                    self._record = record
                    self._check_other_scope()
                    return self
            except OSError as exc:
                self._cleanup_dir()
                raise OutputError(
                    f"cannot create the lock file {self.path}: {exc.strerror}; the output's folder must be writable"
                ) from exc
            h = read_holder(self.path)
            if h is None:
                continue  # released (or broken) in between: try again
            state = h.state()
            if state == "stale":
                log.warning("%s: breaking a stale lock: %s is gone", self.path, h.describe())
            elif state == "unknown" and self.break_lock:
                log.warning("%s: breaking the lock of %s (--break-lock)", self.path, h.describe())
            else:
                self._cleanup_dir()
                raise self._refusal(h)
            _remove_if_same(self.path, h)
        self._cleanup_dir()
        raise LockedError(
            f"could not take the lock {self.path}: other runs keep taking it; is the same job "
            "started many times at once?"
        )

    def _check_other_scope(self) -> None:
        """A whole-output run and a task of the same output exclude each other.

        Each takes its own lock first and then looks for the other kind, so of two that
        start together at least one sees the other and steps back (both may: no harm).
        """
        others = [
            h
            for h in held_locks(self.output)
            if h.path != self.path and (self.task is None or h.path == lock_path(self.output))
        ]
        if others:
            self.release()
            raise self._refusal(others[0])

    def release(self) -> None:
        """Delete the lock file if it is still ours; remove the folders the lock made if they stayed empty."""
        if self._record is None:
            return
        held = self.holder()
        if held is not None and held.raw == self._record:
            _remove_if_same(self.path, held)
        else:
            log.warning(
                "%s is no longer this run's lock (%s): left as it is",
                self.path,
                held.describe() if held else "it was removed",
            )
        self._record = None
        self._cleanup_dir()

    def _cleanup_dir(self) -> None:
        """A run refused or failed before writing anything leaves no folder behind."""
        top, self._made_dir = self._made_dir, None
        if top is None:
            return
        d = self.path.parent
        while True:
            try:
                d.rmdir()
            except OSError:
                return
            if d == top:
                return
            d = d.parent

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


@contextlib.contextmanager
def output_lock(
    output: Path | str, *, task: int | None = None, fingerprint: str | None = None, break_lock: bool = False
) -> Iterator[OutputLock]:
    """``with output_lock(out): ...``: hold the lock of ``output`` for the block."""
    lock = OutputLock(output, task=task, fingerprint=fingerprint, break_lock=break_lock)
    with lock:
        yield lock
