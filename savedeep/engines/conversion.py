"""``savedeep convert``: a Caffe model as an ONNX graph, a PyTorch module or a PyTorch program, with Caffe's
blob semantics.

All are made from the torch engine's layer modules (:mod:`savedeep.engines.torch_layers`),
which are compared with pycaffe layer by layer and on whole nets, so the converted
model computes the same arithmetic as the torch engine:

- ``--to torch -o NAME.py``: :func:`module_source`, a generated ``nn.Module`` with one submodule
  per Caffe layer (the code of :mod:`savedeep.engines.converted_ops` copied in, so it needs only torch)
  and its state dict in ``NAME.pt``: what torchvision, thingsvision, torchlens and Brain-Score
  take (hooks by layer name, ``train()``/``eval()``, torch.fx). Its weights are the engine
  modules'; its arithmetic is theirs, operation for operation, in code that imports only torch
  (tests/test_engines_convert.py compares every layer case blob by blob with the engine).
- ``--to torch -o NAME.pt2``: :func:`torch.export.export` of :class:`BlobProgram`, saved with
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
(savedeep's preprocessing, docs/explanation/preprocessing.md); the spec and the mean travel in
the file as one JSON object (:func:`metadata`: the module's ``METADATA``, the ``.pt2``'s extra
file ``savedeep.json``, ONNX ``metadata_props``), from which :func:`savedeep.transform` rebuilds it.

Size: three targets (ONNX, a torch module's generated source, torch.export) share the graph walk,
the metadata and the checks of one conversion; the second half (``--to torch -o NAME.py``) writes
the generated module's source.
"""

from __future__ import annotations

import json
import math
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from savedeep.errors import ConfigError, ModelError, UnsupportedLayerError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from savedeep.caffe.model import Model, Net

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
    return (
        "each output is the blob's final value in Caffe's forward (an in-place layer's blob holds its "
        "value after the last in-place layer, e.g. post-ReLU)"
    )


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
    from savedeep.caffe.model import spp_levels

    def onnx_ave_pool(
        x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int], ceil: bool
    ) -> torch.Tensor:
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
                [(name, src, tuple(-1 if a != b else a for a, b in zip(one[name], two[name]))) for name, src in ups]
                for ups in plan.alias_updates
            ]

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            env: dict[str, torch.Tensor] = {self.input_name: x}
            for op, bottoms, tops, updates, drops in zip(self.ops, self.bottoms, self.tops, self.updates, self.drops):
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


def build_program(net: "Net", names: Sequence[str], source: object = None, onnx: bool = False) -> "torch.nn.Module":
    """The torch module computing the requested blobs of `net` from its input blob (``onnx``: with the
    operators that torch.onnx translates exactly)."""
    return _program_class()(net, names, source, onnx).eval()


def metadata(model: "Model", names: Sequence[str], batch: int | None, to: str) -> dict[str, Any]:
    """What a user of the converted file needs, as one plain JSON object: the input, the preprocessing
    (its steps in words, savedeep's full spec and the options that rebuild it: :func:`savedeep.transform`),
    the mean, the outputs."""
    from savedeep.version import __version__
    from savedeep.data.preprocess import Preprocessor, PreprocessSpec, load_mean

    net = model.net
    shape = [int(d) for d in net.input_shape[1:]]
    spec = PreprocessSpec()
    try:
        pre = Preprocessor(spec, load_mean(model.mean_path), tuple(shape)).describe()
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
        "savedeep_version": __version__,
        "format": to,
        "input": {
            "name": net.input_name,
            "shape": ["N" if batch is None else batch, *shape],
            "dtype": "float32",
            "layout": "NCHW",
            "channel_order": {3: "BGR", 1: "luminance"}.get(shape[0]),
        },
        "outputs": list(names),
        "blob_semantics": _blob_semantics_note(),
        "preprocessing": ({"steps": steps, "spec": pre, "options": spec.to_dict()} if pre else None),
        "mean_bgr": pre["mean"].get("values_bgr") if pre else None,
        "source": {
            "net": net.name,
            "prototxt": model.prototxt.name,
            "weights": model.weights.name,
            "mean": model.mean_path.name,
        },
    }


