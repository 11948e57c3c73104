"""Fault injection for the tests of failures: real processes failing in real ways.

Set ``SAVEDEEP_FAULT`` in the environment of a run (spawned workers inherit
it), as comma-separated ``key=value`` pairs:

- ``role``: producer | consumer | writer
- ``batch``: the batch number at which to fail
- ``action``: ``raise`` (an exception inside the stage's work), ``kill``
  (SIGKILL of the worker itself), ``sleep`` (stall for ``seconds``, to give a
  test time to interrupt the run), ``wait`` (stall until the file ``file`` exists,
  so that a test decides when the run goes on)
- ``index``: only worker number ``index`` of that role (default: any)
- ``holding`` (with ``action=kill``): ``+``-separated channels whose lock the worker
  takes just before it dies, as a SIGKILL that lands while a worker's queue thread
  is sending (the OOM killer's timing, which a test cannot pick) leaves them:
  a queue's name (``logs``, ``events``, ``done``, ``free_in`` ...) takes its write
  lock; ``stop`` takes the stop flag's lock, where it has one

``role=preflight`` raises in the parent's preflight instead (before any worker
starts), which is how the tests reach the "internal error (a bug)" path.
``role=manifest`` acts in the parent just after it appended shard ``batch``'s
line to the manifest's journal, before any rewrite of the manifest
(savedeep/runner/manifest.py): ``action=kill`` is a crash of the parent there.

Unset, this costs one dictionary lookup per batch.

``SAVEDEEP_RECORD_STARTS=DIR`` makes every worker process create an empty file
``DIR/<role><index>-<pid>`` as the first thing it does, so that a test can tell
whether a run started any worker (see :func:`record_start`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _spec() -> dict[str, str] | None:
    raw = os.environ.get("SAVEDEEP_FAULT")
    if not raw:
        return None
    return dict(part.split("=", 1) for part in raw.split(",") if part)


class InjectedFault(RuntimeError):
    """The exception raised by ``action=raise``."""


def maybe_fail(
    role: str, index: int, batch: int, check: Callable[[], None] | None = None, channels: Any = None
) -> None:
    """Fail here if SAVEDEEP_FAULT asks for this role, worker and batch.

    ``check`` is the worker's stop/parent-alive check, called while stalling so
    a stalled worker still leaves when the run stops. ``channels`` (workers/_loop.py,
    Channels) is where ``holding`` finds the locks to take.
    """
    spec = _spec()
    if spec is None or spec.get("role") != role or int(spec.get("batch", -1)) != batch:
        return
    if "index" in spec and int(spec["index"]) != index:
        return
    action = spec.get("action", "raise")
    if action == "kill":
        for name in filter(None, spec.get("holding", "").split("+")):
            _take_lock(channels, name)
        os.kill(os.getpid(), signal.SIGKILL)
    elif action in ("sleep", "wait"):
        end = time.monotonic() + float(spec.get("seconds", "30" if action == "sleep" else "600"))
        while time.monotonic() < end and not (action == "wait" and os.path.exists(spec["file"])):
            if check is not None:
                check()
            time.sleep(0.05)
    else:
        raise InjectedFault(f"injected fault in {role} {index} at batch {batch}")


def _take_lock(channels: Any, name: str) -> None:
    """Take the lock that a writer to channel ``name`` holds while it sends (for ``holding``)."""
    target = getattr(channels, name)
    for q in target if isinstance(target, list) else [target]:
        lock = getattr(q, "_wlock", None) or getattr(getattr(q, "_cond", None), "_lock", None)
        if lock is not None:  # a flag without a lock cannot be left held
            lock.acquire()


def record_start(role: str, index: int) -> None:
    """Leave ``$SAVEDEEP_RECORD_STARTS/<role><index>-<pid>`` if that variable is set (for the tests)."""
    directory = os.environ.get("SAVEDEEP_RECORD_STARTS")
    if directory:
        with open(os.path.join(directory, f"{role}{index}-{os.getpid()}"), "w"):
            pass
