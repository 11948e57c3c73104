"""Writer process: reorders its finished batches and streams them into Parquet shards.

Loop + protocol only (NOTE [savedeep pipeline data flow] in
savedeep/runner/messages.py); the reordering (``InOrder``), the per-shard counts and
records (``ShardSet``) and the shard format live in savedeep/data/output.py. Writer w
owns the shards k with k % W == w; it reports each finished shard to the
parent, which alone updates the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from savedeep.runner.messages import BatchDone, BatchWritten, EndOfStream, ShardWritten
from savedeep.data.output import ShardSet, shard_name
from savedeep.runner.shm import Ring, RingSpec
from savedeep._workers._loop import Channels, Worker, run_worker


@dataclass(frozen=True)
class WriterArgs:
    """Everything a writer needs, picklable."""

    directory: Path
    columns: tuple[Any, ...]  # savedeep.data.output.ColumnSpec
    metadata: dict[str, Sequence[Any]]  # extra columns of a CSV image list, by image position
    compression: str
    compression_level: int | None
    batches: tuple[tuple[int, int], ...]  # (batch, shard) of this writer's shards, in writing order
    shard_ranges: dict[int, tuple[int, int]]  # this writer's shards -> (start, stop) in the image list
    shard_batches: dict[int, int]  # this writer's shards -> number of batches
    consumers: int
    out_ring: RingSpec


def writer_main(index: int, row: int, ch: Channels, args: WriterArgs) -> None:
    """Entry point of writer ``index`` (spawned by the parent)."""
    run_worker("writer", index, row, ch, None, lambda w: _loop(w, args))


def _loop(w: Worker, args: WriterArgs) -> None:
    from savedeep.data.output import InOrder

    ring = Ring.attach(args.out_ring)
    inbox = w.ch.done[w.index]
    order = InOrder([b for b, _ in args.batches])
    ends = 0
    try:
        with ShardSet(
            args.directory,
            args.columns,
            args.metadata,
            args.compression,
            args.compression_level,
            args.shard_ranges,
            args.shard_batches,
        ) as shards:
            while ends < args.consumers:
                msg = w.get(inbox)
                if isinstance(msg, EndOfStream):
                    ends += 1
                    continue
                assert isinstance(msg, BatchDone)
                for done in order.push(msg.batch, msg):
                    _write(w, ring, shards, done)
            order.check_complete()
    finally:
        ring.close()


def _write(w: Worker, ring: Ring, shards: ShardSet, done: BatchDone) -> None:
    """Write one batch (the next in order), give its slot and window credit back, report it."""
    from savedeep.runner.faults import maybe_fail

    w.on_batch(done.batch)
    maybe_fail("writer", w.index, done.batch, w.check, w.ch)
    if done.slot is not None:
        shards.write(done.shard, done.keys, done.indices, ring.slot(done.slot))
        w.ch.free_out.put(done.slot)
    w.ch.window.release()
    w.items += len(done.keys)
    w.ch.events.put(BatchWritten(done.batch, len(done.keys), len(done.failures)))
    record = shards.end_batch(done.shard, [(f.key, f.reason) for f in done.failures])
    if record is not None:
        w.ch.events.put(
            ShardWritten(
                done.shard,
                shard_name(done.shard),
                record["rows"],
                tuple((f["image"], f["reason"]) for f in record["failures"]),
            )
        )
    w.on_batch(None)