def onnx_properties(meta: dict[str, Any]) -> dict[str, str]:
    """ONNX ``metadata_props`` hold strings only: the whole object under ``savedeep.json``, and its parts
    under the keys that earlier files had (``savedeep.input``, ``savedeep.mean_bgr``, ...)."""
    return {
        "savedeep.json": json.dumps(meta),
        "savedeep.version": meta["savedeep_version"],
        "savedeep.input": json.dumps(meta["input"]),
        "savedeep.outputs": json.dumps(meta["outputs"]),
        "savedeep.blob_semantics": meta["blob_semantics"],
        "savedeep.preprocessing": json.dumps(meta["preprocessing"]),
        "savedeep.mean_bgr": json.dumps(meta["mean_bgr"]),
        "savedeep.source": json.dumps(meta["source"]),
        "savedeep.format": meta["format"],
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
    tied = ModelError(
        f"{net.prototxt}: the net's layers depend on the batch size (a parameter or a shape spans "
        f"the batch axis), so it cannot take any batch size; convert with --batch {declared} "
        f"(a fixed size)"
    )
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


def convert(
    model_dir: str | Path,
    to: str,
    dest: str | Path,
    blobs: Sequence[str] | None = None,
    batch: int | str | None = "dynamic",
    overwrite: bool = False,
) -> Path:
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
        raise ConfigError(
            f"-o {dest}: is a directory; give a file name, e.g. -o model.{'onnx' if to == 'onnx' else 'pt2'}"
        )
    if to == "torch" and dest.suffix not in (".py", ".pt2"):
        raise ConfigError(
            f"-o {dest}: --to torch writes a module (-o {dest.with_suffix('.py').name}: its code, "
            f"and its weights in {dest.with_suffix('.pt').name}) or a torch.export program "
            f"(-o {dest.with_suffix('.pt2').name}); name the file .py or .pt2"
        )
    module = to == "torch" and dest.suffix == ".py"
    if module and not dest.stem.isidentifier():
        raise ConfigError(
            f"-o {dest}: the module's name {dest.stem!r} is not a Python identifier, so `import "
            f"{dest.stem}` would fail; use letters, digits and _ (e.g. -o caffenet.py)"
        )
    for path in [dest, dest.with_suffix(".pt")] if module else [dest]:
        if path.exists() and not overwrite:
            raise ConfigError(f"-o {dest}: {path} exists; choose another file or pass --overwrite to replace it")
    from savedeep.caffe.model import load_model

    model = load_model(Path(model_dir))
    net = model.net
    names = model.validate_blobs(list(blobs)) if blobs else net_outputs(net)
    if net.input_name in names:
        raise ConfigError(
            f"--blobs: {net.input_name!r} is the net's input, which the converted model takes as its "
            f"input; leave it out of --blobs"
        )
    if len(net.inputs) != 1:
        raise UnsupportedLayerError(
            f"{model.prototxt}: the net has {len(net.inputs)} inputs "
            f"({', '.join(net.inputs)}); savedeep converts nets with one image input"
        )
    check_convertible(net, "torch", model.prototxt)  # types the torch engine does not run: before building
    program = build_program(net, names, model.prototxt, onnx=to == "onnx")
    needed = {op.layer_name for op in program.ops}
    check_convertible(net, to, model.prototxt, names=needed)
    meta = metadata(model, names, fixed, to)
    if module:
        meta["format"] = "torch-module"
        meta["input"]["shape"][0] = "N"  # a module takes any batch size
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_module(model, names, dest, meta)
        log.info("wrote %s and %s: outputs %s", dest, dest.with_suffix(".pt"), ", ".join(names))
        return dest
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


def _write_onnx(exported: Any, names: Sequence[str], input_name: str, meta: dict[str, Any], path: Path) -> None:
    """The ONNX file of an exported program: inputs/outputs named after the blobs, metadata attached."""
    import onnx
    import torch

    quiet = logging.getLogger("torch.onnx")  # it warns that torchvision's operators are not registered
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            onnx_program = torch.onnx.export(
                exported,
                (),
                dynamo=True,
                opset_version=ONNX_OPSET,
                input_names=[input_name],
                output_names=list(names),
                verbose=False,
                optimize=True,
            )
    finally:
        quiet.setLevel(level)
    proto = onnx_program.model_proto
    del proto.metadata_props[:]
    for k, v in onnx_properties(meta).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "savedeep"
    if proto.ByteSize() >= 2**31:
        raise ModelError(
            f"the ONNX graph of these blobs is {proto.ByteSize() / 2**30:.1f} GiB, above protobuf's "
            f"2 GiB limit for one file; convert with --to torch"
        )
    onnx.checker.check_model(proto, full_check=False)
    onnx.save_model(proto, str(path))


# --- --to torch -o NAME.py: a self-contained nn.Module with one named submodule per Caffe layer ---------------

# Layer types whose output is a new tensor that nothing else holds, and whose backward does not need that
# output: an in-place ReLU right after one may overwrite it (torchvision's ReLU(inplace=True) after a conv).
_FRESH_TYPES = frozenset(
    {"Convolution", "Deconvolution", "InnerProduct", "Pooling", "LRN", "BatchNorm", "Scale", "Bias"}
)


def module_name(name: str, taken: set[str]) -> str:
    """The attribute name of a Caffe layer's module: characters outside ``[A-Za-z0-9_]`` become ``_``
    (``inception_3a/1x1`` -> ``inception_3a_1x1``), a name not starting with a letter or ``_`` gets an
    ``x`` in front (``1x1`` -> ``x1x1``), a Python keyword or a name the module class already uses gets
    a ``_`` after it, and a name already taken gets ``_2``, ``_3``, ... in net order."""
    import keyword
    import re

    base = re.sub(r"[^A-Za-z0-9_]", "_", name) or "x"
    if not (base[0].isalpha() or base[0] == "_"):
        base = "x" + base
    if keyword.iskeyword(base) or base in _RESERVED or base in _module_attributes():
        base += "_"
    out, k = base, 2
    while out in taken:
        out, k = f"{base}_{k}", k + 1
    taken.add(out)
    return out


# attributes of the generated classes that a layer's module must not replace (nn.Module's: _module_attributes)
_RESERVED = frozenset({"config", "after", "follow", "compute", "caffe_type", "load", "input_name", "outputs"})


def _module_attributes() -> frozenset[str]:
    """The names nn.Module defines (``training``, ``forward``, ``half``, ...): add_module refuses them."""
    global _NN_ATTRIBUTES
    if _NN_ATTRIBUTES is None:
        from torch import nn

        _NN_ATTRIBUTES = frozenset(dir(nn.Module())) | frozenset(dir(nn.Module))
    return _NN_ATTRIBUTES


_NN_ATTRIBUTES: frozenset[str] | None = None


def _layer_spec(op: Any, layer: Any) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(class name in savedeep/engines/converted_ops.py, parameters, buffers, config) of one engine layer module.

    Parameters and buffers are the engine's tensors (the weights as the engine reshaped them), by the
    engine's names; the config holds the plain values the layer's arithmetic needs."""
    from savedeep.engines import torch_layers as tl

    t = layer.type
    params: dict[str, Any] = {}
    buffers: dict[str, Any] = {}
    config: dict[str, Any] = {}
    if isinstance(op, tl.Convolution):  # and Deconvolution
        params = {"weight": op.weight, "bias": op.bias}
        config = {"stride": op.stride, "pad": op.pad, "dilation": op.dilation, "group": op.group}
    elif isinstance(op, tl.InnerProduct):
        params = {"weight": op.weight, "bias": op.bias}
        config = {"axis": op.axis}
    elif isinstance(op, tl.Pooling):
        config = {
            "method": op.method,
            "kernel": op.kernel,
            "stride": op.stride,
            "pad": op.pad,
            "ceil": op.ceil,
            "global_pooling": op.global_pooling,
        }
    elif isinstance(op, tl.LRN):
        config = {
            "size": op.size,
            "alpha": op.alpha,
            "beta": op.beta,
            "k": op.k,
            "across": op.region == "ACROSS_CHANNELS",
        }
    elif isinstance(op, tl.PReLU):
        params = {"slope": op.slope}
    elif isinstance(op, tl.BatchNorm):
        buffers = {"mean": op.mean if op.use_global else None, "var": op.var if op.use_global else None}
        config = {"eps": op.eps}
    elif isinstance(op, (tl.Scale, tl.Bias)):
        if isinstance(op, tl.Scale):
            params = {"factor": op.factor, "bias": op.bias}
        else:
            params = {"bias": op.bias}
        config = {"axis": op.axis, "num_axes": op.num_axes, "two_bottoms": op.two_bottoms}
    elif isinstance(op, tl.Softmax):
        config = {"axis": op.axis}
    elif isinstance(op, tl.Concat):
        config = {"axis": op.axis}
    elif isinstance(op, tl.Slice):
        config = {"axis": op.axis, "points": op.points, "ntops": op.ntops}
    elif isinstance(op, tl.Eltwise):
        config = {"operation": op.op, "coeff": op.coeff}
    elif isinstance(op, tl.Flatten):
        config = {"start": op.start, "end": op.end}
    elif isinstance(op, tl.Reshape):
        config = {"dims": op.dims, "axis": op.axis, "num_axes": op.num_axes}
    elif isinstance(op, tl.Crop):
        config = {"axis": op.axis, "offsets": op.offsets}
    elif isinstance(op, tl.ArgMax):
        config = {"top_k": op.top_k, "out_max_val": op.out_max_val, "axis": op.axis}
    elif isinstance(op, tl.SPP):
        config = {"method": op.method, "pyramid_height": op.height}
    elif isinstance(op, tl.MVN):
        config = {"normalize_variance": op.normalize_variance, "across_channels": op.across, "eps": op.eps}
    elif isinstance(op, tl.Reduction):
        config = {"operation": op.op, "axis": op.axis, "coeff": op.coeff}
    elif isinstance(op, tl.Tile):
        config = {"axis": op.axis, "tiles": op.tiles}
    elif isinstance(op, tl.Embed):
        params = {"weight": op.weight, "bias": op.bias}
    elif isinstance(op, tl.Im2col):
        config = {"kernel": op.kernel, "stride": op.stride, "pad": op.pad, "dilation": op.dilation}
    elif t == "Threshold":
        config = {"threshold": float(layer.param.threshold_param.threshold)}
    elif t == "Clip":
        config = {"min": float(layer.param.clip_param.min), "max": float(layer.param.clip_param.max)}
    elif t == "Swish":
        config = {"beta": float(layer.param.swish_param.beta)}
    elif t == "Split":
        config = {"ntops": len(layer.tops)}
    elif t == "Dropout":
        ratio = layer.param.dropout_param.dropout_ratio
        config = {"ratio": float(ratio)}
    elif t == "ReLU":
        config = {"negative_slope": float(layer.param.relu_param.negative_slope)}
    elif t == "ELU":
        config = {"alpha": float(layer.param.elu_param.alpha)}
    elif t == "Power":
        p = layer.param.power_param
        config = {"power": float(p.power), "scale": float(p.scale), "shift": float(p.shift)}
    elif t == "Exp":
        p = layer.param.exp_param
        base, scale, shift = float(p.base), float(p.scale), float(p.shift)
        log_base = 1.0 if base == -1 else math.log(base)
        config = {
            "inner": log_base * scale,
            "outer": 1.0 if shift == 0 else (math.exp(shift) if base == -1 else base**shift),
        }
    elif t == "Log":
        p = layer.param.log_param
        base = float(p.base)
        config = {
            "scale": float(p.scale),
            "shift": float(p.shift),
            "base_scale": 1.0 if base == -1 else 1.0 / math.log(base),
        }
    elif t not in ("Sigmoid", "TanH", "AbsVal", "BNLL", "Silence"):  # pragma: no cover - BUILDERS and this agree
        raise UnsupportedLayerError(
            f"layer {layer.name!r} has type {t!r}, which savedeep convert cannot write as a module yet"
        )
    name = "Deconvolution" if isinstance(op, tl.Deconvolution) else t
    return name, params, buffers, config


def _literal(value: Any) -> str:
    """A Python literal for a config value (tuples stay tuples, floats keep every bit)."""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"float({str(value)!r})"
    if isinstance(value, (list, tuple)):
        items = ", ".join(_literal(v) for v in value)
        return (
            f"({items},)"
            if isinstance(value, tuple) and len(value) == 1
            else (f"({items})" if isinstance(value, tuple) else f"[{items}]")
        )
    if isinstance(value, (bool, int, str)) or value is None:
        return repr(value)
    if hasattr(value, "item"):  # a numpy scalar
        return _literal(value.item())
    raise TypeError(f"no literal for {value!r}")  # pragma: no cover


def module_source(
    net: "Net", names: Sequence[str], meta: dict[str, Any], source: object = None
) -> tuple[str, dict[str, "torch.Tensor"]]:
    """The Python source of the converted module and its state dict.

    One module per Caffe layer the requested blobs need, named by :func:`module_name`. A layer that
    works in place on the single top of the layer before it in the chain (ReLU, Dropout, BatchNorm,
    Scale in place on a convolution's top) becomes a child of that layer's module, so the module's
    output, and what a forward hook on it sees, is the blob's final value as pycaffe's ``net.blobs``
    holds it. That move keeps the results: a blob that a layer changes in place has no other reader
    of its earlier value (TorchNet refuses such nets, as Caffe does). Where Caffe aliases the blob (a
    Split/Flatten/Reshape view of the same memory), the in-place layer stays on its own and the forward
    copies its value onto the aliases, as the engine does.
    """
    from savedeep.engines.torch_engine import TorchNet

    full = TorchNet(net, source)
    plan = full.plan(list(names))
    layers = {layer.name: layer for layer in net.layers}
    one, two = net.blob_shapes(1), net.blob_shapes(2)
    taken: set[str] = set()
    var_taken: set[str] = set()
    variables: dict[str, str] = {}

    def var(blob: str) -> str:
        if blob not in variables:
            variables[blob] = "b_" + module_name(blob, var_taken)
        return variables[blob]

    # Which steps merge into an earlier step's module: single-bottom in-place layers on the single top of
    # the step that wrote the version they read, with no alias to update.
    step_of_version: dict[int, int] = {}  # engine step index -> position in plan.steps
    owner: dict[int, int] = {}  # position -> position of the module it is a child of
    for k, i in enumerate(plan.steps):
        step_of_version[i] = k
        s = full._steps[i]
        if (
            len(s.bottoms) == 1
            and s.tops == s.bottoms
            and len(s.writes) == 1
            and s.writes[0][1] is None
            and s.reads[0][1] >= 0
            and s.reads[0][1] in step_of_version
        ):
            prev = step_of_version[s.reads[0][1]]
            root = owner.get(prev, prev)
            root_step = full._steps[plan.steps[root]]
            if len(root_step.tops) == 1 and not plan.alias_updates[prev]:
                owner[k] = root
    state: dict[str, Any] = {}
    init: list[str] = []
    body: list[str] = []
    attr: dict[int, str] = {}
    fresh: dict[int, bool] = {}  # root position -> may the next in-place ReLU overwrite the tensor
    writer: dict[str, list[Any]] = {}  # blob -> [module path, index of the output or None]
    for k, i in enumerate(plan.steps):
        s = full._steps[i]
        layer = layers[s.op.layer_name]
        cls, params, buffers, config = _layer_spec(s.op, layer)
        if k in owner:
            root = owner[k]
            if cls == "ReLU":
                config["inplace"] = fresh[root]
                fresh[root] = False
            elif cls != "Dropout":
                fresh[root] = cls in _FRESH_TYPES
        else:
            fresh[k] = cls in _FRESH_TYPES or (cls in ("Eltwise", "Concat") and len(s.bottoms) > 1)
        name = module_name(layer.name, taken)
        path = name if k not in owner else f"{attr[owner[k]]}.{name}"
        attr[k] = path
        for index, top in enumerate(s.tops):  # the module whose output is this blob's value (so far)
            writer[top] = [attr[owner.get(k, k)], None if len(s.tops) == 1 else index]
        for alias_name, _src in plan.alias_updates[k]:
            writer.pop(alias_name, None)  # its final value is written by the forward itself
        for group in (params, buffers):
            for pname, tensor in group.items():
                if tensor is not None:
                    state[f"{path}.{pname}"] = tensor.detach().clone().contiguous()

        def shapes(g: dict[str, Any]) -> str:
            return (
                "{"
                + ", ".join(f"{n!r}: {_literal(tuple(v.shape)) if v is not None else 'None'}" for n, v in g.items())
                + "}"
            )

        args = []
        if params:
            args.append(f"params={shapes(params)}")
        if buffers:
            args.append(f"buffers={shapes(buffers)}")
        args += [f"{key}={_literal(v)}" for key, v in config.items()]
        ctor = f"{cls}({', '.join(args)})"
        comment = f"  # Caffe layer {layer.name!r} ({layer.type})" + (
            f", in place on {s.tops[0]!r}" if k in owner else ""
        )
        if k in owner:
            init.append(f"        self.{attr[owner[k]]}.follow({name!r}, {ctor}){comment}")
            continue
        init.append(f"        self.{name} = {ctor}{comment}")
        call = f"self.{name}({', '.join(var(b) for b in s.bottoms)})"
        if not s.tops:
            body.append(f"        {call}")
        elif len(s.tops) == 1:
            body.append(f"        {var(s.tops[0])} = {call}")
        else:
            body.append(f"        {', '.join(var(t) for t in s.tops)} = {call}")
        followers = [j for j in range(k + 1, len(plan.steps)) if owner.get(j) == k]
        for j in [k] + followers:
            for alias_name, src in plan.alias_updates[j]:
                shape = tuple(-1 if a != b else a for a, b in zip(one[alias_name], two[alias_name]))
                body.append(f"        {var(alias_name)} = alias({var(src)}, {_literal(shape)})")
            dropped = [n for n in plan.drop_after[j] if n in variables]
            if dropped:
                body.append(f"        del {', '.join(var(n) for n in dropped)}")
    # the class: the net's name (CaffeNet, ResNet_50_1by2_nsfw), unless the file already defines that name
    cls_name = module_name(net.name or "Net", set())
    cls_name = cls_name[0].upper() + cls_name[1:]
    if cls_name in _GENERATED_NAMES:
        cls_name += "Net"
    inp = var(net.input_name)
    outputs = var(names[0]) if len(names) == 1 else "{" + ", ".join(f"{n!r}: {var(n)}" for n in names) + "}"
    layout = (
        [f"        {inp} = {inp}.contiguous(memory_format=torch.channels_last)  # oneDNN's fast layout"]
        if len(net.input_shape) == 4
        else []
    )
    # blob -> [the module whose output is the blob's final value, index in its outputs or null]
    meta = {**meta, "modules": {b: writer[b] for b in net.blobs if b in writer}}
    ops_source = Path(__file__).with_name("converted_ops.py").read_text()
    ops_source = ops_source.split('"""', 2)[2].lstrip("\n")  # without its module docstring
    meta_json = json.dumps(meta, indent=1, sort_keys=False)
    if "'''" in meta_json:  # pragma: no cover - json.dumps escapes no quotes this way, but a layer name could
        meta_json = meta_json.replace("'''", "\\u0027\\u0027\\u0027")
    text = f'''"""{net.name}: a Caffe net converted by savedeep {meta["savedeep_version"]}: a plain torch.nn.Module.

Needs only PyTorch. ``load()`` builds it and reads the weights from the file beside this one
(same name, ``.pt``); ``METADATA`` says what it takes and how the input is preprocessed.

Each Caffe layer is a submodule named after it (characters outside [A-Za-z0-9_] as ``_``); a layer working
in place on the top of the layer before it (ReLU, Dropout, BatchNorm, Scale) is a child of that layer's
module, so a layer's module returns its blob as pycaffe's ``net.blobs`` holds it (e.g. post-ReLU).
The input is the preprocessed blob {net.input_name!r}: float32 (N, {", ".join(str(d) for d in net.input_shape[1:])}), {meta["input"]["channel_order"]}, mean subtracted.
"""

import json
import math
import os

{ops_source}

METADATA = json.loads(r\'\'\'{meta_json}\'\'\')


class {cls_name}(nn.Module):
    """The Caffe net {net.name!r}: forward(input) -> {"the blob " + repr(names[0]) if len(names) == 1 else "{blob: tensor} of " + ", ".join(names)}."""

    input_name = {net.input_name!r}
    outputs = {list(names)!r}

    def __init__(self) -> None:
        super().__init__()
{chr(10).join(init)}

    def forward(self, {inp}):
{chr(10).join(layout + body)}
        return {outputs}


def load(weights=None, map_location="cpu"):
    """The module with its weights (default: the .pt file beside this one), in eval mode."""
    if weights is None:
        weights = os.path.splitext(os.path.abspath(__file__))[0] + ".pt"
    return load_state({cls_name}(), weights, map_location).eval()
'''
    return text, state


# names a generated file defines besides the net's class (converted_ops.py's and the module's own)
_GENERATED_NAMES = frozenset(
    {
        "CaffeLayer",
        "Convolution",
        "Deconvolution",
        "InnerProduct",
        "Pooling",
        "LRN",
        "ReLU",
        "PReLU",
        "ELU",
        "Sigmoid",
        "TanH",
        "AbsVal",
        "Power",
        "Exp",
        "Log",
        "BNLL",
        "Dropout",
        "Split",
        "Silence",
        "Softmax",
        "Concat",
        "Slice",
        "Eltwise",
        "BatchNorm",
        "Scale",
        "Bias",
        "Flatten",
        "Reshape",
        "Crop",
        "ArgMax",
        "Threshold",
        "Clip",
        "Swish",
        "SPP",
        "MVN",
        "Reduction",
        "Tile",
        "Embed",
        "Im2col",
        "METADATA",
        "Tensor",
        "List",
        "Optional",
        "Sequence",
        "Tuple",
    }
)


def write_module(model: "Model", names: Sequence[str], dest: Path, meta: dict[str, Any]) -> None:
    """Write ``dest`` (NAME.py, the module's code) and NAME.pt (its state dict), each under a hidden name
    renamed into place when complete."""
    import torch

    text, state = module_source(model.net, names, meta, model.prototxt)
    weights = dest.with_suffix(".pt")
    tmp_py = dest.with_name(f".{dest.stem}.{os.getpid()}.tmp.py")
    tmp_pt = dest.with_name(f".{dest.stem}.{os.getpid()}.tmp.pt")
    try:
        compile(text, str(dest), "exec")  # a syntax error here is savedeep's bug: never write such a file
        torch.save(state, str(tmp_pt))
        tmp_py.write_text(text)
        os.replace(tmp_pt, weights)
        os.replace(tmp_py, dest)
    finally:
        tmp_py.unlink(missing_ok=True)
        tmp_pt.unlink(missing_ok=True)
