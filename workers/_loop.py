"""What every worker process shares: start-up, liveness-checked waits, error reporting.

See NOTE [savedeep pipeline data flow] in savedeep/runner/messages.py for the protocol
and NOTE [savedeep shutdown] in savedeep/runner/pipeline.py for how runs end.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from savedeep.errors import WorkerError
from savedeep.runner.messages import WorkerFailed, WorkerStats

POLL_S = 0.2  # how often a blocked worker checks the stop flag and its parent
STARTING = -2  # a worker's entry in Channels.current until it is set up (then -1: between batches)


class Stopped(Exception):
    """The parent asked us to stop, or died: leave quietly."""


class StopFlag:
    """The run's stop flag: one byte of shared memory, set by the parent, read by every worker.

    Unlike multiprocessing's Event it has no lock: a worker killed while reading the
    flag (the OOM killer picks no good moment) cannot leave the parent's ``set``, or
    the other workers' polls, waiting on a lock that nobody will release.
    """

    def __init__(self, ctx: Any) -> None:
        self._flag = ctx.RawValue("b", 0)

    def set(self) -> None:
        self._flag.value = 1

    def is_set(self) -> bool:
        return bool(self._flag.value)


@dataclass
class Channels:
    """The queues and shared flags of one run (inherited by spawned workers as arguments)."""

    tasks: Any  # Task | EndOfStream                 parent -> producers
    ready: Any  # BatchReady | EndOfStream           producers -> consumers
    done: Any  # list, one per writer: BatchDone | EndOfStream  consumers -> writer (shard % W)
    events: Any  # BatchWritten, ShardWritten, WorkerStats, WorkerFailed -> parent
    free_in: Any  # int: free input-slot numbers
    free_out: Any  # int: free output-slot numbers
    logs: Any  # logging.LogRecord from every worker -> parent's listener
    window: Any  # Semaphore(out_slots): see the NOTE in savedeep/runner/messages.py
    stop: Any  # StopFlag: set by the parent to stop everything
    current: Any  # Array('q'): the batch each worker is on, -1 if none, STARTING (for death reports)
    parent_pid: int

    def queues(self) -> tuple[Any, ...]:
        """Every queue of the run."""
        return (self.tasks, self.ready, *self.done, self.events, self.free_in, self.free_out, self.logs)


class Worker:
    """The frame of one worker process: its identity, busy-time clock and blocking helpers."""

    def __init__(self, role: str, index: int, row: int, ch: Channels, device: str | None = None) -> None:
        # row: this worker's entry in ch.current (not a ring slot)
        self.role, self.index, self.row, self.ch, self.device = role, index, row, ch, device
        self.busy_s = 0.0
        self.items = 0
        self.started = time.perf_counter()
        self._busy_since: float | None = None
        self.log = logging.getLogger(f"savedeep.{role}{index}")

    # -- time accounting: everything between waits is busy time
    def _pause(self) -> None:
        if self._busy_since is not None:
            self.busy_s += time.perf_counter() - self._busy_since
            self._busy_since = None

    def _resume(self) -> None:
        self._busy_since = time.perf_counter()

    def check(self) -> None:
        """Raise Stopped if the run is stopping or the parent is gone."""
        if self.ch.stop.is_set() or os.getppid() != self.ch.parent_pid:
            raise Stopped

    def get(self, q) -> Any:
        """A blocking get that keeps checking the stop flag and the parent."""
        self._pause()
        try:
            while True:
                try:
                    return q.get(timeout=POLL_S)
                except queue.Empty:
                    self.check()
        finally:
            self._resume()

    def acquire(self, sem) -> None:
        """Acquire a semaphore permit, checking the stop flag and the parent meanwhile."""
        self._pause()
        try:
            while not sem.acquire(timeout=POLL_S):
                self.check()
        finally:
            self._resume()

    def on_batch(self, batch: int | None) -> None:
        """Record the batch being worked on, so a death can be reported with it."""
        self.ch.current[self.row] = -1 if batch is None else batch


def _setup_process(ch: Channels, row: int) -> None:
    # The parent owns SIGINT/SIGTERM: a Ctrl-C reaches the whole process group,
    # and the parent decides the order of shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from savedeep.runner.ui import dump_stacks_on_signal

    dump_stacks_on_signal()  # SIGUSR1 (passed on by the parent): this worker's stacks on stderr
    ch.current[row] = -1  # set up: from now on the parent may pass SIGUSR1 on to this process
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(ch.logs)]
    root.setLevel(logging.INFO)
    os.environ.setdefault("GLOG_minloglevel", "2")


def spawned(target: Callable[..., None], index: int, row: int, ch: Channels, ref: Any) -> None:
    """The function every worker process starts in: fetch the arguments, then run ``target``."""
    from savedeep.runner.faults import record_start
    from savedeep.runner.shm import take_payload

    record_start(target.__module__.rpartition(".")[2], index)
    target(index, row, ch, *take_payload(ref))


def run_worker(
    role: str, index: int, row: int, ch: Channels, device: str | None, body: Callable[[Worker], None]
) -> None:
    """Run ``body`` as worker ``role`` ``index``; report stats or the failure to the parent."""
    _setup_process(ch, row)
    w = Worker(role, index, row, ch, device)
    w._resume()
    try:
        body(w)
    except Stopped:
        sys.exit(0)
    except BaseException as exc:  # noqa: BLE001 - everything is reported, then we exit non-zero
        batch = int(ch.current[row])
        code = getattr(exc, "exit_code", WorkerError.exit_code)
        ch.events.put(
            WorkerFailed(
                role=role,
                index=index,
                pid=os.getpid(),
                device=device,
                batch=None if batch < 0 else batch,
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
                exit_code=code,
            )
        )
        ch.events.close()
        ch.events.join_thread()
        sys.exit(1)
    w._pause()
    ch.events.put(
        WorkerStats(role=role, index=index, busy_s=w.busy_s, wall_s=time.perf_counter() - w.started, items=w.items)
    )
    _leave(ch)


def _leave(ch: Channels) -> None:
    """Exit 0 at once: flush every message this process queued, then skip the interpreter's teardown.

    The teardown frees nothing the run needs (the stage closed its files, rings and
    engine in its ``finally``) and takes a consumer 0.3-0.7 s (torch's modules and
    memory), which the parent would wait for at the end of every run. A queue's
    thread writes what was put into the pipe before ``join_thread`` returns; that is
    what the normal exit does too (multiprocessing joins the queue threads at exit).
    """
    for q in ch.queues():
        q.close()
        q.join_thread()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(0)
