"""The supervisor: starts the workers of a run, watches them, and shuts down in order.

What it does not do has its own home: every check and the plan before a worker
starts (NOTE [savedeep preflight] in savedeep/runner/preflight.py), the manifest (NOTE
[savedeep manifest] in savedeep/runner/manifest.py), what the user sees (progress bar,
run log, signals, busy statistics: savedeep/runner/ui.py). See NOTE [savedeep pipeline
data flow] in savedeep/runner/messages.py for what flows between the processes.

NOTE [savedeep shutdown]
========================

One method, :meth:`Run._shutdown`, ends every run, whatever happened:

1. stop issuing work: no more tasks are put;
2. signal stop: the shared ``stop`` flag (workers poll it every 0.2 s while
   blocked, and also notice a dead parent through ``getppid``);
3. drain: the parent keeps reading ``events`` so no worker blocks on a full
   pipe while leaving;
4. join every worker with a deadline; then SIGTERM, then SIGKILL the stragglers;
5. unlink both shared-memory rings (the parent created them; workers only map);
6. delete unfinished shard files (hidden ``.part-*.inprogress`` names) so that
   nothing half-written looks finished. The manifest lists only shards that
   were renamed into place (adopting those renamed but never reported, see
   NOTE [savedeep manifest]), which ``--resume`` keeps.

The parent owns SIGINT and SIGTERM (workers ignore SIGINT; the parent's handlers
are savedeep.runner.ui.parent_owns_signals); both end the run with exit code 130 and a
resumable output. Workers are started with the
``spawn`` method: a consumer must select its GPU before anything touches CUDA,
and forking a parent that has threads (the log listener, the progress bar) or
CUDA state is unsafe.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from savedeep.config import Config
from savedeep.runner.devices import (  # noqa: F401 - count_gpus, resolve_devices, size_rings ... are re-exported
    MAX_SLOTS,
    RING_BUDGET,
    SHM_DIR,
    SHM_RESERVE,
    count_gpus,
    plan_devices,
    resolve_devices,
    shm_free_bytes,
    size_rings,
)
from savedeep.errors import USER_MISTAKE_CODES, ConfigError, Interrupted, OutputError, SavedeepError, WorkerError
from savedeep.runner.manifest import Manifest
from savedeep.runner.messages import (
    BatchWritten,
    DeviceInfo,
    EndOfStream,
    ShardWritten,
    Task,
    WorkerFailed,
    WorkerStats,
)
from savedeep.runner.preflight import Plan, Preflight, make_plan  # noqa: F401 - re-exported
from savedeep.runner.shares import TaskShare, WholeOutput
from savedeep.runner.ui import LogListener, Progress, busy_fractions, console_log, parent_owns_signals, run_log

if TYPE_CHECKING:
    from savedeep.runner.shm import RingSpec
    from savedeep._workers._loop import Channels

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 10.0
SUPERVISE_S = 0.1  # how often the supervisor checks the workers' exit codes, whatever the event rate


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
    report: Path | None = None  # the HTML report savedeep.run wrote after the run (report: true), if any

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
        images = sum(n for _, n in self.written[self.window + 1 :])
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
            + (f"; first batch written {self.written[0][0]:.2f} s after the start" if self.written else "")
            + (f"; {self.shards_kept} shards kept from the interrupted run" if self.shards_kept else ""),
            f"devices: {', '.join(self.devices) or '-'}; producers: {self.producers}; writers: {self.writers}",
        ]
        gpus = [
            f"{d['device']} = {d.get('name', '?')} {d.get('uuid', '')}".rstrip()
            for d in self.device_info
            if str(d.get("device", "")).startswith("cuda")
        ]
        if gpus:
            lines.append(f"GPUs: {'; '.join(gpus)}")
        if self.busy:
            stages = ", ".join(f"{role} {frac:.0%}" for role, frac in self.busy.items())
            bottleneck = max(self.busy, key=self.busy.get)
            lines.append(f"busy: {stages} (the busiest stage, {bottleneck}, bounds the speed)")
        if any(self.skipped_files.values()):
            lines.append(
                "files skipped by extension: "
                + ", ".join(f"{k or '(none)'} {v}" for k, v in self.skipped_files.items())
            )
        lines.append(f"output: {self.pickle or self.parquet_dir}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- feeding


class Feeder:
    """Hands the producers their tasks a few at a time instead of all at the start.

    ``start`` queues ``ahead`` tasks; then each batch written (the parent hears of every
    one, empty batches included) queues one more, and after the last task every producer
    gets an end-of-stream. A producer needs a task and one of the window's credits to
    start a batch, and at most ``window`` batches are started but unwritten, so with
    ``ahead = window + producers`` a producer holding a credit never waits for a task.
    The parent thus holds a few tasks rather than one per batch of the run, which for a
    million images took memory and seconds to build (benchmarks/RESULTS.md) and sat in
    the task queue's buffer until the producers took them.
    """

    def __init__(
        self,
        put: Callable[[Any], None],
        batches: Sequence[tuple[int, int, int, int]],
        make_task: Callable[[int, int, int, int], Any],
        producers: int,
        ahead: int,
    ) -> None:
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


def run(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    break_lock: bool = False,
    task: Any = None,
) -> RunResult:
    """Run the whole pipeline for ``config``; returns when the output is complete.

    ``break_lock``: take the output's lock even if a run on another host holds it (see savedeep/runner/lock.py).
    ``task`` (savedeep.runner.tasks.TaskSpec): compute only that task's shards into the shared output; the
    output is complete once ``savedeep.runner.tasks.merge`` ran (NOTE [savedeep tasks] in savedeep/runner/tasks.py).
    """
    if getattr(mp.current_process(), "_inheriting", False):
        # We are inside a worker that is importing the user's script: the script
        # calls savedeep.run at import time, and every worker would run it again.
        main = getattr(sys.modules.get("__mp_main__"), "__file__", None) or "your script"
        raise ConfigError(
            f"savedeep.run() was called while a savedeep worker process was importing {main}. Workers are "
            "started with the 'spawn' method, which imports the main script again: put the code that calls "
            'savedeep.run() under `if __name__ == "__main__":`'
        )
    with console_log():  # the warnings on stderr also where the run log is their only handler (an API call)
        return Run(
            config, resume=resume, overwrite=overwrite, progress=progress, break_lock=break_lock, task=task
        ).execute()


class Run:
    """One run of the pipeline, the parent's side: start the workers, watch them, shut down in order.

    What it calls: savedeep/runner/preflight.py plans (every check, the shards, the workers, the
    rings), savedeep/runner/manifest.py records (NOTE [savedeep manifest]), savedeep/runner/ui.py shows.
    """

    def __init__(
        self,
        config: Config,
        *,
        resume: bool,
        overwrite: bool,
        progress: bool,
        break_lock: bool = False,
        task: Any = None,
    ) -> None:
        if resume and overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: choose one")
        self.config, self.resume, self.overwrite, self.progress = config, resume, overwrite, progress
        self.break_lock = break_lock
        self.task = task  # savedeep.runner.tasks.TaskSpec, or None for a whole run
        self.share = WholeOutput() if task is None else TaskShare(task)  # what differs for a task (shares.py)
        self.pq_dir = config.parquet_dir
        self.pf: Preflight | None = None  # set first thing in execute
        self.manifest: Manifest | None = None  # exists before any work is given out
        self.resumed: dict[int, dict] = {}  # manifest entries of the shards --resume keeps
        # the processes and what they share
        self.procs: list[tuple[Any, str, int]] = []  # (process, role, index)
        self.row_of: dict[tuple[str, int], int] = {}  # (role, index) -> its row in ch.current
        self.rings: list[Any] = []  # shared-memory segments to unlink at shutdown
        self.ch: Channels | None = None
        self.listener: LogListener | None = None
        self.feeder: Feeder | None = None
        # what the workers reported
        self.bar: Progress | None = None
        self.stats: list[WorkerStats] = []
        self.device_info: dict[int, dict] = {}  # consumer index -> DeviceInfo.info
        self.rows = self.failures = self.shards_done = 0
        self.written: list[tuple[float, int]] = []  # (s since t0, images) per batch written
        self.window = 0  # batches in flight at most
        self.t0 = self.pipeline_wall = 0.0

    @property
    def model_hashes(self) -> dict[str, str]:
        """sha256 of the prototxt, the weights and the mean (computed in the background)."""
        return self.pf.model_hashes

    # -- the run ----------------------------------------------------------------------------
    def execute(self) -> RunResult:
        """Preflight, take the output's lock, run, finish; always shut down cleanly, then release the lock."""
        from savedeep.runner.lock import OutputLock
        from savedeep.runner.preflight import preflight

        self.t0 = time.perf_counter()
        # Every check before a worker starts: NOTE [savedeep preflight] in savedeep/runner/preflight.py.
        self.pf = preflight(
            self.config, resume=self.resume, overwrite=self.overwrite, break_lock=self.break_lock, task=self.task
        )
        # Nothing of the output is touched before this (NOTE [savedeep output lock] in savedeep/runner/lock.py).
        with OutputLock(
            self.config.output,
            fingerprint=self.config.fingerprint(),
            break_lock=self.break_lock,
            task=self.share.lock_index,
        ):
            self._take_output()
            self.pq_dir.mkdir(parents=True, exist_ok=True)
            with run_log(self.share.log_file(self.config.log_file)), parent_owns_signals(self._stack_dump_pids):
                self.share.announce()
                self._run()
        return self._result()

    def _stack_dump_pids(self) -> list[int]:
        """The workers that SIGUSR1 is passed on to: those set up (before that, it would end the process)."""
        from savedeep._workers._loop import STARTING

        if self.ch is None:
            return []
        return [
            p.pid
            for row, (p, _, _) in enumerate(self.procs)
            if p.pid and p.exitcode is None and self.ch.current[row] != STARTING
        ]

    def _take_output(self) -> None:
        """Act on the preflight's verdict on the existing output: delete it (--overwrite) or tidy it for --resume."""
        self.resumed = self.share.take(self.config, self.pf, self.pq_dir, self.overwrite)
        if set(self.resumed) != set(self.pf.keep):  # the preflight looked before the lock was taken
            raise OutputError(
                f"{self.pq_dir} changed while this run was starting (another run finished or "
                "removed it); nothing was written: rerun the same command"
            )
        self.rows = sum(s["rows"] for s in self.resumed.values())
        self.failures = sum(len(s["failures"]) for s in self.resumed.values())

    def _run(self) -> None:
        """The pipeline (if anything is left to do), then the manifest's finish; _shutdown whatever happens."""
        pf = self.pf
        try:
            if pf.plan.batches:
                self._log_plan()
                self.bar = Progress(self.progress, self.share.images(pf), self.rows + self.failures)
                t_start = time.perf_counter()
                self._start()
                self._create_manifest()  # before any work is given out, so before any shard
                self._feed()
                self._supervise(pf.devices, pf.producers)
                self.pipeline_wall = time.perf_counter() - t_start
            else:
                self._create_manifest()
            devices = [self.device_info[i] for i in sorted(self.device_info)]
            self.share.finish(self.manifest, self.config, devices, time.perf_counter() - self.t0)
        except KeyboardInterrupt as exc:
            raise Interrupted(
                f"interrupted; {self.shards_done} shard(s) finished in this run are kept in {self.pq_dir}: "
                "rerun the same command with --resume to complete the output"
            ) from exc
        except Interrupted as exc:
            raise Interrupted(
                f"{exc}; the shards finished so far are kept in {self.pq_dir}: "
                "rerun the same command with --resume to complete the output"
            ) from exc
        finally:
            if self.bar is not None:
                self.bar.close()
            self._shutdown()

    def _create_manifest(self) -> None:
        self.manifest = self.share.create_manifest(self.config, self.pf, self.pq_dir, self.resumed)

    def _log_plan(self) -> None:
        pf, cfg = self.pf, self.config
        log.info(
            "%d images (%d still to do) in %d shards; %s engine on %s; %d producer(s), %d writer(s); batch %d; "
            "%d usable CPU(s) (affinity, cgroup quota), %d thread(s) per consumer",
            len(pf.images),
            sum(z - a for _, _, a, z in pf.plan.batches),
            len(pf.plan.shards),
            cfg.engine,
            ", ".join(pf.devices),
            pf.producers,
            pf.writers,
            cfg.batch_size,
            pf.workers.cores,
            pf.workers.consumer_threads,
        )
        if pf.workers.note:
            log.info("%s", pf.workers.note)

    def _result(self) -> RunResult:
        pf, cfg = self.pf, self.config
        return RunResult(
            pickle=self.share.pickle(cfg),
            parquet_dir=self.pq_dir,
            images=self.share.images(pf),
            rows=self.rows,
            failures=self.failures,
            skipped_files=dict(pf.images.skipped),
            shards_done=self.shards_done,
            shards_kept=len(self.resumed),
            wall_s=time.perf_counter() - self.t0,
            devices=pf.devices if pf.plan.batches else [],
            producers=pf.producers,
            writers=pf.writers,
            busy=busy_fractions(self.stats, self.pipeline_wall),
            written=list(self.written),
            window=self.window,
            device_info=[self.device_info[i] for i in sorted(self.device_info)],
        )

    # -- starting the processes -------------------------------------------------------------
    def _start(self) -> None:
        """Create the rings and the channels, then spawn every worker."""
        in_spec, out_spec = self._create_rings()
        self._create_channels()
        self._spawn_workers(in_spec, out_spec)

    def _create_rings(self) -> tuple[RingSpec, RingSpec]:
        """The input and output rings, sized by the preflight (see savedeep.runner.devices.size_rings)."""
        from savedeep.runner.shm import Field, Ring, new_ring_spec

        pf, B = self.pf, self.config.batch_size
        # More input slots than window credits (out_slots) would never be filled,
        # see NOTE [savedeep pipeline data flow].
        in_spec = new_ring_spec("in", pf.in_slots, [Field("data", (B, *pf.input_shape), "float32")])
        out_spec = new_ring_spec("out", pf.out_slots, [Field(c.name, (B, *c.shape), c.dtype) for c in pf.columns])
        self.rings = [Ring.create(in_spec), Ring.create(out_spec)]
        self.window = pf.out_slots  # batches in flight at most (the window's credits)
        G, W = len(pf.devices), pf.writers
        log.info(
            "rings: %d input slots, %d output slots (the window: batches in flight; %d producers + 2 per "
            "consumer + 2 per writer need %d), %.1f MiB of shared memory",
            pf.in_slots,
            pf.out_slots,
            pf.producers,
            pf.producers + 2 * G + 2 * W,
            (in_spec.nbytes + out_spec.nbytes) / 2**20,
        )
        return in_spec, out_spec

    def _create_channels(self) -> None:
        """The queues and shared flags (workers/_loop.py, Channels), and the listener of the workers' logs."""
        from savedeep._workers._loop import STARTING, Channels, StopFlag

        ctx, pf = mp.get_context("spawn"), self.pf
        n_workers = pf.producers + len(pf.devices) + pf.writers
        self.ch = ch = Channels(
            tasks=ctx.Queue(),
            ready=ctx.Queue(),
            done=[ctx.Queue() for _ in range(pf.writers)],
            events=ctx.Queue(),
            free_in=ctx.Queue(),
            free_out=ctx.Queue(),
            logs=ctx.Queue(),
            window=ctx.Semaphore(pf.out_slots),
            stop=StopFlag(ctx),
            current=ctx.Array("q", [STARTING] * n_workers, lock=False),
            parent_pid=os.getpid(),
        )
        for i in range(pf.in_slots):
            ch.free_in.put(i)
        for i in range(pf.out_slots):
            ch.free_out.put(i)
        self.listener = LogListener(ch.logs)
        self.listener.start()

    def _spawn_workers(self, in_spec: RingSpec, out_spec: RingSpec) -> None:
        from savedeep.runner.devices import worker_env
        from savedeep._workers.consumer import ConsumerArgs, consumer_main
        from savedeep._workers.producer import ProducerArgs, producer_main
        from savedeep._workers.writer import WriterArgs, writer_main

        cfg, pf = self.config, self.pf
        threads, G = pf.workers.consumer_threads, len(pf.devices)
        # Consumers first: importing torch or pycaffe and reading the weights takes them longest.
        cargs = ConsumerArgs(
            cfg.engine, Path(cfg.model), cfg.batch_size, threads, pf.blob_specs, in_spec, out_spec, time.time()
        )
        for i, dev in enumerate(pf.devices):
            self._spawn(consumer_main, "consumer", i, (dev, cargs), worker_env("consumer", dev, threads))
        pargs = ProducerArgs(pf.pre_spec, pf.mean, pf.input_shape, in_spec, cfg.on_error)
        for i in range(pf.producers):
            self._spawn(producer_main, "producer", i, (pargs,), worker_env("producer", None, 1))
        for w in range(pf.writers):
            mine, ranges, shard_batches = pf.plan.for_writer(w, pf.writers)
            wargs = WriterArgs(
                self.pq_dir,
                tuple(pf.columns),
                dict(pf.images.metadata),
                cfg.compression,
                cfg.compression_level,
                mine,
                ranges,
                shard_batches,
                G,
                out_spec,
            )
            self._spawn(writer_main, "writer", w, (wargs,), worker_env("writer", None, 1))

    def _spawn(self, target, role: str, index: int, payload: tuple, env: dict[str, str | None]) -> None:
        """Start ``target(index, row, channels, *payload)`` in a new process with ``env`` in its environment.

        ``row`` is the worker's row in ``channels.current``. ``payload`` travels through
        shared memory (see savedeep/runner/shm.py, start-up payloads), so that a worker dying at
        start-up cannot block this call. ``env`` (savedeep.runner.devices.worker_env: the GPU it
        may see, its thread pools) is in force before the child imports anything.
        """
        from savedeep.runner.devices import start_process
        from savedeep.runner.shm import put_payload
        from savedeep._workers._loop import spawned

        ref, segment = put_payload(f"{role}{index}", payload)
        self.rings.append(segment)  # unlinked with the rings at shutdown
        row = len(self.procs)
        p = mp.get_context("spawn").Process(
            target=spawned, args=(target, index, row, self.ch, ref), name=f"savedeep-{role}{index}", daemon=True
        )
        start_process(p, env)
        self.procs.append((p, role, index))
        self.row_of[(role, index)] = row

    def _feed(self) -> None:
        """Give the producers their first tasks; each written batch tops the queue up (see Feeder)."""
        entries, producers = self.pf.images.entries, self.pf.producers

        def task(b: int, k: int, a: int, z: int) -> Task:
            return Task(b, k, a, tuple(e.key for e in entries[a:z]), tuple(str(e.path) for e in entries[a:z]))

        self.feeder = Feeder(self.ch.tasks.put, self.pf.plan.batches, task, producers, ahead=self.window + producers)
        self.feeder.start()

    # -- watching ---------------------------------------------------------------------------
    def _on_event(self, msg: Any) -> None:
        if isinstance(msg, BatchWritten):
            n = msg.rows + msg.failures
            self.written.append((time.perf_counter() - self.t0, n))
            self.rows += msg.rows
            self.failures += msg.failures
            if self.feeder is not None:
                self.feeder.top_up()
            if self.bar is not None:
                self.bar.update(n, self.failures, msg.failures)
        elif isinstance(msg, ShardWritten):
            self.manifest.record_shard(msg.shard, msg.file, msg.rows, msg.failures)
            self.shards_done += 1
        elif isinstance(msg, WorkerStats):
            self.stats.append(msg)
        elif isinstance(msg, DeviceInfo):
            self.device_info[msg.index] = msg.info
        elif isinstance(msg, WorkerFailed):
            raise self._worker_error(msg)

    def _worker_error(self, f: WorkerFailed) -> SavedeepError:
        if f.exit_code in USER_MISTAKE_CODES:
            # A user's mistake found by a worker (an image under on_error: fail, a full disk): its
            # message says what to do; the traceback goes to the run log only.
            log.debug("%s %d's traceback:\n%s", f.role, f.index, f.traceback.rstrip())
            err = WorkerError(f.describe())
        else:
            err = WorkerError(f"{f.describe()}\n\n{f.role} {f.index}'s traceback:\n{f.traceback.rstrip()}")
        # keep the cause's own exit code (4 for an image under on_error: fail, 5 for a full disk ...)
        err.exit_code = f.exit_code
        return err

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

    def _supervise(self, devices: list[str], producers: int) -> None:
        """Handle events until every writer has exited cleanly; raise on the first worker that failed."""
        exited: set[int] = set()
        producers_left = producers
        writers = [p for p, role, _ in self.procs if role == "writer"]
        next_check = 0.0
        while True:
            # Exit codes are checked every SUPERVISE_S whatever the event rate: a dead worker is
            # noticed while the others still stream events, not only once the pipeline stalls.
            try:
                msg = self.ch.events.get(timeout=SUPERVISE_S)
                self._on_event(msg)
                if isinstance(msg, WorkerStats) and msg.role == "writer":
                    if {s.index for s in self.stats if s.role == "writer"} == {
                        i for _, r, i in self.procs if r == "writer"
                    }:
                        # every writer sent its last message and is leaving: check at once, not a poll later
                        for w in writers:
                            w.join(1.0)
                        next_check = 0.0
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
                    raise self._failure_from_events(2.0) or self._death(p, role, index, devices)
                if role == "producer":
                    producers_left -= 1
                    if producers_left == 0:
                        for _ in devices:
                            self.ch.ready.put(EndOfStream("parent"))
            if all(w.exitcode == 0 for w in writers):
                break
        # The output is complete. Each worker's last message is its WorkerStats, and whatever a worker
        # sent is in the pipe once it has exited: read until every worker has either sent its stats
        # or exited, then what is left. A worker's own exit (a forward engine's teardown takes 0.3 s)
        # goes on beside the parent's finish; _shutdown joins it.
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while time.monotonic() < deadline and not self._all_reported():
            try:
                self._on_event(self.ch.events.get(timeout=0.02))
            except queue.Empty:
                pass
        while True:
            try:
                self._on_event(self.ch.events.get(timeout=0))
            except queue.Empty:
                return

    def _all_reported(self) -> bool:
        """Whether every worker has sent its WorkerStats or exited (so nothing more will come from it)."""
        reported = {(s.role, s.index) for s in self.stats}
        return all(p.exitcode is not None or (role, index) in reported for p, role, index in self.procs)

    def _death(self, p: Any, role: str, index: int, devices: list[str]) -> WorkerError:
        """The error for a worker that exited non-zero without a word (SIGKILL, segfault, os._exit)."""
        batch = int(self.ch.current[self.row_of[(role, index)]])
        dev = f" on {devices[index]}" if role == "consumer" else ""
        if p.exitcode < 0:
            bus = f": shared memory ran out? see `df -h {SHM_DIR}`" if p.exitcode == -signal.SIGBUS else ""
            how = f"was killed by signal {-p.exitcode} ({signal.Signals(-p.exitcode).name}{bus})"
        else:
            how = f"exited with code {p.exitcode} without reporting an error (what it printed, if anything, is above)"
        where = f" while on batch {batch}" if batch >= 0 else ""
        return WorkerError(
            f"{role} {index}{dev} (pid {p.pid}) {how}{where}; the run was stopped. "
            "Shards already written are kept: rerun with --resume to complete the output"
        )

    # -- the end ----------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """The one ordered shutdown: see NOTE [savedeep shutdown]."""
        if self.ch is not None:
            self.ch.stop.set()
            self._drain_while_joining()
            for p, _, _ in self.procs:
                if p.is_alive():
                    p.terminate()
            for p, _, _ in self.procs:
                p.join(2.0)
                if p.is_alive():
                    p.kill()
                    p.join(2.0)
            self._close_channels()
        for r in self.rings:
            r.close()
        self.rings = []
        if self.manifest is not None and self.pq_dir.exists():
            try:
                self.manifest.adopt_finished()
                self.manifest.fold()  # the file alone lists every shard done, for readers that ignore journals
            except OSError as exc:  # e.g. the disk is full: --resume adopts them later
                log.warning("could not record finished shards in the manifest: %s", exc)
        if self.pq_dir.exists():
            from savedeep.data.output import shard_name

            mine = {f".{shard_name(k)}.inprogress" for k in self.pf.plan.todo} if self.pf is not None else set()
            for f in self.pq_dir.glob(".part-*.inprogress"):
                if f.name in mine:  # never another task's file in progress
                    f.unlink(missing_ok=True)
        if self.manifest is not None:
            self.share.stopped(self.manifest)

    def _drain_while_joining(self) -> None:
        """Wait up to JOIN_TIMEOUT_S for the workers to leave, reading events so none blocks on a full pipe."""
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for p, _, _ in self.procs:
            while p.is_alive() and time.monotonic() < deadline:
                try:
                    msg = self.ch.events.get(timeout=0.05)
                    if isinstance(msg, ShardWritten):
                        self._on_event(msg)  # a shard finished while stopping: keep it for --resume
                except (queue.Empty, OSError, EOFError):
                    pass
                except Exception:  # noqa: BLE001 - a message we cannot unpickle while stopping
                    pass

    def _close_channels(self) -> None:
        ch = self.ch
        queues = ch.queues()
        for q in queues:
            q.cancel_join_thread()
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        for q in queues:
            q.close()
