"""Consumer process: one per device; runs the forward pass on decoded batches.

Loop + protocol only (NOTE [savedeep pipeline data flow] in
savedeep/runner/messages.py). The device is selected inside this process, before the
engine is created (pycaffe: set_device + set_mode_gpu; torch: cuda:0), which is
why workers are spawned, never forked from a parent that may hold CUDA state. The
parent starts a GPU consumer with CUDA_VISIBLE_DEVICES naming only its own GPU
(savedeep/runner/devices.py, worker_env), so inside it that GPU is device 0 and no
context is ever opened on another GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from savedeep.runner.messages import BatchReady, DeviceInfo, EndOfStream
from savedeep.runner.shm import Ring, RingSpec
from savedeep._workers._loop import Channels, Worker, run_worker


@dataclass(frozen=True)
class ConsumerArgs:
    """Everything a consumer needs, picklable."""

    engine: str  # "caffe" | "torch"
    model_dir: Path
    batch_size: int
    threads: int | None
    blob_specs: tuple[Any, ...]  # savedeep.config.BlobSpec
    in_ring: RingSpec
    out_ring: RingSpec
    spawned_at: float = 0.0  # the parent's time.time() when it began spawning (start-up log line)


def consumer_main(index: int, row: int, ch: Channels, device: str, args: ConsumerArgs) -> None:
    """Entry point of the consumer for ``device`` (spawned by the parent)."""
    run_worker("consumer", index, row, ch, device, lambda w: _loop(w, args))


def _loop(w: Worker, args: ConsumerArgs) -> None:
    import os
    import time

    from savedeep.engines.gpus import consumer_provenance, local_device
    from savedeep.engines import create_engine, keep_freed_memory
    from savedeep.runner.faults import maybe_fail
    from savedeep.caffe.model import load_model
    from savedeep.data.reduce import FLOAT16_MAX, BlobOutputs

    marks = [("process start and imports", time.time())]

    keep_freed_memory()  # before the engine allocates: no page faults on every batch's buffers
    # pycaffe reads the caffemodel itself: decoding it here too would cost time and memory for nothing.
    # The parent's preflight read these files and printed their warnings: reread, not reported again.
    model = load_model(args.model_dir, weights=args.engine != "caffe", reread=True)
    marks.append(("model files read", time.time()))
    # The parent gave this process only its own GPU (CUDA_VISIBLE_DEVICES, savedeep/runner/devices.py):
    # inside, it is device 0. Refuse to run if that isolation is missing.
    assert w.device is not None  # the parent starts each consumer on its device (devices.worker_env)
    local = local_device(w.device)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if local != "cpu" and (visible is None or "," in visible or not visible.strip()):
        raise RuntimeError(
            f"consumer for {w.device} started with CUDA_VISIBLE_DEVICES={visible!r}; the parent "
            "must give it exactly its own GPU (a bug)"
        )
    engine = create_engine(args.engine, model, local, args.batch_size, threads=args.threads)
    marks.append((f"{args.engine} imported and the engine built", time.time()))
    w.ch.events.put(DeviceInfo(w.index, consumer_provenance(args.engine, w.device, local, args.threads)))
    blobs = BlobOutputs(args.blob_specs, engine.blob_shapes)
    blobs.prepare()  # e.g. draw the projection matrix now, not inside the first batch
    in_ring, out_ring = Ring.attach(args.in_ring), Ring.attach(args.out_ring)
    w.log.info(
        "ready on %s (%s engine; CUDA_VISIBLE_DEVICES=%r, as %s; %s threads, OMP_NUM_THREADS=%s)",
        w.device,
        args.engine,
        visible,
        local,
        args.threads,
        os.environ.get("OMP_NUM_THREADS"),
    )
    try:
        while True:
            msg = w.get(w.ch.ready)
            if isinstance(msg, EndOfStream):
                if blobs.overflow_summary():
                    w.log.warning("%s", blobs.overflow_summary())
                for q in w.ch.done:
                    q.put(EndOfStream(f"consumer{w.index}"))
                return
            assert isinstance(msg, BatchReady)
            w.on_batch(msg.batch)
            n = len(msg.indices)
            if n == 0:
                w.ch.free_in.put(msg.slot)
                w.ch.done[msg.shard % len(w.ch.done)].put(msg.done(None))
                continue
            t_got = time.time()
            maybe_fail("consumer", w.index, msg.batch, w.check, w.ch)
            oslot = w.get(w.ch.free_out)
            out = out_ring.slot(oslot)
            x = in_ring.slot(msg.slot)["data"][:n]
            acts = engine.forward(x, blobs.names, out={b: out[b] for b in blobs.direct})
            w.ch.free_in.put(msg.slot)
            for b, k in blobs.fill(acts, out, n).items():
                w.log.warning(
                    "blob %s, batch %d: %d values are inf or NaN as float16 (beyond +-%g); a total follows at the end",
                    b,
                    msg.batch,
                    k,
                    FLOAT16_MAX,
                )
            if marks:
                marks += [("waiting for the first batch", t_got), ("first forward", time.time())]
                w.log.info(
                    "start-up: %.2f s from spawn to the first batch forwarded (%s)",
                    marks[-1][1] - args.spawned_at if args.spawned_at else float("nan"),
                    ", ".join(
                        f"{what} {t - marks[i - 1][1] if i else t - args.spawned_at:.2f} s"
                        for i, (what, t) in enumerate(marks)
                        if i or args.spawned_at
                    ),
                )
                marks = []
            w.items += n
            w.ch.done[msg.shard % len(w.ch.done)].put(msg.done(oslot))
            w.on_batch(None)
    finally:
        engine.close()
        in_ring.close()
        out_ring.close()
