"""What both engines share: the Engine interface, devices, and the checks of a forward's arguments.

The engines import this module, never the package (whose ``create_engine`` imports them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, TypeVar, runtime_checkable

import numpy as np

from savedeep.errors import ConfigError, InputError, ModelError


class DeviceUnavailableError(ConfigError):
    """A well-formed device (``cuda:N``) that this process cannot use; the caller may fall back to ``cpu``."""


@dataclass(frozen=True)
class Device:
    """A parsed device: type ``"cpu"`` or ``"cuda"``, and the GPU index for cuda."""

    type: str
    index: int | None = None

    @property
    def is_cuda(self) -> bool:
        """Whether this is a GPU."""
        return self.type == "cuda"

    def __str__(self) -> str:
        return "cpu" if self.type == "cpu" else f"cuda:{self.index}"


_DEVICE_RE = re.compile(r"^\s*(cpu|cuda)(?::(\d+))?\s*$", re.IGNORECASE)


def parse_device(device: str) -> Device:
    """Parse ``"cpu"``, ``"cuda"`` (= ``cuda:0``) or ``"cuda:N"``; ConfigError for anything else."""
    m = _DEVICE_RE.match(str(device)) if isinstance(device, str) else None
    if m is None or (m.group(1).lower() == "cpu" and m.group(2) is not None):
        raise ConfigError(f"device {device!r} is not a device: use 'cpu' or 'cuda:N' (N = GPU index, e.g. 'cuda:0')")
    if m.group(1).lower() == "cpu":
        return Device("cpu")
    return Device("cuda", int(m.group(2) or 0))


def check_device(device: Device, available: int, engine: str) -> None:
    """Raise DeviceUnavailableError unless `device` is the CPU or a GPU index below `available`."""
    if not device.is_cuda:
        return
    if available <= 0:
        raise DeviceUnavailableError(
            f"device {device}: the {engine} engine sees no CUDA GPU in this process "
            f"(no GPU, no driver, a CPU-only build, or CUDA_VISIBLE_DEVICES hides them); use device 'cpu'"
        )
    if device.index is None or device.index >= available:
        raise DeviceUnavailableError(
            f"device {device}: the {engine} engine sees {available} GPU(s) (cuda:0..cuda:{available - 1}); "
            f"pick one of those or use 'cpu'"
        )


_E = TypeVar("_E", bound="EngineBase")


class EngineBase:
    """What both engines share: their device and batch size, the shapes they report (set by their
    constructors), the checks of a forward's arguments, and use as a context manager."""

    kind: str
    device: str
    batch_size: int
    _input_shape: tuple[int, ...]
    _blob_shapes: dict[str, tuple[int, ...]]

    def _use_device(self, device: Device | str, batch_size: int, gpus: Callable[[], int]) -> Device:
        """Parse ``device``; for a GPU, check it against the ``gpus()`` this engine sees (DeviceUnavailableError);
        record it and the batch size. The parsed device."""
        dev = parse_device(device) if isinstance(device, str) else device
        if dev.is_cuda:
            check_device(dev, gpus(), self.kind)
        self.device, self.batch_size = str(dev), batch_size
        return dev

    def _checked(self, batch: np.ndarray, blobs: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """A forward's batch as C-contiguous float32 and its blobs in order without duplicates, checked
        (:func:`validate_batch`, :func:`validate_blob_names`)."""
        return (
            validate_batch(batch, self._input_shape, self.batch_size),
            validate_blob_names(blobs, list(self._blob_shapes)),
        )

    def close(self) -> None:
        """Release the net and device memory."""
        raise NotImplementedError

    def __enter__(self: _E) -> _E:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The per-image input shape (C, H, W)."""
        return self._input_shape  # type: ignore[return-value]

    @property
    def blob_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-image shapes of every user-visible blob, in net order."""
        return dict(self._blob_shapes)


@runtime_checkable
class Engine(Protocol):
    """What every engine offers: the input it wants, blob shapes, forward, close."""

    kind: str
    device: str
    batch_size: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The per-image input shape (C, H, W)."""
        ...

    @property
    def blob_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-image shapes of every user-visible blob, in net order."""
        ...

    def forward(
        self, batch: np.ndarray, blobs: Sequence[str], out: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Run `batch` (n, C, H, W) float32 and return float32 copies of the requested blobs, (n, *shape) each.

        A blob that has a buffer in `out` is written into ``out[name][:n]`` instead (float32 or
        float16, e.g. a shared-memory slot; float16 rounded to nearest, ties to even) and that
        view is what the returned dict holds for it; the other blobs come back as copies.
        """
        ...

    def close(self) -> None:
        """Release the net and device memory."""
        ...


def validate_batch(batch: np.ndarray, input_shape: tuple[int, ...], batch_size: int) -> np.ndarray:
    """Check a forward batch's shape and return it as C-contiguous float32; InputError if it does not fit."""
    if not isinstance(batch, np.ndarray) or batch.ndim != 1 + len(input_shape):
        raise InputError(
            f"forward batch must be a numpy array (n, {', '.join(map(str, input_shape))}), "
            f"got {getattr(batch, 'shape', type(batch).__name__)}"
        )
    n = batch.shape[0]
    if tuple(batch.shape[1:]) != tuple(input_shape) or not 1 <= n <= batch_size:
        raise InputError(
            f"forward batch has shape {batch.shape}; the engine takes (n, {', '.join(map(str, input_shape))}) "
            f"with 1 <= n <= batch_size {batch_size}: preprocess images to the model's input shape"
        )
    return np.ascontiguousarray(batch, dtype=np.float32)


def validate_blob_names(names: Sequence[str], known: Sequence[str]) -> list[str]:
    """The requested names in order without duplicates; ModelError naming the valid ones for an unknown name."""
    from savedeep.caffe.model import check_blob_names

    if not names:
        raise ModelError(f"no blob requested; the model's blobs are: {', '.join(known)}")
    return check_blob_names(names, known)


OUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def output_buffer(out: dict[str, np.ndarray], name: str, shape: Sequence[int], n: int) -> np.ndarray:
    """``out[name][:n]``, checked: present, float32 or float16, and shaped (>= n, *shape)."""
    if name not in out:
        raise InputError(f"forward: the output buffers have no entry for blob {name!r}")
    dst = out[name]
    if tuple(dst.shape[1:]) != tuple(shape) or dst.shape[0] < n:
        raise InputError(
            f"forward: output buffer for blob {name!r} has shape {dst.shape}, "
            f"needs at least ({n}, {', '.join(map(str, shape))})"
        )
    if dst.dtype not in OUT_DTYPES or not dst.flags.writeable:
        raise InputError(
            f"forward: output buffer for blob {name!r} must be a writeable float32 or float16 array, "
            f"got {'read-only ' if not dst.flags.writeable else ''}{dst.dtype}"
        )
    return dst[:n]


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse in this process; whether it applied.

    A forward allocates every layer's output anew, tens of MB per batch (a CaffeNet conv1
    batch of 32 is 37 MB), above glibc's largest mmap threshold (32 MiB): each such
    allocation is a fresh mmap whose pages the kernel faults in and zeroes, and free()
    unmaps it again. With mmap off and no trimming, the next batch reuses the same heap
    (the gain is in benchmarks/RESULTS.md). The cost:
    the process keeps its high-water mark, which every batch reaches anyway. A consumer calls
    this first thing; elsewhere (macOS, musl) it does nothing and returns False.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
