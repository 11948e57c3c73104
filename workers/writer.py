"""Writer process: reorders finished batches and streams them into Parquet shards.

Loop + protocol only (NOTE [savedeep pipeline data flow] in
savedeep/messages.py); the shard format lives in savedeep/output.py. The writer
is the only process that updates the manifest while the run goes on.
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
    """Everything the writer needs, picklable."""

    directory: Path
    columns: tuple[Any, ...]               # savedeep.output.ColumnSpec
    metadata: dict[str, list[Any]]         # extra columns of a CSV image list, by image position
    compression: str
    compression_level: int | None
    batches: tuple[tuple[int, int], ...]   # (batch, shard) in writing order
    shard_batches: dict[int, int]          # shard -> number of batches
    consumers: int
    out_ring: RingSpec


def writer_main(index: int, slot: int, ch: Channels, args: WriterArgs) -> None:
    """Entry point of the writer (spawned by the parent)."""
    run_worker("writer", index, slot, ch, None, lambda w: _loop(w, args))


def _loop(w: Worker, args: WriterArgs) -> None:
    from savedeep.faults import maybe_fail
    from savedeep.output import ShardWriter, disk_errors, read_manifest, shard_name, write_manifest

    ring = Ring.attach(args.out_ring)
    manifest = read_manifest(args.directory)
    assert manifest is not None, "the parent writes the manifest before starting the writer"
    entries = {s["index"]: s for s in manifest["shards"]}
    meta_cols = list(args.metadata)
    order = list(args.batches)
    pos = 0
    pending: dict[int, BatchDone] = {}
    remaining = dict(args.shard_batches)
    open_shards: dict[int, ShardWriter] = {}
    shard_failures: dict[int, list[dict[str, str]]] = {k: [] for k in remaining}
    ends = 0
    try:
        while ends < args.consumers:
            msg = w.get(w.ch.done)
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
                shard_failures[done.shard] += [{"image": f.key, "reason": f.reason} for f in done.failures]
                w.items += len(done.keys)
                w.ch.events.put(BatchWritten(done.batch, len(done.keys), len(done.failures)))
                remaining[done.shard] -= 1
                if remaining[done.shard] == 0:
                    sw = open_shards.pop(done.shard)
                    with disk_errors(f"shard {sw.final_path.name}"):
                        sw.finish()
                    entry = entries[done.shard]
                    expected = entry["stop"] - entry["start"]
                    fails = shard_failures.pop(done.shard)
                    if sw.rows + len(fails) != expected:
                        raise RuntimeError(f"shard {done.shard}: {sw.rows} rows + {len(fails)} failures "
                                           f"!= {expected} images (a bug: rows lost or duplicated)")
                    entry.update(file=shard_name(done.shard), rows=sw.rows, failures=fails, complete=True)
                    with disk_errors(f"the manifest in {args.directory}"):
                        write_manifest(args.directory, manifest)
                    w.ch.events.put(ShardWritten(done.shard, sw.rows, len(fails)))
                w.on_batch(None)
        if pos != len(order) or pending:
            raise RuntimeError(f"writer ended with {len(order) - pos} batches unwritten (a bug)")
    finally:
        for sw in open_shards.values():
            sw.abort()
        ring.close()
