"""What a person sees of a run while it runs, kept out of the supervisor (savedeep/runner/pipeline.py).

The progress bar, the run log, the console lines, the parent's signal handlers,
the workers' log records re-dispatched in the parent, and the busy fraction of
each stage.

In a Jupyter notebook the bar is tqdm's widget (where ipywidgets is installed)
or one text bar in the cell, and savedeep's warnings (the workers' included)
are lines of their own in the cell: see :func:`in_notebook` and :func:`console_log`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from savedeep.data.output import RUN_LOG_FORMAT
from savedeep.errors import Interrupted


CONSOLE_FORMAT = "savedeep: %(levelname)s: %(message)s"  # the console lines of the CLI and of console_log


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, VS Code, nbclient), where stderr is a cell's output.

    Looks only at modules already imported: a plain ``python`` or the CLI never imports IPython here.
    """
    if "ipykernel" not in sys.modules:
        return False
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _widgets_available() -> bool:
    """ipywidgets imports: tqdm's notebook bar needs it (tqdm.auto would warn and draw the text bar instead)."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


class Progress:
    """A tqdm bar over a run's images, or nothing when ``enabled`` is false.

    In a notebook with ipywidgets: tqdm's widget bar, one per run. In a notebook without it: the
    text bar, redrawn at most once a second (a cell keeps every redraw in the saved notebook)
    and as wide as the cell's text, not the kernel's terminal.
    """

    def __init__(self, enabled: bool, total: int, initial: int) -> None:
        self._bar: Any = None
        if not enabled:
            return
        options: dict[str, Any] = {
            "total": total,
            "initial": initial,
            "unit": "img",
            "desc": "savedeep",
            "smoothing": 0.1,
        }
        notebook = in_notebook()
        if notebook and _widgets_available():
            from tqdm.notebook import tqdm as notebook_tqdm

            self._bar = notebook_tqdm(**options)
            return
        from tqdm import tqdm

        if notebook:
            self._bar = tqdm(**options, file=sys.stderr, mininterval=1.0, ncols=80)
        else:
            self._bar = tqdm(**options, dynamic_ncols=True)

    def update(self, images: int, failures_so_far: int, new_failures: int) -> None:
        """``images`` more are done; the bar shows the failures once there are any."""
        if self._bar is not None:
            self._bar.update(images)
            if new_failures:
                self._bar.set_postfix(failures=failures_so_far, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class ConsoleHandler(logging.Handler):
    """Log records as lines on stderr that leave a progress bar whole: tqdm.write clears the bar, prints, redraws."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001
            self.handleError(record)


def _has_console(lg: logging.Logger) -> bool:
    """Whether a handler that is not a file's (a console, pytest's capture, the user's) would see lg's records."""
    current: logging.Logger | None = lg
    while current is not None:
        if any(not isinstance(h, (logging.FileHandler, logging.NullHandler)) for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


@contextlib.contextmanager
def console_log() -> Iterator[logging.Handler | None]:
    """Show savedeep's warnings (the workers' included) on stderr while inside, where nothing else would.

    Python prints a library's warnings when no logging is configured (``logging.lastResort``),
    but not once any handler takes them, and the run log's file handler (:func:`run_log`) is one:
    without this, ``savedeep.run`` in a script or a notebook would never show a worker's
    "skipping X" line. Where the program set up a console of its own (the CLI's lines,
    ``logging.basicConfig``), that one shows them and nothing is added.
    """
    lg = logging.getLogger("savedeep")
    if _has_console(lg):
        yield None
        return
    handler = ConsoleHandler(logging.WARNING)
    handler.setFormatter(logging.Formatter(CONSOLE_FORMAT))
    lg.addHandler(handler)
    try:
        yield handler
    finally:
        lg.removeHandler(handler)


@contextlib.contextmanager
def run_log(path: Path | None) -> Iterator[logging.Handler | None]:
    """Copy the ``savedeep`` loggers (the workers' records included) into the file ``path`` while inside."""
    if path is None:
        yield None
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(RUN_LOG_FORMAT))
    lg = logging.getLogger("savedeep")
    lg.addHandler(handler)
    if lg.level == logging.NOTSET or lg.level > logging.INFO:
        lg.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        lg.removeHandler(handler)
        handler.close()


def threading_main() -> bool:
    """Signal handlers can only be installed from the main thread."""
    return threading.current_thread() is threading.main_thread()


