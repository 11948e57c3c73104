"""``savedeep convert``: a Caffe model as an ONNX graph or a PyTorch program, with Caffe's blob semantics.

Both are made from the torch engine's layer modules (:mod:`savedeep.engines.torch_layers`),
which are compared with pycaffe layer by layer and on whole nets, so the converted
model computes the same arithmetic as the torch engine:

- ``--to torch``: :func:`torch.export.export` of :class:`BlobProgram`, saved with
  :func:`torch.export.save` as a ``.pt2`` file. ``torch.export.load`` reads it in any
  PyTorch 2.x environment without savedeep (the graph holds only aten operators and
  the weights); TorchScript is in maintenance mode and its tracer records Python
  control flow silently, where ``torch.export`` refuses what it cannot capture.
- ``--to onnx``: ``torch.onnx.export(..., dynamo=True)`` of the same exported
  program at a pinned opset (:data:`ONNX_OPSET`). Caffe's pooling output size (ceil,
  a last window starting in the padding dropped), LRN and Crop are already spelled out
  in plain operators (pads, slices, sums of shifted squares), so no ONNX operator's
  own rounding rule comes into play. AVE pooling is the exception: torch.onnx drops
  ``divisor_override`` without a word, so for ONNX the clipped border divisor is a
  constant factor instead (:class:`OnnxAvePooling`; the tests caught it on GoogLeNet).
  The dynamo exporter needs onnxscript and works offline.

Layers that ONNX cannot express exactly are refused by name (:data:`ONNX_REFUSED`),
as are the layer types the torch engine does not run.

The input is the preprocessed blob: float32 ``(N, 3, H, W)``, BGR, mean subtracted
(savedeep's preprocessing, README "Preprocessing"); the spec and the mean travel in
the file (ONNX ``metadata_props``, the ``.pt2``'s extra file ``savedeep.json``).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from savedeep.errors import ConfigError, ModelError, UnsupportedLayerError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from savedeep.model import Model, Net

log = logging.getLogger(__name__)

ONNX_OPSET = 18
TARGETS = ("onnx", "torch")
INSTALL_HINT = "pip install 'savedeep[convert]' (onnx, onnxscript, onnxruntime; scripts/setup.sh installs them)"
METADATA_FILE = "savedeep.json"  # the .pt2's extra file holding the metadata

# Layer types the ONNX graph refuses, and why: ONNX has no operator with Caffe's exact result.
ONNX_REFUSED = {
    "ArgMax": "Caffe orders equal values by the larger index first, ONNX TopK by the smaller one, so "
              "ties would give other indices",
}


def _blob_semantics_note() -> str:
    return ("each output is the blob's final value in Caffe's forward (an in-place layer's blob holds its "
            "value after the last in-place layer, e.g. post-ReLU)")


def check_convertible(net: "Net", to: str, source: object, names: set[str] | None = None) -> None:
    """Refuse, naming the layer and its type, a net that the conversion cannot reproduce exactly.

    ``names``: the layers the requested blobs need (None: all); a layer no requested blob needs is
    left out of the file and so never refused."""
    from savedeep.engines.torch_engine import unsupported_layers
    from savedeep.engines.torch_layers import SUPPORTED_TYPES

    bad = [layer for layer in unsupported_layers(net) if names is None or layer.name in names]
    if bad:
        raise UnsupportedLayerError(
            f"layer {bad[0].name!r} in {source} has type {bad[0].type!r}, which savedeep convert cannot convert "
            f"(it converts the types the torch engine runs: {', '.join(sorted(SUPPORTED_TYPES))})"
        )
    if to == "onnx":
        for layer in net.layers:
            if layer.type in ONNX_REFUSED and (names is None or layer.name in names):
                raise UnsupportedLayerError(
                    f"layer {layer.name!r} in {source} has type {layer.type!r}, which ONNX cannot express exactly "
                    f"({ONNX_REFUSED[layer.type]}); convert with --to torch, or request only blobs before it"
                )


def _program_class() -> type:
    """The nn.Module class, defined on first use so that importing this module does not import torch."""
    global _PROGRAM
    if _PROGRAM is not None:
        return _PROGRAM
    import torch
    import torch.nn.functional as F
    from torch import nn

    from savedeep.engines.torch_engine import TorchNet
    from savedeep.engines.torch_layers import SPP, Pooling, caffe_pool_size
    from savedeep.model import spp_levels

    def onnx_ave_pool(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int],
                      ceil: bool) -> torch.Tensor:
        """Caffe's AVE pooling without ``divisor_override``, which torch.onnx drops silently (its
        AveragePool divides by the full window, so Caffe's clipped border windows came out wrong).

        Same window sums as the torch engine's: the mean over the full zero-padded window times
        ``window / clipped window``, a factor of exactly 1 inside the image.
        """
        h, w = x.shape[2], x.shape[3]
        out_h = caffe_pool_size(h, kernel[0], stride[0], pad[0], ceil)
        out_w = caffe_pool_size(w, kernel[1], stride[1], pad[1], ceil)
        extra_h = max(0, (out_h - 1) * stride[0] + kernel[0] - h - pad[0])
        extra_w = max(0, (out_w - 1) * stride[1] + kernel[1] - w - pad[1])
        padding = (pad[1], extra_w, pad[0], extra_h)
        xp = F.pad(x, padding) if any(padding) else x
        y = F.avg_pool2d(xp, tuple(kernel), tuple(stride))[:, :, :out_h, :out_w]
        # Caffe's divisor: the window clipped to the padded input [-pad, size + pad)
        def clipped(out: int, size: int, k: int, st: int, pd: int) -> list[int]:
            return [min(i * st - pd + k, size + pd) - (i * st - pd) for i in range(out)]

        div_h = clipped(out_h, h, kernel[0], stride[0], pad[0])
        div_w = clipped(out_w, w, kernel[1], stride[1], pad[1])
        if all(d == kernel[0] for d in div_h) and all(d == kernel[1] for d in div_w):
            return y
        full = float(kernel[0] * kernel[1])
        factor = torch.tensor([[full / (a * b) for b in div_w] for a in div_h], dtype=x.dtype, device=x.device)
        return y * factor

    class OnnxAvePooling(nn.Module):
        """A Caffe AVE Pooling layer by :func:`onnx_ave_pool`."""

        def __init__(self, pool: Pooling) -> None:
            super().__init__()
            self.pool = pool
            self.layer_name = pool.layer_name

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            p = self.pool
            h, w = x.shape[2], x.shape[3]
            kernel, stride, pad = ((h, w), (1, 1), (0, 0)) if p.global_pooling else (p.kernel, p.stride, p.pad)
            return [onnx_ave_pool(x, kernel, stride, pad, p.ceil)]

    class OnnxAveSPP(nn.Module):
        """A Caffe AVE SPP layer, each pyramid level by :func:`onnx_ave_pool`."""

        def __init__(self, spp: SPP) -> None:
            super().__init__()
            self.spp = spp
            self.layer_name = spp.layer_name

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            levels = spp_levels(x.shape[2], x.shape[3], self.spp.height)
            pooled = [onnx_ave_pool(x, k, s, pd, True) for k, s, pd in levels]
            if self.spp.height == 1:
                return pooled
            return [torch.cat([y.reshape(y.shape[0], -1) for y in pooled], dim=1)]

    def onnx_op(op: nn.Module) -> nn.Module:
        if isinstance(op, Pooling) and op.method == "AVE":
            return OnnxAvePooling(op)
        if isinstance(op, SPP) and op.method == "AVE":
            return OnnxAveSPP(op)
        return op

    class BlobProgram(nn.Module):
        """The layers that produce the requested blobs, run in net order; forward(x) -> {blob: tensor}.

        Built from the torch engine's plan (which layers run, which Caffe aliases an in-place
        write updates, when a blob is no longer needed), without its run-time in-place
        shortcuts: every op returns new tensors, which is what export needs.
        """

        def __init__(self, net: "Net", names: Sequence[str], source: object = None, onnx: bool = False) -> None:
            super().__init__()
            full = TorchNet(net, source)
            plan = full.plan(list(names))
            self.names = list(names)
            self.input_name = net.input_name
            steps = [full._steps[i] for i in plan.steps]
            ops = [s.op for s in steps]
            if onnx:
                ops = [onnx_op(op) for op in ops]
            self.ops = nn.ModuleList(ops)
            self.bottoms = [s.bottoms for s in steps]
            self.tops = [s.tops for s in steps]
            self.drops = list(plan.drop_after)
            # An alias (a Flatten/Reshape/Split view in Caffe) takes the in-place write's value in its own
            # shape; the batch axis is the one whose size follows the batch.
            one, two = net.blob_shapes(1), net.blob_shapes(2)
            self.updates = [
                [(name, src, tuple(-1 if a != b else a for a, b in zip(one[name], two[name])))
                 for name, src in ups]
                for ups in plan.alias_updates
            ]

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            env: dict[str, torch.Tensor] = {self.input_name: x}
            for op, bottoms, tops, updates, drops in zip(self.ops, self.bottoms, self.tops, self.updates,
                                                         self.drops):
                values = op(*[env[b] for b in bottoms])
                for t, v in zip(tops, values):
                    env[t] = v
                for name, src, shape in updates:
                    env[name] = env[src].reshape(shape)
                for name in drops:
                    del env[name]
            out: dict[str, torch.Tensor] = {}
            seen: list[torch.Tensor] = []
            for n in self.names:
                v = env[n]
                # an output must not be the input nor another output (Split, Dropout give their bottom back)
                if v is x or any(v is s for s in seen):
                    v = v.clone()
                seen.append(v)
                out[n] = v
            return out

    _PROGRAM = BlobProgram
    return BlobProgram


_PROGRAM: type | None = None


def build_program(net: "Net", names: Sequence[str], source: object = None, onnx: bool = False
                  ) -> "torch.nn.Module":
    """The torch module computing the requested blobs of `net` from its input blob (``onnx``: with the
    operators that torch.onnx translates exactly)."""
    return _program_class()(net, names, source, onnx).eval()


def metadata(model: "Model", names: Sequence[str], batch: int | None, to: str) -> dict[str, str]:
    """What a user of the converted file needs: the input, the preprocessing and the mean, the outputs."""
    from savedeep.version import __version__
    from savedeep.preprocess import Preprocessor, PreprocessSpec, load_mean

    net = model.net
    shape = [int(d) for d in net.input_shape[1:]]
    try:
        pre = Preprocessor(PreprocessSpec(), load_mean(model.mean_path), tuple(shape)).describe()
    except ModelError as exc:  # not a (3, H, W) image input: no image preprocessing applies
        pre = None
        log.warning("%s: no preprocessing recorded: %s", model.prototxt, exc)
    if pre is not None:
        pre.pop("decoder", None)  # library versions of this machine, not part of the spec
    steps = [
        "decode to 8-bit RGB (H, W, 3)",
        f"resize to {shape[1:]} (H, W) ignoring the aspect ratio (warp): bilinear, rounded to uint8 "
        "(OpenCV INTER_LINEAR_EXACT)",
        "to float32: float32(v / 255)",
        "HWC -> CHW, then RGB -> BGR (reverse the channel axis)",
        "multiply by raw_scale 255",
        "subtract mean_bgr from each channel (a (3, H, W) mean image is averaged per channel first)",
    ]
    return {
        "savedeep.version": __version__,
        "savedeep.input": json.dumps({"name": net.input_name, "shape": ["N" if batch is None else batch, *shape],
                                      "dtype": "float32", "layout": "NCHW", "channel_order": "BGR"}),
        "savedeep.outputs": json.dumps(list(names)),
        "savedeep.blob_semantics": _blob_semantics_note(),
        "savedeep.preprocessing": json.dumps({"steps": steps, "spec": pre} if pre else None),
        "savedeep.mean_bgr": json.dumps(pre["mean"].get("values_bgr") if pre else None),
        "savedeep.source": json.dumps({"net": net.name, "prototxt": model.prototxt.name,
                                       "weights": model.weights.name, "mean": model.mean_path.name}),
        "savedeep.format": to,
    }


def _require_onnx() -> None:
    missing = []
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ConfigError(f"savedeep convert --to onnx needs {' and '.join(missing)}: {INSTALL_HINT}")


def _batch(batch: int | str | None) -> int | None:
    """None for a dynamic batch axis, else the fixed batch size."""
    if batch is None or batch == "dynamic":
        return None
    try:
        n = int(batch)
    except (TypeError, ValueError):
        n = 0
    if isinstance(batch, bool) or n < 1:
        raise ConfigError(f"--batch: {batch!r} must be 'dynamic' or a positive integer (e.g. 1)")
    return n


def _export(program: "torch.nn.Module", net: "Net", batch: int | None) -> Any:
    """torch.export of the program: for a dynamic batch axis, traced with the net's declared batch (2 when it
    declares 1, which torch.export would take for a constant)."""
    import torch
    from torch._dynamo.exc import UserError
    from torch.fx.experimental.symbolic_shapes import ConstraintViolationError

    shape = tuple(int(d) for d in net.input_shape[1:])
    declared = int(net.input_shape[0])
    n = batch if batch is not None else max(declared, 2)
    example = torch.zeros((n, *shape), dtype=torch.float32)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=65536)}} if batch is None else None
    tied = ModelError(f"{net.prototxt}: the net's layers depend on the batch size (a parameter or a shape spans "
                      f"the batch axis), so it cannot take any batch size; convert with --batch {declared} "
                      f"(a fixed size)")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecations, nothing the user can change
            return torch.export.export(program, (example,), dynamic_shapes=dynamic, strict=False)
    except ConstraintViolationError as exc:
        raise tied from exc
    except UserError as exc:
        if batch is None and "Constraints violated" in str(exc):
            raise tied from exc
        raise
    except ModelError as exc:  # a layer refused the example batch, when it is not the declared one
        if batch is None and n != declared:
            raise tied from exc
        raise


def convert(model_dir: str | Path, to: str, dest: str | Path, blobs: Sequence[str] | None = None,
            batch: int | str | None = "dynamic", overwrite: bool = False) -> Path:
    """Write the model in ``model_dir`` as ``to`` ('onnx' or 'torch') to ``dest``; returns ``dest``.

    ``blobs``: the outputs (default: the net's outputs, the blobs no layer reads). ``batch``:
    'dynamic' (any batch size) or a fixed size. The file is written under a hidden name and
    renamed when complete; an existing ``dest`` is refused unless ``overwrite``.
    """
    if to not in TARGETS:
        raise ConfigError(f"--to: {to!r} is not one of {', '.join(TARGETS)}")
    if to == "onnx":
        _require_onnx()
    fixed = _batch(batch)
    dest = Path(dest)
    if dest.is_dir():
        raise ConfigError(f"-o {dest}: is a directory; give a file name, e.g. -o model.{'onnx' if to == 'onnx' else 'pt2'}")
    if to == "torch" and dest.suffix != ".pt2":
        raise ConfigError(f"-o {dest}: a torch.export program must be saved as a .pt2 file (torch.export.load "
                          f"expects it); e.g. -o {dest.with_suffix('.pt2').name}")
    if dest.exists() and not overwrite:
        raise ConfigError(f"-o {dest}: exists; choose another file or pass --overwrite to replace it")
    from savedeep.model import load_model

    model = load_model(Path(model_dir))
    net = model.net
    names = model.validate_blobs(list(blobs)) if blobs else net_outputs(net)
    if net.input_name in names:
        raise ConfigError(f"--blobs: {net.input_name!r} is the net's input, which the converted model takes as its "
                          f"input; leave it out of --blobs")
    if len(net.inputs) != 1:
        raise UnsupportedLayerError(f"{model.prototxt}: the net has {len(net.inputs)} inputs "
                                    f"({', '.join(net.inputs)}); savedeep converts nets with one image input")
    check_convertible(net, "torch", model.prototxt)  # types the torch engine does not run: before building
    program = build_program(net, names, model.prototxt, onnx=to == "onnx")
    needed = {op.layer_name for op in program.ops}
    check_convertible(net, to, model.prototxt, names=needed)
    meta = metadata(model, names, fixed, to)
    exported = _export(program, net, fixed)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.stem}.{os.getpid()}.tmp{dest.suffix}")
    try:
        if to == "torch":
            import torch

            torch.export.save(exported, str(tmp), extra_files={METADATA_FILE: json.dumps(meta)})
        else:
            _write_onnx(exported, names, net.input_name, meta, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s: %s, outputs %s", dest, to, ", ".join(names))
    return dest


def net_outputs(net: "Net") -> list[str]:
    """The net's outputs as Caffe counts them: blobs that no layer reads (the input excluded)."""
    read = {b for layer in net.layers for b in layer.bottoms if b not in layer.tops}
    outs = [b for b in net.blobs if b not in read and b != net.input_name]
    return outs or [net.blobs[-1]]


def _write_onnx(exported: Any, names: Sequence[str], input_name: str, meta: dict[str, str], path: Path) -> None:
    """The ONNX file of an exported program: inputs/outputs named after the blobs, metadata attached."""
    import onnx
    import torch

    quiet = logging.getLogger("torch.onnx")  # it warns that torchvision's operators are not registered
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            onnx_program = torch.onnx.export(exported, (), dynamo=True, opset_version=ONNX_OPSET,
                                             input_names=[input_name], output_names=list(names), verbose=False,
                                             optimize=True)
    finally:
        quiet.setLevel(level)
    proto = onnx_program.model_proto
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "savedeep"
    if proto.ByteSize() >= 2**31:
        raise ModelError(f"the ONNX graph of these blobs is {proto.ByteSize() / 2**30:.1f} GiB, above protobuf's "
                         f"2 GiB limit for one file; convert with --to torch")
    onnx.checker.check_model(proto, full_check=False)
    onnx.save_model(proto, str(path))
