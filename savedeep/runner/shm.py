"""Shared-memory rings: fixed slots of named arrays, allocated once by the parent.

A :class:`Ring` is one POSIX shared-memory segment cut into ``slots`` equal
slots; each slot holds one array per field (for the input ring the batch
tensor, for the output ring one array per requested blob). The parent creates
and unlinks every segment (names start with ``savedeep_``, which the tests'
leak check looks for); workers attach by name and only close. Slot numbers
travel through queues; see NOTE [savedeep pipeline data flow] in
savedeep/runner/messages.py.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np

SHM_PREFIX = "savedeep_"
_ALIGN = 64  # cache-line aligned fields


@dataclass(frozen=True)
class Field:
    """One array of a slot: its name, shape (batch dimension first) and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class RingSpec:
    """What a ring holds; picklable, so workers can attach to it by name."""

    name: str
    slots: int
    fields: tuple[Field, ...]

    @property
    def slot_bytes(self) -> int:
        total = 0
        for f in self.fields:
            total += -(-f.nbytes // _ALIGN) * _ALIGN
        return total

    @property
    def nbytes(self) -> int:
        return max(self.slots * self.slot_bytes, 1)


def new_ring_spec(role: str, slots: int, fields: list[Field]) -> RingSpec:
    """A spec with a fresh, unique segment name for ``role``."""
    name = f"{SHM_PREFIX}{os.getpid()}_{role}_{secrets.token_hex(4)}"
    return RingSpec(name=name, slots=slots, fields=tuple(fields))


class Ring:
    """A mapped ring; ``slot(i)`` gives a dict of numpy views into slot ``i``."""

    def __init__(self, spec: RingSpec, create: bool) -> None:
        self.spec = spec
        self.owner = create
        shm = shared_memory.SharedMemory(name=spec.name, create=create, size=spec.nbytes if create else 0)
        self._shm: shared_memory.SharedMemory | None = shm  # None once closed
        self._views: list[dict[str, np.ndarray]] = []
        for i in range(spec.slots):
            offset = i * spec.slot_bytes
            views = {}
            for f in spec.fields:
                views[f.name] = np.ndarray(f.shape, dtype=f.dtype, buffer=shm.buf, offset=offset)
                offset += -(-f.nbytes // _ALIGN) * _ALIGN
            self._views.append(views)

    @classmethod
    def create(cls, spec: RingSpec) -> "Ring":
        """Allocate the segment (parent only)."""
        return cls(spec, create=True)

    @classmethod
    def attach(cls, spec: RingSpec) -> "Ring":
        """Map an existing segment (workers)."""
        return cls(spec, create=False)

    def slot(self, i: int) -> dict[str, np.ndarray]:
        """The arrays of slot ``i``, as views into shared memory."""
        return self._views[i]

    def close(self) -> None:
        """Unmap; the owner also unlinks the segment. Safe to call twice."""
        self._views = []
        if self._shm is None:
            return
        try:
            self._shm.close()
        except BufferError:
            # A caller still holds a view; the mapping goes with the process.
            pass
        if self.owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
        self._shm = None

    def __enter__(self) -> "Ring":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- start-up payloads
#
# A spawned worker's arguments reach it through a pipe that the parent writes
# while starting the process, and CPython (3.11) keeps the read end open in the
# parent until that write is done. If the child dies before reading everything
# (an import error, a script that re-runs savedeep at import, the OOM killer)
# and the arguments exceed the pipe's 64 KiB, the parent blocks forever. The
# mean image alone is 786 KB and a writer's batch list grows with the run, so
# each worker's arguments travel through a small shared-memory segment
# instead, and the spawn arguments stay a few hundred bytes.


@dataclass(frozen=True)
class PayloadRef:
    """Where a worker finds its pickled start-up arguments."""

    name: str
    size: int


def put_payload(role: str, obj: object) -> tuple[PayloadRef, "Segment"]:
    """Pickle ``obj`` into a new segment (parent only); the caller unlinks it with ``close``."""
    import pickle

    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    name = f"{SHM_PREFIX}{os.getpid()}_args_{role}_{secrets.token_hex(4)}"
    shm = shared_memory.SharedMemory(name=name, create=True, size=max(len(data), 1))
    assert shm.buf is not None  # open: None only after close()
    shm.buf[: len(data)] = data
    return PayloadRef(name, len(data)), Segment(shm)


def take_payload(ref: PayloadRef) -> tuple[Any, ...]:
    """Read and unpickle the arguments ``ref`` points to (workers; the parent unlinks)."""
    import pickle

    shm = shared_memory.SharedMemory(name=ref.name, create=False)
    try:
        assert shm.buf is not None  # open: None only after close()
        data = bytes(shm.buf[: ref.size])
    finally:
        shm.close()
    return pickle.loads(data)


class Segment:
    """An owned segment that is not a ring; ``close`` unmaps and unlinks it."""

    def __init__(self, shm: shared_memory.SharedMemory) -> None:
        self._shm: shared_memory.SharedMemory | None = shm  # None once closed

    def close(self) -> None:
        if self._shm is None:
            return
        self._shm.close()
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass
        self._shm = None
