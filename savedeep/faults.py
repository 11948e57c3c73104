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

``role=preflight`` raises in the parent's preflight instead (before any worker
starts), which is how the tests reach the "internal error (a bug)" path.

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


@lru_cache(maxsize=1)
def _spec() -> dict[str, str] | None:
    raw = os.environ.get("SAVEDEEP_FAULT")
    if not raw:
        return None
    return dict(part.split("=", 1) for part in raw.split(",") if part)


class InjectedFault(RuntimeError):
    """The exception raised by ``action=raise``."""


def maybe_fail(role: str, index: int, batch: int, check: Callable[[], None] | None = None) -> None:
    """Fail here if SAVEDEEP_FAULT asks for this role, worker and batch.

    ``check`` is the worker's stop/parent-alive check, called while stalling so
    a stalled worker still leaves when the run stops.
    """
    spec = _spec()
    if spec is None or spec.get("role") != role or int(spec.get("batch", -1)) != batch:
        return
    if "index" in spec and int(spec["index"]) != index:
        return
    action = spec.get("action", "raise")
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action in ("sleep", "wait"):
        end = time.monotonic() + float(spec.get("seconds", "30" if action == "sleep" else "600"))
        while time.monotonic() < end and not (action == "wait" and os.path.exists(spec["file"])):
            if check is not None:
                check()
            time.sleep(0.05)
    else:
        raise InjectedFault(f"injected fault in {role} {index} at batch {batch}")


def record_start(role: str, index: int) -> None:
    """Leave ``$SAVEDEEP_RECORD_STARTS/<role><index>-<pid>`` if that variable is set (for the tests)."""
    directory = os.environ.get("SAVEDEEP_RECORD_STARTS")
    if directory:
        with open(os.path.join(directory, f"{role}{index}-{os.getpid()}"), "w"):
            pass
