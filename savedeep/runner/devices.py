"""CPUs, workers and rings: how many CPUs this process may use, how many workers of each role, how deep the rings.

Everything here runs in the parent without importing torch or pycaffe. Which GPUs
exist is :mod:`savedeep.engines.gpus` (re-exported here for the run's callers).

- :func:`worker_env` is the environment of each spawned worker: a GPU consumer
  sees only its own device (``CUDA_VISIBLE_DEVICES`` = that entry of the
  parent's visible list) and uses ``cuda:0`` inside; producers, writers and CPU
  consumers see no GPU; every BLAS/OpenMP pool is sized to the worker's share of
  the CPUs. :func:`start_process` applies it around ``Process.start()`` so it is
  in force before the child imports anything.
- :func:`usable_cpus` counts the CPUs this process may run on (affinity and
  the cgroup CPU quota), not the machine's.
- :func:`plan_workers` and :func:`size_rings` choose producers, writers and
  the in-flight window so that every producer can work; :func:`plan_cpu` is
  the CPU cost model behind ``cpu_consumers: auto``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from savedeep.engines.gpus import (  # noqa: F401 - the GPU discovery's names stay importable from here
    CUDA_LIBS,
    MIN_DRIVER,
    PROBE_TIMEOUT_S,
    PROC_DRIVER_VERSION,
    PROC_GPUS,
    DriverProbe,
    GpuCount,
    caffe_cuda_version,
    caffe_has_cuda,
    check_driver,
    consumer_provenance,
    count_gpus,
    cuda_version_str,
    device_index,
    driver_release,
    gpu_identity,
    local_device,
    nvidia_device_files,
    parse_probe,
    probe_driver,
    proc_gpu_count,
    resolve_devices,
    runtime_for,
    set_device_order,
    torch_cuda_version,
    visible_entries,
)
from savedeep.errors import ConfigError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------- CPUs


def _cgroup_v2_quota(cgroup_root: Path, rel: str) -> float | None:
    best = None
    parts = [p for p in rel.strip("/").split("/") if p]
    for k in range(len(parts), -1, -1):
        f = cgroup_root.joinpath(*parts[:k], "cpu.max")
        try:
            quota, period = f.read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota != "max" and float(period) > 0:
            q = float(quota) / float(period)
            best = q if best is None else min(best, q)
    return best


def _cgroup_v1_quota(cgroup_root: Path, rel: str) -> float | None:
    best = None
    for d in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        base = cgroup_root / d
        parts = [p for p in rel.strip("/").split("/") if p]
        for k in range(len(parts), -1, -1):
            try:
                quota = int((base.joinpath(*parts[:k], "cpu.cfs_quota_us")).read_text())
                period = int((base.joinpath(*parts[:k], "cpu.cfs_period_us")).read_text())
            except (OSError, ValueError):
                continue
            if quota > 0 and period > 0:
                best = quota / period if best is None else min(best, quota / period)
    return best


def cgroup_cpu_quota(
    proc_cgroup: Path = Path("/proc/self/cgroup"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> float | None:
    """The CPU quota (in CPUs, e.g. 2.5) of this process's cgroup and its ancestors, or None if none is set."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        hid, controllers, rel = (line.split(":", 2) + ["", ""])[:3]
        if hid == "0" and controllers == "":
            q = _cgroup_v2_quota(cgroup_root, rel)
            if q is None and (cgroup_root / "unified").is_dir():
                q = _cgroup_v2_quota(cgroup_root / "unified", rel)
        elif "cpu" in controllers.split(","):
            q = _cgroup_v1_quota(cgroup_root, rel)
        else:
            continue
        if q is not None:
            quotas.append(q)
    return min(quotas) if quotas else None


def usable_cpus(affinity: set[int] | None = None, quota: float | None | bool = True) -> int:
    """CPUs this process may use: its affinity mask, further limited by the cgroup CPU quota (rounded up)."""
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            affinity = set(range(os.cpu_count() or 1))
    n = max(1, len(affinity))
    q = cgroup_cpu_quota() if quota is True else quota
    if isinstance(q, (int, float)) and not isinstance(q, bool) and q > 0:
        n = min(n, max(1, math.ceil(q - 1e-9)))
    return n


# ------------------------------------------------------------------------ worker environment

THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS",
)


def worker_env(
    role: str, device: str | None, threads: int, parent_env: Mapping[str, str] | None = None
) -> dict[str, str | None]:
    """The environment changes of one worker: its GPU (or none) and its thread pools.

    A GPU consumer of ``cuda:N`` sees only entry N of the parent's ``CUDA_VISIBLE_DEVICES``
    (N itself when unset), so it opens a context on its own GPU only, as device 0. Every
    other worker sees no GPU. A value None means "remove".
    """
    env = os.environ if parent_env is None else parent_env
    changes: dict[str, str | None] = {v: str(max(1, threads)) for v in THREAD_VARS}
    index = device_index(device) if device else None
    if role == "consumer" and index is not None:
        visible = visible_entries(env)
        if visible is None:
            changes["CUDA_VISIBLE_DEVICES"] = str(index)
        elif index < len(visible):
            changes["CUDA_VISIBLE_DEVICES"] = visible[index]
        else:
            raise ConfigError(
                f"{device}: CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r} has no entry "
                f"{index} (GPU ids are positions within it)"
            )
        changes["CUDA_DEVICE_ORDER"] = env.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    else:
        changes["CUDA_VISIBLE_DEVICES"] = ""
    return changes


_ENV_LOCK = threading.Lock()


@contextmanager
def environment(changes: Mapping[str, str | None]) -> Iterator[None]:
    """Apply ``changes`` to this process's environment for the duration (a spawned child inherits it)."""
    with _ENV_LOCK:
        old = {k: os.environ.get(k) for k in changes}
        try:
            for k, v in changes.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def start_process(process, changes: Mapping[str, str | None]) -> None:
    """``process.start()`` with the environment ``changes`` in force from the child's first instruction."""
    with environment(changes):
        process.start()


# ------------------------------------------------------------------------- workers and window


@dataclass(frozen=True)
class Workers:
    """How many producers, writers, and threads per consumer."""

    producers: int
    writers: int
    consumer_threads: int
    cores: int
    note: str = ""  # why these counts (cpu_consumers auto) and the consumers' memory: for the run log


