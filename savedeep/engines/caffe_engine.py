"""The caffe engine: pycaffe runs the prototxt + caffemodel on the CPU or one GPU.

pycaffe must be imported in the process that runs the net, after the
environment is set: ``GLOG_minloglevel`` silences glog, and
``OPENBLAS_NUM_THREADS`` (from ``threads``) only takes effect if it is set
before the first ``import caffe`` of that process, because OpenBLAS reads it
when the library loads. Device selection (``caffe.set_device(i);
caffe.set_mode_gpu()`` or ``caffe.set_mode_cpu()``) happens before the net is
created, as Caffe requires.

pycaffe's ``net.blobs[name].data`` are views into Caffe's memory that the next
forward overwrites, so every result is copied out.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Sequence

import numpy as np

from savedeep.engines.base import Device, EngineBase, output_buffer
from savedeep.engines.caffe_layers import check_runnable
from savedeep.engines.gpus import caffe_has_cuda, probe_driver
from savedeep.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    from savedeep.caffe.model import Net

log = logging.getLogger(__name__)


def import_caffe(threads: int | None = None) -> ModuleType:
    """Import pycaffe quietly, with OpenBLAS limited to `threads` if this is the process's first import."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    if threads is not None:
        if "caffe" in sys.modules:
            if os.environ.get("OPENBLAS_NUM_THREADS") != str(threads):
                log.warning(
                    "caffe was already imported in this process: threads=%d has no effect on OpenBLAS "
                    "(set OPENBLAS_NUM_THREADS before the first import of caffe)",
                    threads,
                )
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    try:
        import caffe  # noqa: PLC0415 - heavy, and must follow the environment set above
    except ImportError as exc:
        raise ModelError(
            f"the caffe engine needs pycaffe, which cannot be imported ({exc}); install it with "
            f"scripts/setup.sh or use engine 'torch'"
        ) from exc
    return caffe


def cuda_device_count() -> int:
    """The number of CUDA GPUs the driver shows this process (0 without a driver), without torch.

    Counted as the parent counts them (savedeep.engines.gpus.probe_driver: the driver, in a subprocess
    that inherits this process's CUDA_VISIBLE_DEVICES), so the two cannot disagree.
    """
    return probe_driver().count or 0


def select_device(caffe: ModuleType, dev: Device) -> None:
    """Put pycaffe on ``dev`` in this thread: set_device, then set_mode_gpu; or set_mode_cpu.

    set_device comes first: set_mode_gpu builds Caffe's per-thread state (a cuBLAS handle,
    a cuRAND generator) on the current device, which would be GPU 0 otherwise.
    """
    if dev.is_cuda:
        caffe.set_device(dev.index)
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()


class CaffeEngine(EngineBase):
    """The engine that runs a net through pycaffe."""

    kind = "caffe"

    def __init__(
        self,
        prototxt: Path | str,
        weights: Path | str,
        net: "Net",
        device: Device | str = "cpu",
        batch_size: int = 1,
        threads: int | None = None,
    ) -> None:
        caffe = import_caffe(threads)
        dev = self._use_device(device, batch_size, lambda: cuda_device_count() if caffe_has_cuda(caffe) else 0)
        select_device(caffe, dev)
        self._visible = list(net.blobs)
        self._input = net.input_name
        # NOTE [caffe engine refusals]: the preflight checked the same in the parent
        pycaffe = str(Path(str(caffe.__file__)).resolve().parent)
        check_runnable(net, caffe.layer_type_list(), dev.is_cuda, prototxt, pycaffe)
        self.net = caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
        if self._input not in self.net.blobs:
            raise ModelError(f"{prototxt}: pycaffe's net has no input blob {self._input!r}")
        shape = tuple(self.net.blobs[self._input].data.shape)
        if len(shape) != 4:
            raise ModelError(f"{prototxt}: input {self._input!r} has shape {shape}; savedeep feeds images (N, C, H, W)")
        self._input_shape = tuple(int(d) for d in shape[1:])
        self._n = -1
        self._reshape(batch_size)
        self._blob_shapes = {b: tuple(int(d) for d in self.net.blobs[b].data.shape[1:]) for b in self._visible}
        # The last layer that writes each blob: a forward can stop there.
        self._last_writer: dict[str, int] = {}
        for i, tops in enumerate(self.net.top_names.values()):
            for t in tops:
                self._last_writer[t] = i
        self._layer_names = list(self.net._layer_names)
        log.debug("caffe engine on %s: %s, batch %d", self.device, prototxt, batch_size)

    def _reshape(self, n: int) -> None:
        if n != self._n:
            self.net.blobs[self._input].reshape(n, *self._input_shape)
            self.net.reshape()
            self._n = n

    def forward(
        self, batch: np.ndarray, blobs: Sequence[str], out: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Run `batch` (n, C, H, W); float32 copies of the requested blobs, those in `out` written there."""
        x, names = self._checked(batch, blobs)
        n = x.shape[0]
        self._reshape(n)
        self.net.blobs[self._input].data[...] = x
        last = max(self._last_writer.get(b, 0) for b in names)
        self.net.forward(end=self._layer_names[last])
        results = {}
        for b in names:
            view = self.net.blobs[b].data
            if out and b in out:
                results[b] = output_buffer(out, b, view.shape[1:], n)
                with np.errstate(over="ignore"):  # float16 overflow: the consumer counts and reports it
                    np.copyto(results[b], view, casting="same_kind")  # float16: round to nearest even
            else:
                results[b] = np.array(view, dtype=np.float32, copy=True)
        return results

    def close(self) -> None:
        """Drop the pycaffe net (frees its CPU or GPU memory)."""
        self.net = None
