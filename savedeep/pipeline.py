"""The supervisor: plans a run, starts the workers, watches them, and shuts down in order.

See NOTE [savedeep pipeline data flow] in savedeep/messages.py for what flows
between the processes.

NOTE [savedeep shutdown]
========================

One method, :meth:`Run._shutdown`, ends every run, whatever happened:

1. stop issuing work: no more tasks are put;
2. signal stop: the shared ``stop`` event (workers poll it every 0.2 s while
   blocked, and also notice a dead parent through ``getppid``);
3. drain: the parent keeps reading ``events`` so no worker blocks on a full
   pipe while leaving;
4. join every worker with a deadline; then SIGTERM, then SIGKILL the stragglers;
5. unlink both shared-memory rings (the parent created them; workers only map);
6. delete unfinished shard files (hidden ``.part-*.inprogress`` names) so that
   nothing half-written looks finished. The manifest lists only shards that
   were renamed into place, which ``--resume`` keeps.

The parent owns SIGINT and SIGTERM (workers ignore SIGINT); both end the run
with exit code 130 and a resumable output. Workers are started with the
``spawn`` method: a consumer must select its GPU before anything touches CUDA,
and forking a parent that has threads (the log listener, the progress bar) or
CUDA state is unsafe.
"""

from __future__ import annotations

import hashlib
import logging
import logging.handlers
import math
import multiprocessing as mp
import os
import platform
import queue
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from savedeep.config import RESULT_KEYS_BEFORE_STORAGE, Config
from savedeep.devices import (  # noqa: F401 - count_gpus, resolve_devices, size_rings ... are re-exported
    MAX_SLOTS, RING_BUDGET, SHM_DIR, SHM_RESERVE, count_gpus, plan_devices, resolve_devices, shm_free_bytes,
    size_rings,
)
from savedeep.errors import ConfigError, Interrupted, OutputError, SavedeepError, WorkerError
from savedeep.messages import BatchWritten, DeviceInfo, EndOfStream, ShardWritten, Task, WorkerFailed, WorkerStats

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 10.0
SUPERVISE_S = 0.1           # how often the supervisor checks the workers' exit codes, whatever the event rate


