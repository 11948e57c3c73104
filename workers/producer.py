"""Producer process: decode and preprocess images into free input slots.

Loop + protocol only (NOTE [savedeep pipeline data flow] in
savedeep/runner/messages.py); decoding and Caffe preprocessing live in
savedeep/data/preprocess.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from savedeep.errors import ImageError, bad_image_stops_run
from savedeep.runner.messages import BatchReady, EndOfStream, Failure, Task
from savedeep.runner.shm import Ring, RingSpec
from savedeep._workers._loop import Channels, Worker, run_worker


@dataclass(frozen=True)
class ProducerArgs:
    """Everything a producer needs, picklable."""

    preprocess: Any  # savedeep.data.preprocess.PreprocessSpec
    mean: np.ndarray
    input_shape: tuple[int, int, int]
    ring: RingSpec
    on_error: str  # "skip" | "fail"


def producer_main(index: int, row: int, ch: Channels, args: ProducerArgs) -> None:
    """Entry point of producer ``index`` (spawned by the parent)."""
    run_worker("producer", index, row, ch, None, lambda w: _loop(w, args))


def _loop(w: Worker, args: ProducerArgs) -> None:
    import cv2

    from savedeep.runner.faults import maybe_fail
    from savedeep.data.preprocess import Preprocessor

    cv2.setNumThreads(1)  # one process per core: threads inside would fight each other
    pre = Preprocessor(args.preprocess, args.mean, args.input_shape)
    ring = Ring.attach(args.ring)
    try:
        while True:
            w.acquire(w.ch.window)
            task = w.get(w.ch.tasks)
            if isinstance(task, EndOfStream):
                w.ch.window.release()
                return
            assert isinstance(task, Task)
            w.on_batch(task.batch)
            maybe_fail("producer", w.index, task.batch, w.check, w.ch)
            slot = w.get(w.ch.free_in)
            data = ring.slot(slot)["data"]
            indices: list[int] = []
            keys: list[str] = []
            failures: list[Failure] = []
            for i, (key, path) in enumerate(zip(task.keys, task.paths)):
                try:
                    pre.load(Path(path), out=data[len(indices)])
                except ImageError as exc:
                    if args.on_error == "fail":
                        raise bad_image_stops_run(path, exc) from exc
                    w.log.warning("skipping %s: %s", key, exc)
                    failures.append(Failure(task.start + i, key, str(exc)))
                    continue
                indices.append(task.start + i)
                keys.append(key)
            w.items += len(task.keys)
            w.ch.ready.put(BatchReady(task.batch, task.shard, slot, tuple(indices), tuple(keys), tuple(failures)))
            w.on_batch(None)
    finally:
        ring.close()
