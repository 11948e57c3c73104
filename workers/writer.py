"""Writer process: reorders its finished batches and streams them into Parquet shards.

Loop + protocol only (NOTE [savedeep pipeline data flow] in
savedeep/messages.py); the shard format lives in savedeep/output.py. Writer w
owns the shards k with k % W == w; it reports each finished shard to the
parent, which alone updates the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from savedeep.messages import BatchDone, BatchWritten, EndOfStream, ShardWritten
from savedeep.shm import Ring, RingSpec
from workers._loop import Channels, Worker, run_worker


@dataclass(frozen=True)
class WriterArgs:
    """Everything a writer needs, picklable."""

    directory: Path
    columns: tuple[Any, ...]               # savedeep.output.ColumnSpec
    metadata: dict[str, list[Any]]         # extra columns of a CSV image list, by image position
    compression: str
    compression_level: int | None
    batches: tuple[tuple[int, int], ...]   # (batch, shard) of this writer's shards, in writing order
    shard_ranges: dict[int, tuple[int, int]]  # this writer's shards -> (start, stop) in the image list
    shard_batches: dict[int, int]          # this writer's shards -> number of batches
    consumers: int
    out_ring: RingSpec


def writer_main(index: int, slot: int, ch: Channels, args: WriterArgs) -> None:
    """Entry point of writer ``index`` (spawned by the parent)."""
    run_worker("writer", index, slot, ch, None, lambda w: _loop(w, args))


def _loop(w: Worker, args: WriterArgs) -> None:
    from savedeep.faults import maybe_fail
    from savedeep.output import ShardWriter, disk_errors

    ring = Ring.attach(args.out_ring)
    inbox = w.ch.done[w.index]
    meta_cols = list(args.metadata)
    order = list(args.batches)
    pos = 0
    pending: dict[int, BatchDone] = {}
    remaining = dict(args.shard_batches)
    open_shards: dict[int, ShardWriter] = {}
    shard_failures: dict[int, list[tuple[str, str]]] = {k: [] for k in remaining}
    ends = 0
    try:
        while ends < args.consumers:
            msg = w.get(inbox)
            if isinstance(msg, EndOfStream):
                ends += 1
                continue
            assert isinstance(msg, BatchDone)
            pending[msg.batch] = msg
            while pos < len(order) and order[pos][0] in pending:
                done = pending.pop(order[pos][0])
                pos += 1
                w.on_batch(done.batch)
                maybe_fail("writer", w.index, done.batch, w.check)
                sw = open_shards.get(done.shard)
                if sw is None:
                    sw = open_shards[done.shard] = ShardWriter(
                        args.directory, done.shard, args.columns, meta_cols,
                        args.compression, args.compression_level)
                if done.slot is not None:
                    blobs = ring.slot(done.slot)
                    meta = {m: [args.metadata[m][i] for i in done.indices] for m in meta_cols}
                    with disk_errors(f"shard {sw.tmp_path.name}"):
                        sw.write(done.keys, meta, blobs)
                    w.ch.free_out.put(done.slot)
                w.ch.window.release()
                shard_failures[done.shard] += [(f.key, f.reason) for f in done.failures]
                w.items += len(done.keys)
                w.ch.events.put(BatchWritten(done.batch, len(done.keys), len(done.failures)))
                remaining[done.shard] -= 1
                if remaining[done.shard] == 0:
                    sw = open_shards.pop(done.shard)
                    fails = shard_failures.pop(done.shard)
                    start, stop = args.shard_ranges[done.shard]
                    if sw.rows + len(fails) != stop - start:
                        raise RuntimeError(f"shard {done.shard}: {sw.rows} rows + {len(fails)} failures != "
                                           f"{stop - start} images (a bug: rows lost or duplicated)")
                    record = {"index": done.shard, "start": start, "stop": stop, "rows": sw.rows,
                              "failures": [{"image": k, "reason": r} for k, r in fails]}
                    with disk_errors(f"shard {sw.final_path.name}"):
                        sw.finish(record)
                    w.ch.events.put(ShardWritten(done.shard, sw.final_path.name, sw.rows, tuple(fails)))
                w.on_batch(None)
        if pos != len(order) or pending:
            raise RuntimeError(f"writer ended with {len(order) - pos} batches unwritten (a bug)")
    finally:
        for sw in open_shards.values():
            sw.abort()
        ring.close()