@dataclass
class RunResult:
    """What a run did: where the output is, how many rows and failures, where the time went."""

    pickle: Path | None
    parquet_dir: Path
    images: int
    rows: int
    failures: int
    skipped_files: dict[str, int]
    shards_done: int
    shards_kept: int
    wall_s: float
    devices: list[str]
    producers: int
    writers: int = 1
    busy: dict[str, float] = field(default_factory=dict)  # role -> busy fraction
    # One (seconds since the run started, images) per batch written, in the order they were,
    # and the batches in flight at most: what a steady rate is measured from (benchmarks).
    written: list[tuple[float, int]] = field(default_factory=list)
    window: int = 0

    def steady_images_per_s(self) -> float | None:
        """Images per second between the writing of batch ``window`` and of the last batch.

        The first ``window`` batches are left out: producers may have decoded that many
        before the first forward, so work done before the interval would count in it. None
        when the run wrote too few batches to measure.
        """
        if len(self.written) <= self.window + 1:
            return None
        t_start = self.written[self.window][0]
        t_end = self.written[-1][0]
        images = sum(n for _, n in self.written[self.window + 1:])
        return images / (t_end - t_start) if t_end > t_start else None
    device_info: list[dict] = field(default_factory=list)  # per consumer, as in the manifest's "devices"

    @property
    def images_per_s(self) -> float:
        return (self.rows + self.failures) / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> str:
        """A short human-readable summary, with each stage's busy fraction."""
        steady = self.steady_images_per_s()
        lines = [
            f"{self.rows} rows, {self.failures} failures, {self.images} images "
            f"in {self.wall_s:.1f} s ({self.images_per_s:.1f} images/s"
            + (f"; steady {steady:.1f} images/s after the first {self.window} batches)" if steady else ")")
            + (f"; {self.shards_kept} shards kept from the interrupted run" if self.shards_kept else ""),
            f"devices: {', '.join(self.devices) or '-'}; producers: {self.producers}; writers: {self.writers}",
        ]
        gpus = [f"{d['device']} = {d.get('name', '?')} {d.get('uuid', '')}".rstrip() for d in self.device_info
                if str(d.get("device", "")).startswith("cuda")]
        if gpus:
            lines.append(f"GPUs: {'; '.join(gpus)}")
        if self.busy:
            stages = ", ".join(f"{role} {frac:.0%}" for role, frac in self.busy.items())
            bottleneck = max(self.busy, key=self.busy.get)
            lines.append(f"busy: {stages} (the busiest stage, {bottleneck}, bounds the speed)")
        if any(self.skipped_files.values()):
            lines.append("files skipped by extension: " + ", ".join(f"{k or '(none)'} {v}" for k, v in self.skipped_files.items()))
        lines.append(f"output: {self.pickle or self.parquet_dir}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """Fixed shards (image ranges) and the batches of the shards still to do."""

    shards: list[tuple[int, int, int]]        # (shard, start, stop) for every shard of the run
    todo: list[int]                           # shards to compute
    batches: list[tuple[int, int, int, int]]  # (batch, shard, start, stop), in writing order


def make_plan(n_images: int, shard_size: int, batch_size: int, done: set[int] = frozenset()) -> Plan:
    """Cut the sorted image list into shards of ``shard_size`` and each shard into batches."""
    shards = [(k, k * shard_size, min((k + 1) * shard_size, n_images)) for k in range(math.ceil(n_images / shard_size))]
    todo = [k for k, _, _ in shards if k not in done]
    batches = []
    for k in todo:
        _, start, stop = shards[k]
        for b0 in range(start, stop, batch_size):
            batches.append((len(batches), k, b0, min(b0 + batch_size, stop)))
    return Plan(shards, todo, batches)


def same_result_keys(config: Config, manifest: dict[str, Any]) -> bool:
    """Whether an existing output was made with ``config``'s RESULT_KEYS (so that it can be resumed).

    An output from before the ``storage`` key has tensor columns and a fingerprint
    without that key: it resumes with ``storage: tensor`` (the default), not binary.
    """
    if manifest.get("result_fingerprint") == config.result_fingerprint():
        return True
    return ("storage" not in manifest.get("config", {}) and config.storage == "tensor"
            and manifest.get("result_fingerprint") == config.result_fingerprint(RESULT_KEYS_BEFORE_STORAGE))


# --------------------------------------------------------------------------- run


def _keys_digest(keys: list[str]) -> str:
    h = hashlib.sha256()
    for k in keys:
        h.update(k.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


def _versions(engine: str) -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("savedeep", "numpy", "pandas", "pyarrow", "opencv-python-headless", "pillow", "simplejpeg",
                "torch" if engine == "torch" else "caffe"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def preprocess_spec(config: Config):
    """The PreprocessSpec of a config's ``preprocess:`` section (unset keys take the spec's defaults)."""
    from savedeep.preprocess import PreprocessSpec

    return PreprocessSpec(**{k: v for k, v in config.preprocess.to_dict().items() if v is not None or k == "input_scale"})


def adopt_finished_shards(directory: Path, manifest: dict[str, Any], write: bool = True) -> list[int]:
    """Record in the manifest the shards that were renamed into place but never reported.

    A writer renames a shard only once it is complete, with its own record (rows,
    failures) in its metadata; if the writer or the parent died before the parent
    heard of it, the shard is adopted here instead of being computed again.
    """
    from savedeep.output import shard_name, shard_record, write_manifest

    adopted = []
    for entry in manifest["shards"]:
        if entry.get("complete"):
            continue
        path = directory / shard_name(entry["index"])
        rec = shard_record(path) if path.exists() else None
        if rec and (rec.get("index"), rec.get("start"), rec.get("stop")) == (entry["index"], entry["start"], entry["stop"]):
            entry.update(file=path.name, rows=rec["rows"], failures=rec["failures"], complete=True)
            adopted.append(entry["index"])
    if adopted and write:
        log.info("recorded %d finished shard(s) that had not been reported: %s", len(adopted), adopted)
        write_manifest(directory, manifest)
    return adopted


class _ToLoggers(logging.Handler):
    """Re-dispatch worker records to this process's loggers (run log + console)."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)


