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

Unset, this costs one dictionary lookup per batch.
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
