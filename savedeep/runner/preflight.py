"""Preflight: every check a run can make before it starts a worker, shared by ``run`` and ``validate``.

NOTE [savedeep preflight]
=========================

A user's mistake must be one clear error before any work starts, never a worker
failing at start-up, an output half-created or ``internal error (a bug)``.
:func:`preflight` reads and checks everything a run needs, in the parent, and
changes nothing on disk (outside the user's cache of pycaffe's layer types):

1. the output location: the folder that will hold the output exists or can be
   created, and is writable (probed with a hidden file or folder that is
   removed at once); the same for ``log_file``;
2. the model directory: the prototxt, the weights read and checked against it
   (a truncated or empty caffemodel; cheap, see benchmarks/RESULTS.md), the mean,
   the blob names, the reductions, the preprocessing;
3. the engine is importable in this Python (without importing it: pycaffe's CUDA
   build touches CUDA on import); for the caffe engine, the net's layers against
   what the consumers' pycaffe would abort on (NOTE [caffe engine refusals] in
   savedeep/engines/caffe_layers.py: its layer registry, read in a subprocess and
   cached, and STOCHASTIC pooling on the CPU), once the devices are known;
4. the image source and, for a list file, that its entries exist (one ``stat``
   per entry; a directory's entries exist by construction);
5. what is on disk against ``--resume`` / ``--overwrite`` (nothing is deleted here);
6. the plan (:func:`make_plan`: fixed shards of ``shard_size`` images, cut into
   batches), the devices, the number of workers and the shared-memory rings
   (``/dev/shm``);
7. the output's size (NOTE [savedeep output sizes] in savedeep/runner/sizes.py): a
   pickle above ``max_pickle_bytes``, or more bytes than the output's file
   system has free (unless ``space_check: false``), is refused here.

``Run.execute`` calls it first and then acts on its result (deletes an old
output under ``--overwrite``, starts the workers); ``savedeep validate`` calls
it with the same flags, so both give the same message and exit code for every
mistake that needs no forward pass. Errors carry the exit codes of
savedeep/errors.py.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import math
import threading
import logging
import os
import sys
import tempfile
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from savedeep.config import Config
from savedeep.errors import ConfigError, InputError, OutputError

log = logging.getLogger(__name__)

ENGINE_MODULES = {"torch": "torch", "caffe": "caffe"}
ENGINE_FIX = {
    "torch": 'pip install torch (or pip install -e ".[torch]"), or use engine: caffe',
    "caffe": "build pycaffe with bash scripts/setup.sh, or use engine: torch (no pycaffe needed)",
}


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """Fixed shards (image ranges) and the batches of the shards still to do."""

    shards: list[tuple[int, int, int]]  # (shard, start, stop) for every shard of the run
    todo: list[int]  # shards to compute
    batches: list[tuple[int, int, int, int]]  # (batch, shard, start, stop), in writing order

    def for_writer(
        self, w: int, writers: int
    ) -> tuple[tuple[tuple[int, int], ...], dict[int, tuple[int, int]], dict[int, int]]:
        """Writer ``w``'s share (the shards k with k % writers == w): its (batch, shard) in writing order,
        each shard's image range and number of batches."""
        mine = tuple((b, k) for b, k, _, _ in self.batches if k % writers == w)
        shard_batches: dict[int, int] = {}
        for _, k in mine:
            shard_batches[k] = shard_batches.get(k, 0) + 1
        ranges = {k: (a, z) for k, a, z in self.shards if k in shard_batches}
        return mine, ranges, shard_batches


def make_plan(n_images: int, shard_size: int, batch_size: int, done: AbstractSet[int] = frozenset()) -> Plan:
    """Cut the sorted image list into shards of ``shard_size`` and each shard into batches."""
    from savedeep.data.output import shard_ranges

    shards = shard_ranges(n_images, shard_size)
    todo = [k for k, _, _ in shards if k not in done]
    batches: list[tuple[int, int, int, int]] = []  # (batch, shard, start, stop)
    for k in todo:
        _, start, stop = shards[k]
        for b0 in range(start, stop, batch_size):
            batches.append((len(batches), k, b0, min(b0 + batch_size, stop)))
    return Plan(shards, todo, batches)


