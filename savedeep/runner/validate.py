"""``savedeep validate``: every check of a run, with the run's messages, and what the run will do.

It runs the same preflight as ``savedeep run`` (NOTE [savedeep preflight] in
savedeep/runner/preflight.py) with the same flags, so a mistake gives the same message
and exit code in both; it writes and deletes nothing, and starts no worker.
Then it decodes a sample of the images: under ``on_error: fail`` a sampled image
that cannot be used is the error a run would stop with (exit 4).

It also predicts the run (issue 30): the images, shards and worker plan, the
output's sizes per blob and in all (NOTE [savedeep output sizes] in
savedeep/runner/sizes.py; the pickle file's size exactly), and with ``time=True``
(``--time``) forwards one batch in this process and estimates the run's
duration on this machine from what that batch cost:

- ``d``: decoding and preprocessing one image (one core), the median over the batch;
- ``f``: the forward of one batch, per image, on the run's first device with a
  consumer's threads (the second forward: the first one warms up);
- ``w``: writing the batch's rows to Parquet with the run's compression (in memory),
  per image; the same bytes give the compression ratio the Parquet estimate uses;
- ``e``: reading a row back and pickling it (the pickle's share of the end).

The rate is the stage bound of benchmarks/README.md: at most ``G/f`` (G consumers),
``P/d`` (P producers), ``W/w`` (W writers) and, on C cores, ``C / (T f + d + w)``
(T threads per CPU consumer; a GPU's forward costs no core). The estimate is the
consumers' start-up (the engine built here) + images to do / rate + images x ``e``.
It is as good as one batch on a machine that may be busy: a guide, not a promise.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

from savedeep.config import Config

SAMPLE = 8  # images decoded as a sample
SPAWN_S = 0.3  # the parent's start of the workers (spawn, rings), beside the consumers' own start-up
# The pipeline's own work per batch (queues, shared-memory slots, the parent's bookkeeping), in core-seconds:
# what the stages alone left unexplained in bench_scale.py's 100k run of a tiny net, 5.5 ms
# (benchmarks/RESULTS.md, round 8).
PER_BATCH_CORE_S = 0.005


def validate(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    task: Any = None,
    time_it: bool = False,
    as_json: bool = False,
) -> str:
    """Check everything a run needs; return a report (text, or JSON), or raise the error a run would raise.

    ``task`` (savedeep.runner.tasks.TaskSpec, or "K/N"): the checks of that task of an array
    (NOTE [savedeep tasks] in savedeep/runner/tasks.py), e.g. another config's records in the output.
    ``time_it``: forward one batch and estimate the run's duration (see the module's docstring).
    """
    report = validate_report(config, resume=resume, overwrite=overwrite, task=task, time_it=time_it)
    if as_json:
        return json.dumps({k: v for k, v in report.items() if not k.startswith("_")}, indent=1, default=str)
    return "\n".join(report["_lines"])


def validate_report(
    config: Config, *, resume: bool = False, overwrite: bool = False, task: Any = None, time_it: bool = False
) -> dict[str, Any]:
    """:func:`validate`'s figures as a dict (``_lines``: the text report)."""
    import numpy as np

    from savedeep.errors import ImageError, bad_image_stops_run
    from savedeep.runner.preflight import preflight
    from savedeep.data.preprocess import Preprocessor
    from savedeep.runner.sizes import predict
    from savedeep.units import human_bytes

    if isinstance(task, str):
        from savedeep.runner.tasks import parse_task

        task = parse_task(task)
    pf = preflight(config, resume=resume, overwrite=overwrite, task=task)
    model, images = pf.model, pf.images
    lines = [
        f"config: ok (fingerprint {config.fingerprint()[:12]})",
        f"model: {config.model} ({model.net.name}, input {tuple(pf.input_shape)}, weights match)",
    ]
    shapes = model.net.blob_shapes(1)
    for c in pf.columns:
        size = int(np.prod(c.shape)) * (2 if c.dtype == "float16" else 4)
        lines.append(
            f"  blob {c.name}: {tuple(shapes[c.name][1:])} -> stored {tuple(c.shape)} {c.dtype} "
            f"({human_bytes(size)} per image)"
        )
    skipped = sum(images.skipped.values())
    lines.append(
        f"images: {len(images)} in {config.images}"
        + (f" ({skipped} other files skipped by extension)" if skipped else "")
    )
    lines.append(
        f"output: {config.output}"
        + (
            " (exists: " + ("resumed, " + f"{len(pf.keep)} shard(s) kept" if resume else "replaced") + ")"
            if pf.output_exists
            else ""
        )
    )
    if task is not None:
        mine = [(k, a, z) for k, a, z in pf.plan.shards if task.owns(k)]
        lines.append(
            f"{task.describe()}: {len(mine)} shard(s), {sum(z - a for _, a, z in mine)} image(s); "
            f"{len(pf.keep)} of them finished and kept, {len(pf.plan.todo)} to compute"
        )
    plan = {
        "images": len(images),
        "shards": len(pf.plan.shards),
        "shards_todo": len(pf.plan.todo),
        "batches_todo": len(pf.plan.batches),
        "batch_size": config.batch_size,
        "shard_size": config.shard_size,
    }
    lines.append(
        f"plan: {plan['shards']} shard(s) of up to {config.shard_size} images, {plan['shards_todo']} to "
        f"compute in {plan['batches_todo']} batch(es) of up to {config.batch_size}"
    )
    workers: dict[str, Any] = {}
    if pf.plan.batches:
        workers = {
            "consumers": list(pf.devices),
            "consumer_threads": pf.workers.consumer_threads,
            "producers": pf.producers,
            "writers": pf.writers,
            "cores": pf.workers.cores,
            "in_slots": pf.in_slots,
            "out_slots": pf.out_slots,
        }
        lines.append(
            f"workers: {len(pf.devices)} consumer(s) on {', '.join(pf.devices)} "
            f"({pf.workers.consumer_threads} thread(s) each), {pf.producers} producer(s), "
            f"{pf.writers} writer(s); rings of {pf.in_slots} input and {pf.out_slots} output slots"
        )
        if pf.workers.note:
            lines.append(f"workers: {pf.workers.note}")
    pre = Preprocessor(pf.pre_spec, pf.mean, tuple(pf.input_shape))
    n_sample = max(SAMPLE, config.batch_size) if time_it else SAMPLE
    bad, decoded, decode_s = [], [], []
    for e in images.entries[:n_sample]:
        t = time.perf_counter()
        try:
            x = pre.load(e.path)
        except ImageError as exc:
            if config.on_error == "fail":
                raise bad_image_stops_run(e.path, exc) from None
            bad.append(f"{e.key}: {exc}")
            continue
        decode_s.append(time.perf_counter() - t)
        decoded.append((e.key, x))
    tried = min(n_sample, len(images))
    lines.append(f"sample: {tried - len(bad)} of the first {tried} images decode")
    lines += [f"  failed: {b}" for b in bad]
    timing = None
    if time_it and decoded and pf.plan.batches:
        timing = _time_one_batch(config, pf, decoded[: config.batch_size], decode_s)
    # What the preflight checked (the pickle bounded), shown with the pickle file's exact size and,
    # after --time, the Parquet estimate from the compression the batch measured.
    measured = "" if timing is None else f"compression measured on one batch of {timing['batch']} images"
    pred = predict(
        config,
        pf,
        task=task,
        exact_pickle=True,
        parquet_ratio=None if timing is None else timing["parquet_ratio"],
        ratio_basis=measured,
    )
    checked = pf.prediction
    pred.rings, pred.shm_free, pred.reclaimed = checked.rings, checked.shm_free, checked.reclaimed
    lines.append("prediction (every image a row):")
    lines += pred.lines()
    if timing is not None:
        lines.append(
            f"time: about {_duration(timing['estimate_s'])} for {pred.images_todo} image(s) on this machine "
            f"(rate about {timing['rate']:.0f} images/s, bound by {timing['bound_by']}; start-up "
            f"{timing['startup_s']:.1f} s; from one batch of {timing['batch']}: decode "
            f"{timing['decode_ms']:.2f} ms/image, forward {timing['forward_ms']:.2f} ms/image with "
            f"{timing['threads']} thread(s) on {timing['device']}, write {timing['write_ms']:.3f} ms/image)"
        )
    return {
        "config": {"fingerprint": config.fingerprint(), "output": str(config.output)},
        "model": {"directory": str(config.model), "name": model.net.name, "input_shape": list(pf.input_shape)},
        "images": {"count": len(images), "skipped_by_extension": dict(images.skipped)},
        "plan": plan,
        "workers": workers,
        "prediction": pred.to_dict(),
        "sample": {"tried": tried, "decoded": tried - len(bad), "failed": bad},
        "time": timing,
        "_lines": lines,
    }


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _time_one_batch(config: Config, pf: Any, decoded: list[tuple[str, Any]], decode_s: list[float]) -> dict[str, Any]:
    """Forward, write and pickle one batch here; the run's rate and duration from it (see the module's docstring)."""
    import pickle

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from savedeep.engines import create_engine
    from savedeep.caffe.model import load_model
    from savedeep.data.output import ShardWriter, column_to_numpy
    from savedeep.data.reduce import BlobOutputs

    n = len(decoded)
    x = np.stack([a for _, a in decoded]).astype(np.float32, copy=False)
    device = pf.devices[0]
    threads = pf.workers.consumer_threads if device == "cpu" else None
    t0 = time.perf_counter()
    model = load_model(config.model, weights=config.engine != "caffe")
    engine = create_engine(config.engine, model, device, config.batch_size, threads=threads)
    try:
        blobs = BlobOutputs(pf.blob_specs, engine.blob_shapes)
        blobs.prepare()
        startup = time.perf_counter() - t0
        out = {c.name: np.empty((config.batch_size, *c.shape), c.dtype) for c in pf.columns}
        engine.forward(x, blobs.names, out={b: out[b] for b in blobs.direct})  # warm-up
        t = time.perf_counter()
        acts = engine.forward(x, blobs.names, out={b: out[b] for b in blobs.direct})
        blobs.fill(acts, out, n)
        forward = (time.perf_counter() - t) / n
    finally:
        engine.close()
    keys = [k for k, _ in decoded]
    meta: dict[str, Sequence[Any]] = {m: [None] * n for m in pf.images.metadata}
    sink = pa.BufferOutputStream()
    empty = pa.BufferOutputStream()
    writer = ShardWriter(
        pf.model.directory, 0, pf.columns, list(pf.images.metadata), config.compression, config.compression_level
    )
    batch = {c.name: out[c.name][:n] for c in pf.columns}
    writer.write_to(pa.BufferOutputStream(), keys, meta, batch)  # warm-up: the writer's first use
    t = time.perf_counter()
    writer.write_to(sink, keys, meta, batch)
    write = (time.perf_counter() - t) / n
    writer.write_to(empty, [], meta, {c.name: out[c.name][:0] for c in pf.columns})
    raw = sum(c.row_bytes for c in pf.columns) * n
    ratio = max(0.0, (sink.getvalue().size - empty.getvalue().size) / raw) if raw else 1.0

    def read_and_pickle() -> None:
        table = pq.read_table(pa.BufferReader(sink.getvalue()))
        rows = [
            list(column_to_numpy(table.column(c.name), {"shape": list(c.shape), "dtype": c.dtype})) for c in pf.columns
        ]
        pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)

    read_and_pickle()  # warm-up: pyarrow's reader and numpy's pickling, first used here
    t = time.perf_counter()
    read_and_pickle()
    end = (time.perf_counter() - t) / n
    decode = statistics.median(decode_s)
    G, P, W = len(pf.devices), pf.producers, pf.writers
    cpu_consumers = sum(d == "cpu" for d in pf.devices)
    T = pf.workers.consumer_threads
    core_s = (T * forward if cpu_consumers else 0.0) + decode + write + PER_BATCH_CORE_S / config.batch_size
    bounds = {"forward": G / forward, "decode": P / decode, "write": W / write, "cores": pf.workers.cores / core_s}
    bound_by = min(bounds, key=bounds.__getitem__)
    rate = bounds[bound_by]
    todo = sum(z - a for _, _, a, z in pf.plan.batches)
    pickle_s = end * pf.prediction.images if pf.prediction.pickle and not pf.prediction.pickle_refused else 0.0
    estimate = SPAWN_S + startup + todo / rate + pickle_s
    return {
        "batch": n,
        "device": device,
        "threads": T if device == "cpu" else None,
        "decode_ms": decode * 1e3,
        "forward_ms": forward * 1e3,
        "write_ms": write * 1e3,
        "pickle_ms_per_image": end * 1e3,
        "startup_s": startup,
        "parquet_ratio": ratio,
        "bounds_images_per_s": bounds,
        "bound_by": bound_by,
        "rate": rate,
        "estimate_s": estimate,
    }