class Feeder:
    """Hands the producers their tasks a few at a time instead of all at the start.

    ``start`` queues ``ahead`` tasks; then each batch written (the parent hears of every
    one, empty batches included) queues one more, and after the last task every producer
    gets an end-of-stream. A producer needs a task and one of the window's credits to
    start a batch, and at most ``window`` batches are started but unwritten, so with
    ``ahead = window + producers`` a producer holding a credit never waits for a task.
    The parent thus holds a few tasks rather than one per batch of the run: for a
    million images, 31,250 tasks (119 MiB of tuples and path strings, 5 s to build, measured)
    that sat in the task queue's buffer until the producers took them.
    """

    def __init__(self, put: Callable[[Any], None], batches: Sequence[tuple[int, int, int, int]],
                 make_task: Callable[[int, int, int, int], Any], producers: int, ahead: int) -> None:
        self._put, self._make = put, make_task
        self._batches = batches
        self._ends_left = producers
        self.ahead = max(1, ahead)
        self.queued = 0  # tasks queued so far

    def start(self) -> None:
        self.top_up(self.ahead)

    def top_up(self, n: int = 1) -> None:
        """Queue up to ``n`` more tasks; the end-of-streams as soon as every task is queued."""
        while n > 0 and self.queued < len(self._batches):
            self._put(self._make(*self._batches[self.queued]))
            self.queued += 1
            n -= 1
        if self.queued == len(self._batches):
            while self._ends_left:
                self._put(EndOfStream("parent"))
                self._ends_left -= 1


class _Background:
    """A function run in a daemon thread; ``result()`` waits and returns its value or raises its error."""

    def __init__(self, fn) -> None:
        import threading

        self._value: Any = None
        self._error: BaseException | None = None

        def target() -> None:
            try:
                self._value = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in result()
                self._error = exc

        self._thread = threading.Thread(target=target, name="savedeep-hash", daemon=True)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def run(config: Config, *, resume: bool = False, overwrite: bool = False, progress: bool = False,
        break_lock: bool = False) -> RunResult:
    """Run the whole pipeline for ``config``; returns when the output is complete.

    ``break_lock``: take the output's lock even if a run on another host holds it (see savedeep/lock.py).
    """
    if getattr(mp.current_process(), "_inheriting", False):
        # We are inside a worker that is importing the user's script: the script
        # calls savedeep.run at import time, and every worker would run it again.
        main = getattr(sys.modules.get("__mp_main__"), "__file__", None) or "your script"
        raise ConfigError(
            f"savedeep.run() was called while a savedeep worker process was importing {main}. Workers are "
            "started with the 'spawn' method, which imports the main script again: put the code that calls "
            "savedeep.run() under `if __name__ == \"__main__\":`")
    return Run(config, resume=resume, overwrite=overwrite, progress=progress, break_lock=break_lock).execute()


