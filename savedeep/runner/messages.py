"""The pipeline's message protocol: every queue carries only these frozen dataclasses.

NOTE [savedeep pipeline data flow]
==================================

::

    parent (preflight: plan, devices, rings, savedeep/runner/preflight.py; supervisor: start, watch, shutdown,
            savedeep/runner/pipeline.py)
      |  tasks: Task ... EndOfStream x P   (kept out_slots + P ahead of the batches written)
      v
    producers x P  --(decode + preprocess into a free input slot)-->
      |  ready: BatchReady (slot number + image indices, never tensors) ... EndOfStream x G
      v
    consumers x G  --(forward, reduce, copy blobs into a free output slot; free the input slot)-->
      |  done[w]: BatchDone for the shards of writer w (shard % W == w) ... EndOfStream (one per consumer)
      v
    writers x W  --(each: reorder its batches, append rows to its open shard, rename finished
                    shards; free the output slot; release one window credit)
      |  events: BatchWritten, ShardWritten, DeviceInfo, WorkerStats, WorkerFailed (every role sends the last two)
      v
    parent (manifest: savedeep/runner/manifest.py; progress bar: savedeep/runner/ui.py; summary, errors)

Tensors travel only through shared memory (savedeep/runner/shm.py). Free slots are
numbers on the ``free_in``/``free_out`` queues. A producer takes a *window
credit* (a semaphore of ``out_slots`` permits) before taking a task, and the
writer gives one back after writing a batch: so at most ``out_slots`` batches
are between "taken" and "written", every one of them can get an output slot,
and the writer's reordering can never starve the consumers (no deadlock, and
memory bounded by the rings whatever the number of images).

The parent does not queue a task per batch of the run at the start: it keeps
``out_slots + P`` tasks ahead of the batches written, one more per BatchWritten
(``Feeder`` in savedeep/runner/pipeline.py), so its memory does not grow with the
number of images either.

End of stream: after the last task the parent puts one EndOfStream per producer on ``tasks``; once
every producer has *exited* cleanly (so everything it put on ``ready`` is in
the pipe before), the parent puts one EndOfStream per consumer on ``ready``;
each consumer puts one on every ``done[w]``; each writer ends after G of them.
Writers own whole shards (shard k goes to writer k % W), so Parquet encoding,
the costliest CPU work for big blobs, runs in parallel across shards; the
parent alone updates the manifest, when a writer reports a shard written
(NOTE [savedeep manifest] in savedeep/runner/manifest.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from savedeep.errors import WorkerError


@dataclass(frozen=True)
class DeviceInfo:
    """consumer -> parent, once ready: the consumer's device for the manifest (GPU name, UUID, versions)."""

    index: int
    info: dict


@dataclass(frozen=True)
class Task:
    """parent -> producers: decode these images as batch ``batch`` of shard ``shard``."""

    batch: int
    shard: int
    start: int  # position of the first image in the sorted list
    keys: tuple[str, ...]  # the images' keys (relative paths)
    paths: tuple[str, ...]  # where to read them


@dataclass(frozen=True)
class Failure:
    """One image that could not be used, with its reason (inside a Batch)."""

    index: int
    key: str
    reason: str


@dataclass(frozen=True)
class Batch:
    """Batch ``batch`` of shard ``shard`` between two stages, in slot ``slot`` of the ring between them.

    ``indices`` are the positions (in the sorted image list) of the ``len(indices)``
    rows packed at the start of the slot, ``keys`` their keys; images that failed are in ``failures``.
    """

    batch: int
    shard: int
    slot: int | None  # None only in a BatchDone whose every image failed (nothing to forward)
    indices: tuple[int, ...]
    keys: tuple[str, ...]
    failures: tuple[Failure, ...]


@dataclass(frozen=True)
class BatchReady(Batch):
    """producer -> consumers: the batch is decoded in input slot ``slot``."""

    slot: int  # always a slot: the producer takes one before decoding (the consumer frees it)

    def done(self, slot: int | None) -> BatchDone:
        """The same batch forwarded, its activations in output slot ``slot`` (None: every image failed)."""
        return BatchDone(self.batch, self.shard, slot, self.indices, self.keys, self.failures)


@dataclass(frozen=True)
class BatchDone(Batch):
    """consumer -> writer: the batch's activations are in output slot ``slot``."""


@dataclass(frozen=True)
class EndOfStream:
    """Any stage -> the next: no more work will come from ``sender``."""

    sender: str


@dataclass(frozen=True)
class BatchWritten:
    """writer -> parent: batch ``batch`` is in its shard (for the progress bar)."""

    batch: int
    rows: int
    failures: int


@dataclass(frozen=True)
class ShardWritten:
    """writer -> parent: shard ``shard`` is complete and renamed into place; the parent records it in the manifest."""

    shard: int
    file: str
    rows: int
    failures: tuple[tuple[str, str], ...]  # (image key, reason)


@dataclass(frozen=True)
class WorkerStats:
    """any worker -> parent, at a clean exit: how long it was busy, for the summary."""

    role: str
    index: int
    busy_s: float
    wall_s: float
    items: int


@dataclass(frozen=True)
class WorkerFailed:
    """any worker -> parent: it failed; carries where and the formatted traceback."""

    role: str
    index: int
    pid: int
    device: str | None
    batch: int | None
    error: str
    traceback: str
    exit_code: int = WorkerError.exit_code

    def describe(self) -> str:
        """A one-paragraph message naming the role, device, batch and the error."""
        where = f"{self.role} {self.index}"
        if self.device:
            where += f" on {self.device}"
        where += f" (pid {self.pid})"
        what = f" on batch {self.batch}" if self.batch is not None else " during start-up"
        return f"{where} failed{what}: {self.error}"