def keys_digest(keys: list[str]) -> str:
    """The sha256 of the image keys in order: --resume refuses a different image list."""
    h = hashlib.sha256()
    for k in keys:
        h.update(k.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


class Background:
    """A function run in a daemon thread; ``result()`` waits and returns its value or raises its error."""

    def __init__(self, fn: Callable[[], Any]) -> None:
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


@dataclass
class Preflight:
    """What the parent knows once every check passed: the inputs read, the plan, the workers, the rings."""

    model: Any  # savedeep.caffe.model.Model (weights checked, not kept)
    blob_specs: tuple[Any, ...]  # BlobSpec, in the order the user gave
    columns: list[Any]  # savedeep.data.output.ColumnSpec
    blob_info: dict[str, Any]
    input_shape: tuple[int, ...]
    images: Any  # savedeep.data.images.ImageList
    mean: Any
    pre_spec: Any
    preprocess_desc: dict[str, Any]
    keys_digest: str
    hashes: Any  # Background -> {file name: sha256}
    keep: set[int]  # shards an interrupted run finished (--resume)
    output_exists: bool
    plan: Plan
    devices: list[str]
    producers: int
    writers: int
    workers: Any = None  # savedeep.runner.devices.Workers (consumer threads, usable CPUs)
    in_slots: int = 0
    out_slots: int = 0
    warnings: list[str] = field(default_factory=list)
    prediction: Any = None  # savedeep.runner.sizes.Prediction: what the run will write

    @property
    def model_hashes(self) -> dict[str, str]:
        return self.hashes.result()


# --------------------------------------------------------------------------- output location


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def _a(key: str) -> str:
    return f"an {key}" if key[0] in "aeiou" else f"a {key}"


def check_writable_location(path: Path, key: str) -> None:
    """Raise OutputError unless ``path``'s folder exists or can be created, and can be written to.

    Nothing is left behind: the probe (a hidden file in the folder, or a hidden
    folder in its nearest existing ancestor) is removed at once.
    """
    parent = path.parent
    ancestor = parent
    while not _exists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not os.path.isdir(ancestor):
        kind = "a file" if os.path.isfile(ancestor) else "not a directory"
        raise OutputError(
            f"{key}: cannot create {path}: {ancestor} is {kind}, not a directory; "
            f"choose {_a(key)} path whose folders are directories"
        )
    try:
        if ancestor == parent:
            fd, probe = tempfile.mkstemp(prefix=".savedeep-probe-", dir=parent)
            os.close(fd)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".savedeep-probe-", dir=ancestor))
    except OSError as exc:
        what = f"{parent} is not writable" if ancestor == parent else f"{parent} cannot be created in {ancestor}"
        raise OutputError(
            f"{key}: cannot write {path}: {what} ({exc.strerror or exc}); choose {_a(key)} path "
            "on a writable disk where you may create files"
        ) from None


def check_output_location(config: Config) -> None:
    """The output's folder and the log file's, before anything is read or written."""
    out = Path(config.output)
    pq_dir = config.parquet_dir
    check_writable_location(out, "output")
    if _exists(pq_dir) and not os.path.isdir(pq_dir):
        raise OutputError(
            f"output: {pq_dir} (where the Parquet shards go) is a file, not a savedeep output "
            "directory; move it away or choose another output"
        )
    if config.log_file is not None:
        log_file = Path(config.log_file)
        if os.path.isdir(log_file):
            raise ConfigError(f"log_file: {log_file} is a directory; give a file path, e.g. {log_file / 'acts.log'}")
        check_writable_location(log_file, "log_file")