class Run:
    """One run of the pipeline (the parent process's side)."""

    def __init__(self, config: Config, *, resume: bool, overwrite: bool, progress: bool,
                 break_lock: bool = False) -> None:
        if resume and overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: choose one")
        self.config, self.resume, self.overwrite, self.progress = config, resume, overwrite, progress
        self.break_lock = break_lock
        self.procs: list[tuple[Any, str, int]] = []  # (process, role, index)
        self.rings: list[Any] = []
        self.ch = None
        self.listener = None
        self.stats: list[WorkerStats] = []
        self.device_info: dict[int, dict] = {}  # consumer index -> DeviceInfo.info
        self.pq_dir = Path(config.output).with_name(Path(config.output).stem + ".parquet")

    # -- preparation (no process started yet: every error here is cheap) ----------------
    def _prepare(self) -> None:
        """Every check before a worker starts: see NOTE [savedeep preflight] in savedeep/preflight.py."""
        from savedeep.preflight import preflight

        pf = self.pf = preflight(self.config, resume=self.resume, overwrite=self.overwrite, break_lock=self.break_lock)
        self.model, self._hashes = pf.model, pf.hashes
        self.blob_specs, self.columns, self.blob_info = pf.blob_specs, pf.columns, pf.blob_info
        self.input_shape, self.images, self.mean = pf.input_shape, pf.images, pf.mean
        self.pre_spec, self.preprocess_desc, self.keys_digest = pf.pre_spec, pf.preprocess_desc, pf.keys_digest

    @property
    def model_hashes(self) -> dict[str, str]:
        """sha256 of the prototxt, the weights and the mean (computed in the background)."""
        return self._hashes.result()

    def _manifest(self, plan: Plan) -> dict[str, Any]:
        cfg = self.config
        return {
            "format": "savedeep/1",
            "complete": False,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": cfg.canonical(),
            "config_fingerprint": cfg.fingerprint(),
            "result_fingerprint": cfg.result_fingerprint(),
            "model": {"directory": str(cfg.model), "sha256": self.model_hashes,
                      "input_shape": list(self.input_shape)},
            "images": {"source": str(cfg.images), "count": len(self.images), "keys_sha256": self.keys_digest,
                       "skipped_by_extension": self.images.skipped},
            "preprocess": self.preprocess_desc,
            "engine": cfg.engine,
            "blobs": self.blob_info,
            "blob_order": [c.name for c in self.columns],
            "metadata_columns": list(self.images.metadata),
            "versions": _versions(cfg.engine),
            "shard_size": cfg.shard_size,
            "shards": [{"index": k, "start": a, "stop": b, "file": None, "rows": 0, "failures": [], "complete": False}
                       for k, a, b in plan.shards],
            "pickle": None,
        }

    def _output_state(self) -> set[int]:
        """Act on the preflight's verdict on the existing output: delete it (--overwrite) or tidy it for
        --resume; return the shards to keep."""
        from savedeep.output import failures_path, read_manifest, remove_output, shard_name

        pk = Path(self.config.output)
        if not self.pf.output_exists:
            return set()
        if self.overwrite:
            remove_output(pk, self.pq_dir, self.config.log_file)
            return set()
        manifest = read_manifest(self.pq_dir)
        adopt_finished_shards(self.pq_dir, manifest)
        keep = set(self.pf.keep)
        self._resumed_shards = {s["index"]: s for s in manifest["shards"] if s["index"] in keep}
        # Anything else in the directory is from the interrupted attempt: recompute it.
        for f in self.pq_dir.iterdir():
            if f.name.startswith((".part-", "part-")) and not any(f.name == shard_name(k) for k in keep):
                f.unlink()
        pk.unlink(missing_ok=True)
        failures_path(self.pq_dir).unlink(missing_ok=True)  # rewritten whole when the run completes
        return keep

    # -- processes ------------------------------------------------------------------------
    def _start(self, plan: Plan, devices: list[str], producers: int, writers: int) -> int:
        """Create the rings and queues and spawn every worker; returns the producers started (see size_rings)."""
        from savedeep.devices import worker_env
        from savedeep.output import write_manifest  # noqa: F401  (import check before spawning)
        from savedeep.shm import Field, Ring, new_ring_spec
        from workers._loop import Channels
        from workers.consumer import ConsumerArgs, consumer_main
        from workers.producer import ProducerArgs, producer_main
        from workers.writer import WriterArgs, writer_main

        cfg = self.config
        ctx = mp.get_context("spawn")
        G, B = len(devices), cfg.batch_size
        # Sized by the preflight (size_rings). More input slots than window credits (out_slots)
        # would never be filled, see NOTE [savedeep pipeline data flow].
        in_fields = [Field("data", (B, *self.input_shape), "float32")]
        out_fields = [Field(c.name, (B, *c.shape), c.dtype) for c in self.columns]
        in_slots, out_slots = self.pf.in_slots, self.pf.out_slots
        in_spec = new_ring_spec("in", in_slots, in_fields)
        out_spec = new_ring_spec("out", out_slots, out_fields)
        self.rings = [Ring.create(in_spec), Ring.create(out_spec)]
        self.ring_bytes = in_spec.nbytes + out_spec.nbytes
        self.window = out_slots  # batches in flight at most (the window's credits)
        log.info("rings: %d input slots, %d output slots (the window: batches in flight; %d producers + 2 per "
                 "consumer + 2 per writer need %d), %.1f MiB of shared memory", in_slots, out_slots, producers,
                 producers + 2 * G + 2 * writers, self.ring_bytes / 2**20)

        n_workers = producers + G + writers
        self.ch = ch = Channels(
            tasks=ctx.Queue(), ready=ctx.Queue(), done=[ctx.Queue() for _ in range(writers)], events=ctx.Queue(),
            free_in=ctx.Queue(), free_out=ctx.Queue(), logs=ctx.Queue(),
            window=ctx.Semaphore(out_slots), stop=ctx.Event(),
            current=ctx.Array("q", [-1] * n_workers, lock=False), parent_pid=os.getpid(),
        )
        for i in range(in_slots):
            ch.free_in.put(i)
        for i in range(out_slots):
            ch.free_out.put(i)
        handler = _ToLoggers()
        self.listener = logging.handlers.QueueListener(ch.logs, handler)
        self.listener.start()

        threads = self.workers.consumer_threads
        slot = 0
        # Consumers first: importing torch or pycaffe and reading the weights takes them longest.
        cargs = ConsumerArgs(cfg.engine, Path(cfg.model), B, threads, self.blob_specs, in_spec, out_spec)
        for i, dev in enumerate(devices):
            self._spawn(ctx, consumer_main, "consumer", i, slot, (dev, cargs), worker_env("consumer", dev, threads))
            slot += 1
        pargs = ProducerArgs(self.pre_spec, self.mean, self.input_shape, in_spec, cfg.on_error)
        for i in range(producers):
            self._spawn(ctx, producer_main, "producer", i, slot, (pargs,), worker_env("producer", None, 1))
            slot += 1
        for w in range(writers):
            mine = [(b, k) for b, k, _, _ in plan.batches if k % writers == w]
            shard_batches: dict[int, int] = {}
            for _, k in mine:
                shard_batches[k] = shard_batches.get(k, 0) + 1
            ranges = {k: (a, z) for k, a, z in plan.shards if k in shard_batches}
            wargs = WriterArgs(self.pq_dir, tuple(self.columns), dict(self.images.metadata), cfg.compression,
                               cfg.compression_level, tuple(mine), ranges, shard_batches, G, out_spec)
            self._spawn(ctx, writer_main, "writer", w, slot, (wargs,), worker_env("writer", None, 1))
            slot += 1
        self.slot_of = {(role, i): s for s, (_, role, i) in enumerate(self.procs)}
        return producers

    def _feed(self, plan: Plan, producers: int) -> None:
        """Give the producers their first tasks; each written batch tops the queue up (see Feeder)."""
        entries = self.images.entries

        def task(b: int, k: int, a: int, z: int) -> Task:
            return Task(b, k, a, tuple(e.key for e in entries[a:z]), tuple(str(e.path) for e in entries[a:z]))

        self.feeder = Feeder(self.ch.tasks.put, plan.batches, task, producers, ahead=self.window + producers)
        self.feeder.start()

    def _spawn(self, ctx, target, role: str, index: int, slot: int, payload: tuple,
               env: dict[str, str | None]) -> None:
        """Start ``target(index, slot, channels, *payload)`` in a new process with ``env`` in its environment.

        ``payload`` travels through shared memory (see savedeep/shm.py, start-up
        payloads), so that a worker dying at start-up cannot block this call. ``env``
        (savedeep.devices.worker_env: the GPU it may see, its thread pools) is in force
        before the child imports anything.
        """
        from savedeep.devices import start_process
        from savedeep.shm import put_payload
        from workers._loop import spawned

        ref, segment = put_payload(f"{role}{index}", payload)
        self.rings.append(segment)  # unlinked with the rings at shutdown
        p = ctx.Process(target=spawned, args=(target, index, slot, self.ch, ref), name=f"savedeep-{role}{index}",
                        daemon=True)
        start_process(p, env)
        self.procs.append((p, role, index))

    def _failure_from_events(self, timeout: float) -> WorkerFailed | None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.ch.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if isinstance(msg, WorkerFailed):
                return msg
            self._on_event(msg)

    def _on_event(self, msg: Any) -> None:
        if isinstance(msg, BatchWritten):
            self.written.append((time.perf_counter() - self.t0, msg.rows + msg.failures))
            self.rows += msg.rows
            self.failures += msg.failures
            if self.feeder is not None:
                self.feeder.top_up()
            if self.bar is not None:
                self.bar.update(msg.rows + msg.failures)
                if msg.failures:
                    self.bar.set_postfix(failures=self.failures, refresh=False)
        elif isinstance(msg, ShardWritten):
            from savedeep.output import disk_errors, write_manifest

            entry = self.manifest["shards"][msg.shard]
            entry.update(file=msg.file, rows=msg.rows, complete=True,
                         failures=[{"image": k, "reason": r} for k, r in msg.failures])
            with disk_errors(f"the manifest in {self.pq_dir}"):
                write_manifest(self.pq_dir, self.manifest)
            self.shards_done += 1
        elif isinstance(msg, WorkerStats):
            self.stats.append(msg)
        elif isinstance(msg, DeviceInfo):
            self.device_info[msg.index] = msg.info
        elif isinstance(msg, WorkerFailed):
            raise self._worker_error(msg)

    def _worker_error(self, f: WorkerFailed) -> SavedeepError:
        if f.exit_code in (2, 3, 4, 5):
            # A user's mistake found by a worker (an image under on_error: fail, a full disk): its
            # message says what to do; the traceback goes to the run log only.
            log.debug("%s %d's traceback:\n%s", f.role, f.index, f.traceback.rstrip())
            err = WorkerError(f.describe())
            err.exit_code = f.exit_code
            return err
        err = WorkerError(f"{f.describe()}\n\n{f.role} {f.index}'s traceback:\n{f.traceback.rstrip()}")
        # keep the cause's own exit code (4 for an image under on_error: fail, 5 for a full disk ...)
        err.exit_code = f.exit_code
        return err

    def _supervise(self, devices: list[str], producers: int) -> None:
        ch = self.ch
        exited: set[int] = set()
        producers_left = producers
        writers = [p for p, role, _ in self.procs if role == "writer"]
        next_check = 0.0
        while True:
            # Exit codes are checked every SUPERVISE_S whatever the event rate: a dead worker is
            # noticed while the others still stream events, not only once the pipeline stalls.
            try:
                msg = ch.events.get(timeout=SUPERVISE_S)
                self._on_event(msg)
                if time.monotonic() < next_check:
                    continue
            except queue.Empty:
                pass
            next_check = time.monotonic() + SUPERVISE_S
            for i, (p, role, index) in enumerate(self.procs):
                if i in exited or p.exitcode is None:
                    continue
                exited.add(i)
                if p.exitcode != 0:
                    failed = self._failure_from_events(2.0)
                    if failed is not None:
                        raise self._worker_error(failed)
                    batch = int(ch.current[self.slot_of[(role, index)]])
                    dev = f" on {devices[index]}" if role == "consumer" else ""
                    how = (f"was killed by signal {-p.exitcode} ({signal.Signals(-p.exitcode).name}"
                           + (f": shared memory ran out? see `df -h {SHM_DIR}`" if p.exitcode == -signal.SIGBUS else "")
                           + ")"
                           if p.exitcode < 0 else f"exited with code {p.exitcode} without reporting an error "
                           "(what it printed, if anything, is above)")
                    where = f" while on batch {batch}" if batch >= 0 else ""
                    raise WorkerError(f"{role} {index}{dev} (pid {p.pid}) {how}{where}; the run was stopped. "
                                      "Shards already written are kept: rerun with --resume to complete the output")
                if role == "producer":
                    producers_left -= 1
                    if producers_left == 0:
                        for _ in devices:
                            ch.ready.put(EndOfStream("parent"))
            if all(w.exitcode == 0 for w in writers):
                # Everything the writers sent is in the pipe before they exited.
                while True:
                    try:
                        self._on_event(ch.events.get(timeout=0.2))
                    except queue.Empty:
                        break
                return

    def _shutdown(self) -> None:
        """The one ordered shutdown: see NOTE [savedeep shutdown]."""
        ch = self.ch
        if ch is not None:
            ch.stop.set()
            deadline = time.monotonic() + JOIN_TIMEOUT_S
            for p, _, _ in self.procs:
                while p.is_alive() and time.monotonic() < deadline:
                    try:  # keep draining so no worker blocks on a full pipe while leaving
                        msg = ch.events.get(timeout=0.05)
                        if isinstance(msg, ShardWritten):
                            self._on_event(msg)  # a shard finished while stopping: keep it for --resume
                    except (queue.Empty, OSError, EOFError):
                        pass
                    except Exception:  # noqa: BLE001 - a message we cannot unpickle while stopping
                        pass
            for p, _, _ in self.procs:
                if p.is_alive():
                    p.terminate()
            for p, _, _ in self.procs:
                p.join(2.0)
                if p.is_alive():
                    p.kill()
                    p.join(2.0)
            queues = (ch.tasks, ch.ready, *ch.done, ch.events, ch.free_in, ch.free_out, ch.logs)
            for q in queues:
                q.cancel_join_thread()
            if self.listener is not None:
                try:
                    self.listener.stop()
                except Exception:  # noqa: BLE001
                    pass
                self.listener = None
            for q in queues:
                q.close()
        for r in self.rings:
            r.close()
        self.rings = []
        if getattr(self, "manifest", None) is not None and self.pq_dir.exists():
            try:
                adopt_finished_shards(self.pq_dir, self.manifest)
            except OSError as exc:  # e.g. the disk is full: --resume adopts them later
                log.warning("could not record finished shards in the manifest: %s", exc)
        if self.pq_dir.exists():
            for f in self.pq_dir.glob(".part-*.inprogress"):
                f.unlink(missing_ok=True)

    # -- the run ----------------------------------------------------------------------------
    def execute(self) -> RunResult:
        """Prepare, take the output's lock, run, finish; always shut down cleanly, then release the lock."""
        from savedeep.lock import OutputLock

        t0 = self.t0 = time.perf_counter()
        self._prepare()
        # Nothing of the output is touched before this (NOTE [savedeep output lock] in savedeep/lock.py).
        with OutputLock(self.config.output, fingerprint=self.config.fingerprint(), break_lock=self.break_lock):
            return self._execute_locked(t0)

    def _execute_locked(self, t0: float) -> RunResult:
        from savedeep.output import write_manifest

        cfg = self.config
        self._resumed_shards = {}
        self.written: list[tuple[float, int]] = []
        self.window = 0
        keep = self._output_state()
        plan, devices, producers, writers = self.pf.plan, self.pf.devices, self.pf.producers, self.pf.writers
        self.workers = self.pf.workers
        if keep != set(self.pf.keep):  # the preflight looked before the lock was taken
            raise OutputError(f"{self.pq_dir} changed while this run was starting (another run finished or "
                              "removed it); nothing was written: rerun the same command")

        self.pq_dir.mkdir(parents=True, exist_ok=True)
        self.manifest = None
        file_handler = self._run_log()

        def first_manifest() -> None:
            manifest = self._manifest(plan)
            for k, s in self._resumed_shards.items():
                manifest["shards"][k] = s
            from savedeep.output import disk_errors

            with disk_errors(f"the manifest in {self.pq_dir}"):
                write_manifest(self.pq_dir, manifest)
            self.manifest = manifest

        self.rows = sum(s["rows"] for s in self._resumed_shards.values())
        self.failures = sum(len(s["failures"]) for s in self._resumed_shards.values())
        self.shards_done = 0
        self.bar = None
        self.feeder: Feeder | None = None
        self.pipeline_wall = 0.0
        old_term, old_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

        def _on_term(signum, frame):
            raise Interrupted("stopped by SIGTERM")

        try:
            if threading_main():
                signal.signal(signal.SIGTERM, _on_term)
                # The parent owns Ctrl-C even when started with SIGINT ignored (a background
                # job of a non-interactive shell inherits SIG_IGN): it must stop in order.
                signal.signal(signal.SIGINT, signal.default_int_handler)
            if plan.batches:
                log.info("%d images (%d still to do) in %d shards; %s engine on %s; %d producer(s), "
                         "%d writer(s); batch %d; %d usable CPU(s) (affinity, cgroup quota), %d thread(s) per "
                         "consumer", len(self.images), sum(z - a for _, _, a, z in plan.batches), len(plan.shards),
                         cfg.engine, ", ".join(devices), producers, writers, cfg.batch_size, self.workers.cores,
                         self.workers.consumer_threads)
                if self.progress:
                    from tqdm import tqdm

                    self.bar = tqdm(total=len(self.images), initial=self.rows + self.failures, unit="img",
                                    desc="savedeep", dynamic_ncols=True, smoothing=0.1)
                t_start = time.perf_counter()
                producers = self._start(plan, devices, producers, writers)
                # The manifest exists before any work is given out, so before any shard.
                first_manifest()
                self._feed(plan, producers)
                self._supervise(devices, producers)
                self.pipeline_wall = time.perf_counter() - t_start
            else:
                first_manifest()
            self._finish(t0)
        except KeyboardInterrupt as exc:
            raise Interrupted(
                f"interrupted; {self.shards_done} shard(s) finished in this run are kept in {self.pq_dir}: "
                "rerun the same command with --resume to complete the output") from exc
        except Interrupted as exc:
            raise Interrupted(f"{exc}; the shards finished so far are kept in {self.pq_dir}: "
                              "rerun the same command with --resume to complete the output") from exc
        finally:
            if self.bar is not None:
                self.bar.close()
            self._shutdown()
            if threading_main():
                signal.signal(signal.SIGTERM, old_term)
                signal.signal(signal.SIGINT, old_int)
            if file_handler is not None:
                logging.getLogger("savedeep").removeHandler(file_handler)
                file_handler.close()
        busy = {}
        for role in ("producer", "consumer", "writer"):
            st = [s for s in self.stats if s.role == role]
            if st:
                # busy time over the time the pipeline ran, per worker of that role
                busy[role] = sum(s.busy_s for s in st) / max(len(st) * self.pipeline_wall, 1e-9)
        return RunResult(
            pickle=Path(cfg.output) if cfg.pickle else None, parquet_dir=self.pq_dir, images=len(self.images),
            rows=self.rows, failures=self.failures, skipped_files=dict(self.images.skipped),
            shards_done=self.shards_done, shards_kept=len(self._resumed_shards),
            wall_s=time.perf_counter() - t0, devices=devices if plan.batches else [], producers=producers,
            writers=writers, busy=busy, written=list(self.written), window=self.window,
            device_info=[self.device_info[i] for i in sorted(self.device_info)],
        )

    def _run_log(self) -> logging.Handler | None:
        path = self.config.log_file
        if path is None:
            return None
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(processName)s %(name)s %(levelname)s: %(message)s"))
        lg = logging.getLogger("savedeep")
        lg.addHandler(handler)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
        return handler

    def _finish(self, t0: float) -> None:
        from savedeep.output import disk_errors

        with disk_errors(f"the final output in {self.pq_dir}"):
            self._finish_output(t0)

    def _finish_output(self, t0: float) -> None:
        from savedeep.output import read_manifest, write_failures, write_manifest, write_pickle

        manifest = read_manifest(self.pq_dir)
        assert manifest is not None
        incomplete = [s["index"] for s in manifest["shards"] if not s.get("complete")]
        if incomplete:
            raise WorkerError(f"the writer ended but shards {incomplete} are not complete (a bug); rerun with --resume")
        failures = [f for s in manifest["shards"] for f in s["failures"]]
        manifest["failures_table"] = write_failures(self.pq_dir, failures).name
        # Provenance: each consumer's device (GPU name, UUID, driver, CUDA runtime, cuDNN on a GPU).
        manifest["devices"] = [self.device_info[i] for i in sorted(self.device_info)]
        manifest["complete"] = True
        manifest["failures"] = failures
        manifest["summary"] = {"rows": sum(s["rows"] for s in manifest["shards"]), "failures": len(failures),
                               "wall_s": round(time.perf_counter() - t0, 3)}
        manifest["pickle"] = {"path": str(self.config.output), "status": "pending" if self.config.pickle else "disabled"}
        write_manifest(self.pq_dir, manifest)
        if self.config.pickle:
            try:
                write_pickle(self.pq_dir, Path(self.config.output), self.config.max_pickle_bytes)
                manifest["pickle"]["status"] = "written"
            except OutputError:
                manifest["pickle"]["status"] = "refused: above max_pickle_bytes"
                write_manifest(self.pq_dir, manifest)
                raise
            write_manifest(self.pq_dir, manifest)
        log.info("done: %d rows, %d failures", manifest["summary"]["rows"], len(failures))


def threading_main() -> bool:
    """Signal handlers can only be installed from the main thread."""
    import threading

    return threading.current_thread() is threading.main_thread()