def plan_workers(
    cores: int,
    devices: Sequence[str],
    producers: int | str,
    writers: int | str,
    consumer_threads: int | str,
    batches: int,
    shards: int,
) -> Workers:
    """Producers, writers and consumer threads for ``cores`` usable CPUs and these consumers."""
    gpus = sum(d != "cpu" for d in devices)
    cpu_consumers = len(devices) - gpus
    if writers == "auto":
        # One writer keeps up with CPU consumers; beside GPUs, one per 4 spare cores, at most one per GPU.
        writers = 1 if not gpus else max(1, min(gpus, (cores - gpus) // 4))
    writers = max(1, min(int(writers), max(1, shards)))
    if producers == "auto":
        producers = max(1, cores - len(devices) - writers)
    producers = max(1, min(int(producers), max(1, batches)))
    if consumer_threads != "auto":
        threads = int(consumer_threads)
    elif cpu_consumers:
        # Measured on 2 cores (benchmarks/RESULTS.md): the default gives every core to the forward.
        threads = max(1, cores // max(1, cpu_consumers))
    else:
        # A GPU consumer's own CPU work (copies, reductions) gets the cores producers and writers leave.
        threads = max(1, (cores - producers - writers) // max(1, gpus))
    return Workers(producers, writers, threads, cores)


RING_BUDGET = 256 * 2**20  # bytes per ring beyond the minimum number of slots
MAX_SLOTS = 16  # the output ring grows to this many slots if it has fewer (the minimums may exceed it)
SHM_DIR = "/dev/shm"
SHM_RESERVE = 4 * 2**20  # of the free space in SHM_DIR, left to others (semaphores, other programs)


@dataclass(frozen=True)
class Rings:
    """The rings' depth, the in-flight window, and the producers that window lets work."""

    in_slots: int
    out_slots: int
    producers: int
    note: str = ""

    @property
    def window(self) -> int:
        return self.out_slots


def ring_minimums(producers: int, consumers: int, writers: int) -> tuple[int, int]:
    """(input, output) slots for every stage to have work in hand.

    A producer needs a window credit and an input slot for each batch; the window (= output
    slots) must also cover what the consumers (one computing, one queued) and the writers
    (one writing, one arriving) hold, or some producers always wait for a credit.
    """
    return producers + 2 * consumers, producers + 2 * consumers + 2 * writers


def size_rings(
    in_bytes: int, out_bytes: int, producers: int, consumers: int, writers: int, fixed: int | None, free: int | None
) -> Rings:
    """Slots of the input and output rings (the output ring's depth is the window), within the shared memory there is.

    Every producer gets a credit and an input slot (see :func:`ring_minimums`); beyond that
    the output ring grows to RING_BUDGET (at most MAX_SLOTS slots) and the input
    ring follows it, never deeper than the window (a slot beyond it is never filled). Where
    /dev/shm cannot hold that, the producers are capped to what fits, with a warning; where
    not even one producer's share fits, the rings shrink to one slot each (slower, still
    correct); where even one batch each does not fit, a ConfigError before anything starts.
    """
    usable = None if free is None else max(0, free - SHM_RESERVE)
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    how = (
        "lower batch_size (the rings grow with it), save fewer or reduced blobs, or give the machine more "
        f"shared memory (Docker: --shm-size=2g; otherwise remount {SHM_DIR} with a larger size)"
    )
    if fixed:
        need = fixed * (in_bytes + out_bytes)
        if usable is not None and need > usable:
            raise ConfigError(
                f"ring_slots: {fixed} slots per ring need {mib(need)} of shared memory but {SHM_DIR} "
                f"has {mib(free)} free: lower ring_slots (or leave it unset), or {how}"
            )
        can = max(1, fixed - 2 * consumers - 2 * writers)
        note = ""
        if can < producers:
            note = (
                f"ring_slots {fixed} leaves window credits for {can} of {producers} producers: "
                f"{producers - can} would always wait, so {can} are started"
            )
            log.warning("%s", note)
        return Rings(fixed, fixed, min(producers, can), note)
    if usable is not None and in_bytes + out_bytes > usable:
        raise ConfigError(
            f"{SHM_DIR} has {mib(free)} free, and this run needs at least {mib(in_bytes + out_bytes)} of shared "
            f"memory (one input batch of {mib(in_bytes)} and one output batch of {mib(out_bytes)}): {how}"
        )
    fits = lambda i, o: usable is None or i * in_bytes + o * out_bytes <= usable  # noqa: E731
    note = ""
    p = producers
    in_min, out_min = ring_minimums(p, consumers, writers)
    if not fits(in_min, out_min):
        while p > 1 and not fits(*ring_minimums(p, consumers, writers)):
            p -= 1
        in_min, out_min = ring_minimums(p, consumers, writers)
        if fits(in_min, out_min):
            note = (
                f"{SHM_DIR} has {mib(free)} free: room for {in_min} input and {out_min} output batches, "
                f"enough for {p} of {producers} producers, so {p} are started; to run them all, {how}"
            )
            log.warning("%s", note)
    budget = RING_BUDGET if usable is None else min(RING_BUDGET, usable // 2)
    out_slots = max(out_min, min(MAX_SLOTS, budget // max(out_bytes, 1)))
    in_slots = max(in_min, min(out_slots, budget // max(in_bytes, 1)))
    # Too big: give up slots beyond the minimums first, then below them, the bigger ring first.
    for floor_in, floor_out in ((in_min, out_min), (1, 1)):
        while not fits(in_slots, out_slots):
            can_in, can_out = in_slots > floor_in, out_slots > floor_out
            if not (can_in or can_out):
                break
            if can_in and (not can_out or in_slots * in_bytes >= out_slots * out_bytes):
                in_slots -= 1
            else:
                out_slots -= 1
        in_slots = min(in_slots, out_slots)
    if in_slots < in_min or out_slots < out_min:
        note = (
            f"{SHM_DIR} has {mib(free)} free: the rings hold {in_slots} input and {out_slots} output batches "
            f"instead of at least {in_min} and {out_min}, so stages will wait for each other; "
            + how.replace("lower", "to avoid this, lower", 1)
        )
        log.warning("%s", note)
    return Rings(in_slots, out_slots, p, note)


def shm_free_bytes() -> int | None:
    """Free bytes in the shared-memory filesystem, or None where it cannot be known."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def plan_devices(
    cfg, batches: int, shards: int, load: CpuLoad | None = None, images: int | None = None
) -> tuple[list[str], Workers]:
    """The consumers' devices and the worker counts of a run of ``cfg`` (a savedeep Config), checked.

    Sets CUDA_DEVICE_ORDER=PCI_BUS_ID when unset (GPU ids then match nvidia-smi), counts the
    CUDA devices in a subprocess, and stops before anything starts when the driver is too old
    for the engine's CUDA runtime. On the CPU, ``cpu_consumers: auto`` takes its consumers,
    threads, producers and writers from :func:`plan_cpu` over ``load`` (one consumer without it).
    """
    cores = usable_cpus()
    cpu = None
    if cfg.cpu_consumers == "auto" and load is not None:
        cpu = plan_cpu(
            cores,
            load,
            available_memory_bytes(),
            batches,
            shards,
            cfg.consumer_threads,
            cfg.producers,
            cfg.writers,
            images,
        )
        n_cpu = cpu.consumers
    else:
        n_cpu = 1 if cfg.cpu_consumers == "auto" else int(cfg.cpu_consumers)
    devices = ["cpu"] * n_cpu
    driver = None
    if cfg.gpus != "cpu":
        set_device_order()
        found = count_gpus()
        driver = found.driver
        log.info(
            "GPUs: %d CUDA device(s) visible (counted by %s%s)",
            found.count,
            found.source,
            f"; {found.note}" if found.note and found.count else "",
        )
        devices = resolve_devices(cfg.gpus, cfg.require_gpu, n_cpu, found)
    else:
        resolve_devices(cfg.gpus, cfg.require_gpu, n_cpu)
    if any(d != "cpu" for d in devices):
        runtime, what = runtime_for(cfg.engine)
        check_driver(driver, runtime, what, driver_release())
        cpu = None
    if cpu is not None:
        workers = Workers(cpu.producers, cpu.writers, cpu.threads, cores, cpu.note)
    else:
        workers = plan_workers(cores, devices, cfg.producers, cfg.writers, cfg.consumer_threads, batches, shards)
        if load is not None and devices and all(d == "cpu" for d in devices):
            note = memory_note(len(devices), load.memory_per_consumer, available_memory_bytes())
            workers = Workers(workers.producers, workers.writers, workers.consumer_threads, cores, note)
    log.debug("CPUs usable by this process: %d (the machine has %s)", cores, os.cpu_count())
    return devices, workers


# ------------------------------------------------------------ CPU consumers: the automatic rule

# NOTE [cpu_consumers: auto]
# On the CPU every process shares the same cores, so the rule splits the usable cores C among
# the three stages in proportion to what each costs per image (core-seconds):
#   forward  f = MACs of the layers up to the last blob asked for / FORWARD_MACS_PER_CORE_S[engine]
#   decode   d = DECODE_S_PER_IMAGE (a 500x375 JPEG; larger images cost more)
#   write    w = WRITE_S_PER_ROW + stored bytes per image * WRITE_S_PER_BYTE[storage, dtype]
# forward cores F = round(C f / (f + d + w)), producers ceil(C d / ...), writers round(C w / ...),
# each at least 1 (producers at most one per batch, writers one per shard). The forward cores
# go to single-thread consumers, up to MAX_CPU_CONSUMERS of them; beyond that each consumer gets
# more threads instead (F // consumers). Why single-thread consumers: on 2 cores two of them
# beat one consumer of two threads by 10-23% (fc6+fc7) and 4-9% (conv1) in steady state
# (benchmarks/RESULTS.md, round 5): a thread of a multi-threaded forward that loses its core to
# a producer or the writer stalls the others. Why a cap: each consumer holds its own engine
# (runtime, a copy of the weights, a batch of activations: CONSUMER_* below, log line "each
# holds about") and two ring slots; the consumers are capped so that their estimated memory
# stays within MEMORY_SHARE of the memory available, and the threads of the ones dropped go to
# the others. The cost constants come from one 2-core machine (RESULTS.md, round 4; only their
# ratios matter), the memory ones from /proc/self/status of a consumer's engine (round 6). The
# rule's choices on 2, 16 and 64 cores, and why, are in RESULTS.md, round 6.
# Why a cap by the work: every consumer first spends about CONSUMER_STARTUP_CORE_S on its own
# (the interpreter and savedeep's modules, `import torch` or `import caffe`, the weights, the
# engine; RESULTS.md, round 7), on the cores the run shares. A run whose whole forward
# (images x f) is smaller than that cannot pay a second consumer back: the consumers are capped
# at images x f / CONSUMER_STARTUP_CORE_S (at least one), and the threads of the ones dropped go
# to the others. The cap only bites small runs (CaffeNet fc6+fc7 on 2 cores: under ~160 images);
# between that and the measured break-even on an idle 2-core machine (~2,500 images, round 7)
# the rule still starts more consumers, which pays off as soon as other work takes cores.

FORWARD_MACS_PER_CORE_S = {"torch": 45e9, "caffe": 21e9}  # round 4: CaffeNet fc 133 and 58 images/s on 2 threads
DECODE_S_PER_IMAGE = 1.2e-3  # round 4: 820-865 images/s per core (500x375 JPEG)
WRITE_S_PER_ROW = 5e-5
WRITE_S_PER_BYTE = {
    ("tensor", "float16"): 7e-9,
    ("tensor", "float32"): 4e-9,  # round 4: conv1 + zstd, 258 and
    ("binary", "float16"): 3e-9,
    ("binary", "float32"): 3e-9,
}  # 229 images/s tensor, 635 binary
MAX_CPU_CONSUMERS = 8
# round 7: spawn to the first batch, one consumer alone on an idle core: imports 0.2-0.3 s, the
# CaffeNet weights 0.15 s, `import torch` 0.7 s, the engine 0.05 s, a first forward 0.15 s over a
# steady one; `import caffe` takes 0.35 s against torch's 1.0 s in a fresh interpreter.
CONSUMER_STARTUP_CORE_S = {"torch": 1.3, "caffe": 0.7}
MEMORY_SHARE = 0.5
CONSUMER_RUNTIME_BYTES = {"torch": 220 * 2**20, "caffe": 85 * 2**20}  # resident after `import torch` / `import caffe`
# Private resident bytes per byte of .caffemodel: the torch consumer keeps savedeep's decoded
# float32 weights and the engine's copy; pycaffe reads the file into its own blobs.
CONSUMER_WEIGHTS_FACTOR = {"torch": 2.2, "caffe": 1.3}
CONSUMER_ACTIVATION_FACTOR = {"torch": 1.2, "caffe": 3.0}  # per byte of all the net's blobs x batch


@dataclass(frozen=True)
class CpuLoad:
    """What one image costs each stage on the CPU (core-seconds), and what one CPU consumer holds in memory."""

    forward_s: float
    decode_s: float
    write_s: float
    memory_per_consumer: int
    engine: str = "torch"


@dataclass(frozen=True)
class CpuPlan:
    """The CPU consumers, their threads, the producers and writers the rule chose, and why (a log line)."""

    consumers: int
    threads: int
    producers: int
    writers: int
    note: str


def forward_macs(net, blobs: Sequence[str]) -> int:
    """Multiply-adds per image of the convolution and inner-product layers up to the last of ``blobs``."""
    shapes, params = net.blob_shapes(1), net.param_shapes(1)
    wanted, last = set(blobs), -1
    for i, layer in enumerate(net.layers):
        if wanted & set(layer.tops):
            last = i
    macs = 0
    for layer in net.layers[: last + 1]:
        weights = params.get(layer.name) or []
        if layer.type in ("Convolution", "InnerProduct", "Deconvolution") and weights and layer.tops:
            top = shapes[layer.tops[0]]
            per_output = math.prod(weights[0][1:])
            macs += math.prod(top[1:]) * per_output
    return macs


def consumer_memory_bytes(engine: str, weights_bytes: int, blob_bytes_per_image: int, batch: int) -> int:
    """The estimated resident memory of one CPU consumer: runtime, weights, one batch of the net's blobs."""
    return int(
        CONSUMER_RUNTIME_BYTES.get(engine, CONSUMER_RUNTIME_BYTES["torch"])
        + CONSUMER_WEIGHTS_FACTOR.get(engine, 1.3) * weights_bytes
        + CONSUMER_ACTIVATION_FACTOR.get(engine, 1.2) * blob_bytes_per_image * batch
    )


def cpu_load(engine: str, net, blobs: Sequence[str], columns: Sequence[Any], weights_bytes: int, batch: int) -> CpuLoad:
    """The :class:`CpuLoad` of a run: ``columns`` are its stored blob columns (savedeep.data.output.ColumnSpec)."""
    forward = forward_macs(net, blobs) / FORWARD_MACS_PER_CORE_S.get(engine, FORWARD_MACS_PER_CORE_S["torch"])
    write = WRITE_S_PER_ROW + sum(c.row_bytes * WRITE_S_PER_BYTE.get((c.storage, c.dtype), 7e-9) for c in columns)
    all_blobs = sum(math.prod(s[1:]) * 4 for s in net.blob_shapes(1).values())
    return CpuLoad(
        forward, DECODE_S_PER_IMAGE, write, consumer_memory_bytes(engine, weights_bytes, all_blobs, batch), engine
    )


def available_memory_bytes(meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Memory available to new processes: MemAvailable, or less where a cgroup v2 limit leaves less."""
    avail = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            left = int(limit) - int((cgroup / "memory.current").read_text().strip())
            avail = left if avail is None else min(avail, left)
    except (OSError, ValueError):
        pass
    return avail


def memory_note(consumers: int, per_consumer: int, available: int | None) -> str:
    """The log line that makes the memory cost of the CPU consumers visible."""
    mib = per_consumer / 2**20
    of = "" if available is None else f" of {available / 2**20:,.0f} MiB available"
    return (
        f"CPU consumers: {consumers}; each holds about {mib:,.0f} MiB (runtime, weights, a batch of activations): "
        f"{consumers * mib:,.0f} MiB in all{of}"
    )


def plan_cpu(
    cores: int,
    load: CpuLoad,
    available: int | None,
    batches: int,
    shards: int,
    consumer_threads: int | str = "auto",
    producers: int | str = "auto",
    writers: int | str = "auto",
    images: int | None = None,
) -> CpuPlan:
    """CPU consumers, threads each, producers and writers for ``cores`` (see NOTE [cpu_consumers: auto]).

    ``images``: how many the run computes (None: no cap by the work).
    """
    total = load.forward_s + load.decode_s + load.write_s
    share = lambda cost: cores * cost / total  # noqa: E731
    forward_cores = max(1, round(share(load.forward_s)))
    if producers == "auto":
        producers = max(1, math.ceil(share(load.decode_s) - 1e-9))
    producers = max(1, min(int(producers), max(1, batches)))
    if writers == "auto":
        writers = max(1, round(share(load.write_s)))
    writers = max(1, min(int(writers), max(1, shards)))
    if consumer_threads == "auto":
        consumers = forward_cores // math.ceil(forward_cores / MAX_CPU_CONSUMERS)
    else:
        consumers = max(1, forward_cores // int(consumer_threads))
    consumers = max(1, min(consumers, max(1, batches)))
    why = ""
    if images is not None and consumer_threads == "auto":
        work = images * load.forward_s
        startup = CONSUMER_STARTUP_CORE_S.get(load.engine, CONSUMER_STARTUP_CORE_S["torch"])
        pays = max(1, int(work / startup))
        if pays < consumers:
            why = (
                f"; capped from {consumers} by the work: the forward of {images:,} image(s) is about {work:.1f} "
                f"core-s, and each consumer costs about {startup:.1f} core-s to start"
            )
            consumers = pays
    if available is not None and load.memory_per_consumer > 0:
        fit = max(1, int(MEMORY_SHARE * available // load.memory_per_consumer))
        if fit < consumers:
            why += f"; capped from {consumers} by memory ({MEMORY_SHARE:.0%} of the available memory holds {fit})"
            consumers = fit
    threads = int(consumer_threads) if consumer_threads != "auto" else max(1, forward_cores // consumers)
    note = (
        f"cpu_consumers auto: {consumers} x {threads} thread(s), {producers} producer(s), {writers} writer(s) "
        f"on {cores} cores (per image, core-ms: forward {1e3 * load.forward_s:.1f}, decode "
        f"{1e3 * load.decode_s:.1f}, write {1e3 * load.write_s:.1f}){why}. "
        + memory_note(consumers, load.memory_per_consumer, available)
    )
    return CpuPlan(consumers, threads, producers, writers, note)