# --------------------------------------------------------------------------- the engine


def check_engine_importable(engine: str) -> None:
    """The engine's module can be imported here (found, not imported: pycaffe's CUDA build touches CUDA)."""
    module = ENGINE_MODULES[engine]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError(
            f"engine: {engine} needs the Python module {module!r}, which {sys.executable} cannot "
            f"import; {ENGINE_FIX[engine]}"
        )


# --------------------------------------------------------------------------- images


def check_listed_files(images: Any, on_error: str) -> None:
    """For a list file: its entries must exist (all missing is a wrong base folder; any under on_error: fail)."""
    if not os.path.isfile(images.source):
        return  # a directory walk lists files that exist
    missing = [e for e in images.entries if not os.path.exists(e.path)]
    if not missing:
        return
    first = missing[0]
    if len(missing) == len(images.entries):
        raise InputError(
            f"{images.source}: none of its {len(images.entries)} paths exists (the first, "
            f"{first.key!r}, would be {first.path}); relative paths are relative to the list file's "
            "folder: fix the paths or move the list"
        )
    if on_error == "fail":
        raise InputError(
            f"{images.source}: {len(missing)} of its {len(images.entries)} paths do not exist "
            f"(the first: {first.key!r} -> {first.path}); fix or remove them, or use on_error: skip "
            "to record them as failures"
        )
    log.warning(
        "%s: %d of its %d paths do not exist (the first: %s); they will be recorded as failures",
        images.source,
        len(missing),
        len(images.entries),
        first.path,
    )


# --------------------------------------------------------------------------- existing output


def check_existing_output(
    config: Config,
    *,
    resume: bool,
    overwrite: bool,
    hashes: Callable[[], dict[str, str]],
    keys_digest: str,
    n_images: int,
) -> tuple[bool, set[int]]:
    """Check what is on disk against --resume/--overwrite; return (exists, shards to keep). Changes nothing."""
    from savedeep.runner.manifest import FORMAT, Manifest
    from savedeep.data.output import MANIFEST, check_removable

    pk = Path(config.output)
    pq_dir = config.parquet_dir
    exists = _exists(pq_dir) or _exists(pk)
    if not exists:
        if resume:
            log.info("nothing to resume at %s: starting a new run", pq_dir)
        return False, set()
    if overwrite:
        check_removable(pk, pq_dir, config.log_file)  # refuses, listing them, if savedeep did not write it all
        return True, set()
    if not resume:
        raise OutputError(
            f"{pk if _exists(pk) else pq_dir} exists; rerun with --overwrite to replace it, "
            "--resume to complete an interrupted run, or choose another output"
        )
    manifest = Manifest.read(pq_dir) if os.path.isdir(pq_dir) else None
    if manifest is None:
        raise OutputError(f"cannot resume: {pq_dir} has no manifest; rerun with --overwrite")
    if not manifest.is_valid():
        raise OutputError(
            f"cannot resume: {pq_dir / MANIFEST} is not a {FORMAT} manifest; rerun with --overwrite to start over"
        )
    changed = manifest.changes(config, hashes, keys_digest, n_images)
    if changed:
        raise OutputError(
            f"cannot resume {pq_dir}: since the interrupted run, these changed: "
            f"{'; '.join(changed)}. Rerun with the same settings, or with --overwrite to start over"
        )
    # Which shards would be kept (adopting finished but unreported ones), on a copy: nothing is written here.
    manifest = Manifest(pq_dir, copy.deepcopy(manifest.data))
    manifest.adopt_finished(write=False)
    return True, manifest.finished()


# --------------------------------------------------------------------------- the whole check


