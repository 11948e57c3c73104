"""Forward engines: one interface, two implementations that give the same numbers.

``caffe`` runs the model through pycaffe; ``torch`` executes the same prototxt
and caffemodel with PyTorch (no pycaffe needed). Both follow Caffe's blob
semantics: a blob holds the last value written to it, so the blob of a
convolution followed by an in-place ReLU holds post-ReLU values.

Create an engine inside the process that will run it (device selection
happens there, before the net is built)::

    engine = create_engine("torch", model, "cuda:0", batch_size=32)
    acts = engine.forward(batch, ["conv1", "fc7"])   # {name: (n, *shape) float32 copies}
    engine.close()

This package also owns what is needed to run a net on a device: which GPUs exist and which CUDA each
engine needs (:mod:`.gpus`), which layers the installed pycaffe runs (:mod:`.caffe_layers`, asked
without importing it), and taking a net out of Caffe (:mod:`.conversion`: ONNX, a PyTorch module,
torch.export; the PyTorch layers it copies in are :mod:`.converted_ops`).

May import: :mod:`savedeep.caffe`, :mod:`savedeep.data` (the preprocessing a converted model
records), the config and the leaf modules. Never the runner, analysis, the CLI or ``workers``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from savedeep.config import ENGINES as ENGINE_KINDS
from savedeep.engines.base import (  # noqa: F401 - the engines' shared interface, importable from here
    OUT_DTYPES,
    Device,
    DeviceUnavailableError,
    Engine,
    EngineBase,
    check_device,
    keep_freed_memory,
    output_buffer,
    parse_device,
    validate_batch,
    validate_blob_names,
)
from savedeep.errors import ConfigError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    from savedeep.caffe.model import Model


def create_engine(kind: str, model: "Model", device: str, batch_size: int, threads: int | None = None) -> Engine:
    """Build the `kind` engine ("caffe" or "torch") for `model` on `device` ("cpu" or "cuda:N") in this process."""
    if kind not in ENGINE_KINDS:
        raise ConfigError(f"engine {kind!r} is unknown: use one of {', '.join(ENGINE_KINDS)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size {batch_size!r} must be a positive integer")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads {threads!r} must be a positive integer or unset")
    dev = parse_device(device)
    if model.weights is None:
        raise ModelError(
            f"model {model.directory} has no weights file: the engines need the .caffemodel beside the prototxt"
        )
    if kind == "caffe":
        from savedeep.engines.caffe_engine import CaffeEngine

        return CaffeEngine(model.prototxt, model.weights, model.net, dev, batch_size, threads)
    from savedeep.engines.torch_engine import TorchEngine

    return TorchEngine(model.net, dev, batch_size, threads, source=model.prototxt)


__all__ = [
    "ENGINE_KINDS",
    "Device",
    "DeviceUnavailableError",
    "Engine",
    "check_device",
    "create_engine",
    "keep_freed_memory",
    "parse_device",
    "validate_batch",
    "validate_blob_names",
    "output_buffer",
]