def _on_term(signum: int, frame: Any) -> None:
    raise Interrupted("stopped by SIGTERM")


STACKS_SIGNAL = getattr(signal, "SIGUSR1", None)  # `kill -USR1 -- -PGID`: every process prints its stacks


def dump_stacks_on_signal(forward: Callable[[], Iterable[int]] | None = None) -> bool:
    """Print every thread's stack to stderr on SIGUSR1 (a run that seems stuck: where each process is).

    The stacks are printed from the signal handler itself (faulthandler), so they come
    even when the main thread is stuck inside a C call. ``forward`` (the parent): the
    pids the signal is then passed on to, the run's workers, so that one
    ``kill -USR1 PID`` of the parent shows every process (a signal to the whole
    process group would also reach multiprocessing's resource tracker, which it kills).
    Only where SIGUSR1 still has its default action (which would end the process), so a
    handler the user's own program installed is left alone. True if it was installed.
    """
    import faulthandler

    if STACKS_SIGNAL is None or signal.getsignal(STACKS_SIGNAL) != signal.SIG_DFL:
        return False
    if forward is not None:

        def pass_on(signum: int, frame: Any) -> None:
            import os
            import time

            for pid in forward():
                time.sleep(0.1)  # one at a time: the processes share stderr, and their dumps must not interleave
                try:
                    os.kill(pid, signum)
                except OSError:  # it has exited meanwhile
                    pass

        signal.signal(STACKS_SIGNAL, pass_on)
    try:  # the process's stderr, also where sys.stderr is not a file (a notebook, pytest's capture)
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        fd = 2
    faulthandler.register(STACKS_SIGNAL, file=fd, all_threads=True, chain=forward is not None)
    return True


def stop_dumping_stacks() -> None:
    """Undo dump_stacks_on_signal: SIGUSR1 gets its default action back."""
    import faulthandler

    faulthandler.unregister(STACKS_SIGNAL)
    signal.signal(STACKS_SIGNAL, signal.SIG_DFL)


@contextlib.contextmanager
def parent_owns_signals(workers: Callable[[], Iterable[int]] | None = None) -> Iterator[None]:
    """While inside, SIGTERM raises Interrupted and SIGINT KeyboardInterrupt (NOTE [savedeep shutdown]);
    SIGUSR1 prints the parent's stacks and is passed on to the pids ``workers`` gives (dump_stacks_on_signal)."""
    if not threading_main():
        yield
        return
    old_term, old_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, _on_term)
    # The parent owns Ctrl-C even when started with SIGINT ignored (a background
    # job of a non-interactive shell inherits SIG_IGN): it must stop in order.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stacks = dump_stacks_on_signal(workers)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
        if stacks:
            stop_dumping_stacks()


class LogListener:
    """Hands the workers' log records to this process's loggers (run log + console), from a thread.

    The thread polls the queue and notices its stop flag between polls; the parent
    never writes to the logs queue. A worker killed while its queue thread was
    sending a record leaves the queue's write lock held for good (a process-shared
    semaphore has no owner to release it), so a listener stopped by a sentinel put
    through that queue (logging.handlers.QueueListener) would wait forever, and
    the run with it, before unlinking its shared memory.
    """

    POLL_S = 0.02  # stop() waits for at most one poll

    def __init__(self, q: Any) -> None:
        self.q = q
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="savedeep-worker-logs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._take(self.POLL_S)

    def _take(self, timeout: float) -> bool:
        """Handle one record if one comes within ``timeout``; False when none did."""
        import queue

        try:
            record = self.q.get(timeout=timeout)
        except queue.Empty:
            return False
        except (OSError, EOFError, ValueError):  # the queue is closed: nothing more will come
            self._stopping.set()
            return False
        except Exception:  # noqa: BLE001 - a record that cannot be unpickled: skip it, keep the rest
            return True
        logging.getLogger(record.name).handle(record)
        return True

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread, then hand over what the workers sent before they left (at most ``timeout`` s)."""
        import time

        self._stopping.set()
        self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._take(0.05):
            pass


def busy_fractions(stats: Sequence[Any], wall_s: float) -> dict[str, float]:
    """Per role, the workers' busy time over the time the pipeline ran (``stats``: messages.WorkerStats)."""
    busy = {}
    for role in ("producer", "consumer", "writer"):
        st = [s for s in stats if s.role == role]
        if st:
            busy[role] = sum(s.busy_s for s in st) / max(len(st) * wall_s, 1e-9)
    return busy