def preflight(
    config: Config, *, resume: bool = False, overwrite: bool = False, break_lock: bool = False, task: Any = None
) -> Preflight:
    """Every check before a worker starts (see NOTE [savedeep preflight]); raises the error a run would raise.

    ``task`` (savedeep.runner.tasks.TaskSpec): plan only that task's shards, and judge the output as a
    task does (NOTE [savedeep tasks] in savedeep/runner/tasks.py).
    """
    from savedeep.runner.faults import maybe_fail
    from savedeep.data.images import list_images
    from savedeep.caffe.model import check_weights, load_model
    from savedeep.engines.caffe_layers import check_runnable, layer_registry
    from savedeep.data.output import ColumnSpec, sha256_file
    from savedeep.runner.devices import cpu_load, plan_devices, shm_free_bytes, size_rings
    from savedeep.runner.lock import OutputLock
    from savedeep.data.preprocess import Preprocessor, load_mean
    from savedeep.data.reduce import make_reducer
    from savedeep.runner.shm import Field, new_ring_spec

    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: choose one")
    if task is not None and overwrite:
        raise ConfigError(
            "--overwrite cannot be given with --task/--tasks: tasks running at once would delete each "
            "other's shards; delete the old output once before starting the tasks"
        )
    maybe_fail("preflight", 0, 0)
    cfg = config
    check_output_location(cfg)

    model = load_model(cfg.model, weights=False)
    if not Path(model.weights).is_file():
        from savedeep.errors import ModelError
        from savedeep.caffe.model import MODEL_DIR_CONTENTS

        raise ModelError(f"{model.weights}: missing from the model directory; {MODEL_DIR_CONTENTS}")
    check_weights(model.net, model.weights)  # the consumers read them again; here only the check
    # Hashing the files runs beside the rest; --resume and the manifest wait for it.
    hashes = Background(lambda: {p.name: sha256_file(p) for p in (model.prototxt, model.weights, model.mean_path)})
    valid = set(model.validate_blobs(list(cfg.blobs)))
    names = [n for n in cfg.blobs if n in valid]  # columns in the order the user gave
    specs = {s.name: s for s in cfg.blob_specs}
    blob_specs = tuple(specs[n] for n in names)
    shapes = model.net.blob_shapes(1)
    input_shape = tuple(model.net.input_shape[1:])
    columns, blob_info = [], {}
    for s in blob_specs:
        shape = tuple(shapes[s.name][1:])
        red = make_reducer(s, shape)
        columns.append(ColumnSpec(s.name, tuple(red.out_shape), str(red.out_dtype), cfg.storage))
        blob_info[s.name] = {
            "shape": list(red.out_shape),
            "dtype": str(red.out_dtype),
            "storage": cfg.storage,
            "blob_shape": list(shape),
            "reduce": red.describe(),
        }
    mean = load_mean(model.mean_path)
    pre_spec = cfg.preprocess  # the spec itself (savedeep.config.PreprocessSpec)
    preprocess_desc = Preprocessor(pre_spec, mean, input_shape).describe()
    check_engine_importable(cfg.engine)

    images = list_images(cfg.images)
    clash = [n for n in names if n == "image" or n in images.metadata]
    if clash:
        raise ConfigError(
            f"blobs: {clash} would collide with the output's key/metadata columns "
            f"(image, {', '.join(images.metadata) or 'no metadata'}); rename the CSV column"
        )
    check_listed_files(images, cfg.on_error)
    digest = keys_digest(images.keys)

    # A run in progress on this output is named first: it explains whatever is on disk.
    OutputLock(cfg.output, fingerprint=cfg.fingerprint(), break_lock=break_lock).check()
    if task is None:
        exists, keep = check_existing_output(
            cfg, resume=resume, overwrite=overwrite, hashes=hashes.result, keys_digest=digest, n_images=len(images)
        )
        plan = make_plan(len(images), cfg.shard_size, cfg.batch_size, keep)
    else:
        from savedeep.runner.tasks import check_task_output

        OutputLock(cfg.output, task=task.index, fingerprint=cfg.fingerprint(), break_lock=break_lock).check()
        header = {
            "result_fingerprint": cfg.result_fingerprint(),
            "config": cfg.canonical(),
            "model": {"sha256": hashes.result()},
            "images": {"count": len(images), "keys_sha256": digest},
            "task": {"count": task.count},
        }
        exists, keep = check_task_output(cfg, task, header)
        n_shards = math.ceil(len(images) / cfg.shard_size)
        others = {k for k in range(n_shards) if not task.owns(k)}
        plan = make_plan(len(images), cfg.shard_size, cfg.batch_size, keep | others)
    load = cpu_load(cfg.engine, model.net, names, columns, Path(model.weights).stat().st_size, cfg.batch_size)
    devices, workers = plan_devices(
        cfg, len(plan.batches), len(plan.todo), load, images=sum(z - a for _, _, a, z in plan.batches)
    )
    # Here, not in the background: a probe still running when another check raises would outlive the command.
    if cfg.engine == "caffe" and (registry := layer_registry()) is not None:
        on_gpu = any(d != "cpu" for d in devices)
        check_runnable(model.net, registry.types, on_gpu, model.prototxt, str(registry.pycaffe))
    pf = Preflight(
        model=model,
        blob_specs=blob_specs,
        columns=columns,
        blob_info=blob_info,
        input_shape=input_shape,
        images=images,
        mean=mean,
        pre_spec=pre_spec,
        preprocess_desc=preprocess_desc,
        keys_digest=digest,
        hashes=hashes,
        keep=keep,
        output_exists=exists,
        plan=plan,
        devices=devices,
        producers=workers.producers,
        writers=workers.writers,
        workers=workers,
    )
    if plan.batches:
        # The rings: one batch of each must fit in /dev/shm, or the run stops here (see size_rings);
        # where the window cannot give every producer a batch, fewer producers start.
        B = cfg.batch_size
        in_fields = [Field("data", (B, *input_shape), "float32")]
        out_fields = [Field(c.name, (B, *c.shape), c.dtype) for c in columns]
        rings = size_rings(
            new_ring_spec("in", 1, in_fields).slot_bytes,
            new_ring_spec("out", 1, out_fields).slot_bytes,
            workers.producers,
            len(devices),
            workers.writers,
            cfg.ring_slots,
            shm_free_bytes(),
        )
        pf.in_slots, pf.out_slots = rings.in_slots, rings.out_slots
        if rings.producers < workers.producers:
            log.info(
                "producers: %d instead of %d, as many as the window of %d batches lets work",
                rings.producers,
                workers.producers,
                rings.out_slots,
            )
            pf.producers = rings.producers
    pf.prediction = check_sizes(cfg, pf, resume=resume, overwrite=overwrite, task=task)
    return pf


def check_sizes(cfg: Config, pf: Preflight, *, resume: bool, overwrite: bool, task: Any = None) -> Any:
    """Predict the output (savedeep.runner.sizes.predict) and refuse a pickle above the limit or a disk too small.

    The pickle file is bounded, not simulated (no pandas in the parent before the workers start):
    ``savedeep validate`` checks with the same bound, so both refuse the same runs with the same line.
    """
    from savedeep.runner.devices import shm_free_bytes
    from savedeep.runner.shm import Field, new_ring_spec
    from savedeep.runner.sizes import check_pickle, check_space, predict, reclaimable

    pred = predict(cfg, pf, task=task)
    if pf.plan.batches:
        B = cfg.batch_size
        pred.rings = (
            new_ring_spec("in", pf.in_slots, [Field("data", (B, *pf.input_shape), "float32")]).nbytes
            + new_ring_spec("out", pf.out_slots, [Field(c.name, (B, *c.shape), c.dtype) for c in pf.columns]).nbytes
        )
        pred.shm_free = shm_free_bytes()
    check_pickle(pred, cfg)
    back = 0 if task is not None else reclaimable(cfg, resume=resume, overwrite=overwrite, exists=pf.output_exists)
    check_space(pred, cfg, back)
    return pred
