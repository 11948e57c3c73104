"""Caffe networks read without pycaffe: layers, blob shapes, in-place layers and trained weights.

``load_net`` parses a prototxt (current ``layer {}`` or old V1 ``layers {}``
format, any way of declaring inputs), keeps the layers of the TEST phase,
infers the shape of every blob with Caffe's arithmetic, and, given a
.caffemodel, attaches each layer's weights after checking their count and
shapes. ``load_model`` does the same for a savedeep model directory
(deploy.prototxt, weights.caffemodel, mean.npy).

Blob semantics follow Caffe: an in-place layer (top == bottom) rewrites its
bottom blob, so ``Net.blobs`` lists each name once, in the order it first
appears; the ``*_split_*`` blobs Caffe inserts for blobs read by several
layers are never listed (a Split layer written in the prototxt is).
"""

from __future__ import annotations

import difflib
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from savedeep.caffe.schema import LAYER_PARAMS, V1_LAYER_TYPES, Message
from savedeep.caffe.caffemodel import blob_array, blob_shape, read_caffemodel
from savedeep.errors import ModelError, UnsupportedLayerError
from savedeep.caffe.prototxt import parse_prototxt

log = logging.getLogger(__name__)

PROTOTXT_NAME = "deploy.prototxt"
WEIGHTS_NAME = "weights.caffemodel"
MEAN_NAME = "mean.npy"
MODEL_DIR_CONTENTS = (f"a model directory must contain {PROTOTXT_NAME} (the network), "
                      f"{WEIGHTS_NAME} (trained weights) and {MEAN_NAME} (the mean, (3,) or (3,H,W); (1,) or (1,H,W) for a 1-channel input)")

# Layers that only feed data during training; a deploy net declares an Input instead.
DATA_LAYER_TYPES = frozenset({"Data", "ImageData", "HDF5Data", "WindowData", "DummyData", "AnnotatedData",
                              "VideoData"})
# Layers that need labels and produce no activations worth saving: dropped from a TEST net.
_DROPPED_TYPES = frozenset({"Accuracy", "Silence"})

_RECURRENT = ("a recurrent layer: its blobs are (time, stream, ...) and it needs a sequence-continuation "
              "input, while savedeep feeds one image per row")
# Layer types of standard Caffe (BVLC master's layer catalogue) that can run at deploy time but that
# savedeep refuses, with the reason: each breaks "one row per image, blobs computed from that image".
# Data layers, losses and Accuracy are handled apart (DATA_LAYER_TYPES, _DROPPED_TYPES). The README's
# "Layer types" section lists these with the same reasons.
REFUSED_TYPES: dict[str, str] = {
    "LSTM": _RECURRENT,
    "RNN": _RECURRENT,
    "LSTMUnit": _RECURRENT,
    "BatchReindex": "it picks and reorders the images of a batch by a second input, so a row would not hold "
                    "its own image's activations",
    "Filter": "it drops images from the batch according to a second input, so rows would not match images",
    "Parameter": "its top is a learned blob without an image axis, not an activation of an image",
    "Python": "it runs code from the model's own Python module, which savedeep neither imports nor models",
    "HDF5Output": "it writes its bottoms to an HDF5 file as a side effect; savedeep saves blobs itself",
    "DummyData": "it fills its tops with constants or random numbers instead of images; declare an Input layer",
}

Shape = tuple[int, ...]


@dataclass
class Layer:
    """One layer of the TEST net: name, V2 type, bottoms, tops, its LayerParameter and its weights."""

    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    param: Message
    blobs: list[np.ndarray] = field(default_factory=list)

    @property
    def inplace(self) -> bool:
        """Whether the layer writes (one of) its bottoms in place."""
        return any(t in self.bottoms for t in self.tops)


class Net:
    """A Caffe network definition, filtered to the TEST phase, with inferred blob shapes."""

    def __init__(self, name: str, layers: list[Layer], prototxt: Path, weights: Path | None = None) -> None:
        self.name = name
        self.layers = layers
        self.prototxt = prototxt
        self.weights = weights
        self.inputs: dict[str, Shape] = {}
        for layer in layers:
            if layer.type == "Input":
                for top, shape in zip(layer.tops, _input_shapes(layer, prototxt)):
                    self.inputs[top] = shape
        if not self.inputs:
            raise ModelError(f"{prototxt}: the net declares no input; add an Input layer "
                             "(layer { name: \"data\" type: \"Input\" top: \"data\" "
                             "input_param { shape { dim: 1 dim: 3 dim: 227 dim: 227 } } })")
        self.input_name: str = next(iter(self.inputs))
        self.input_shape: Shape = self.inputs[self.input_name]
        self._shape_cache: dict[int, tuple[dict[str, Shape], dict[str, list[Shape]]]] = {}
        self._infer(self.input_shape[0] if self.input_shape else 1)  # validates the whole net once

    # -- public API ------------------------------------------------------
    @property
    def blobs(self) -> list[str]:
        """User-visible blobs in net order (pycaffe's net.blobs without the auto-inserted *_split_* blobs)."""
        return list(self.blob_shapes(self.declared_batch()))

    @property
    def inplace_layers(self) -> list[str]:
        """Names of the layers that overwrite their bottom blob."""
        return [layer.name for layer in self.layers if layer.inplace]

    def blob_shapes(self, batch: int = 1) -> dict[str, Shape]:
        """Every blob's shape in net order with ``batch`` as the first dimension of each input."""
        return dict(self._infer(batch)[0])

    def param_shapes(self, batch: int = 1) -> dict[str, list[Shape]]:
        """For each layer with weights, the shapes of its blobs as Caffe creates them."""
        return {k: list(v) for k, v in self._infer(batch)[1].items() if v}

    def layer(self, name: str) -> Layer:
        """The layer called ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def producers(self) -> dict[str, list[str]]:
        """For each blob, the layers that write it in net order (the first creates it, the rest are in place)."""
        out: dict[str, list[str]] = {}
        for layer in self.layers:
            for top in layer.tops:
                out.setdefault(top, []).append(layer.name)
        return out

    def __repr__(self) -> str:
        return f"Net({self.name!r}, {len(self.layers)} layers, input {self.input_name} {self.input_shape})"

    # -- shape inference -------------------------------------------------
    def declared_batch(self) -> int:
        """The batch size the prototxt declares (1 if it declares none)."""
        return self.input_shape[0] if self.input_shape else 1

    def _infer(self, batch: int) -> tuple[dict[str, Shape], dict[str, list[Shape]]]:
        cached = self._shape_cache.get(batch)
        if cached is not None:
            return cached
        shapes: dict[str, Shape] = {}
        params: dict[str, list[Shape]] = {}
        readers: dict[str, int] = {}  # layers that read each blob since it was last written
        for layer in self.layers:
            missing = [b for b in layer.bottoms if b not in shapes]
            if missing:
                raise ModelError(f"{self.prototxt}: layer {layer.name!r} ({layer.type}) reads blob(s) {missing} "
                                 "that no earlier layer produces; fix its bottom names or the layer order")
            for i, top in enumerate(layer.tops):
                if i < len(layer.bottoms) and layer.bottoms[i] == top and readers.get(top, 0):
                    # Caffe inserts a Split for the earlier readers and then fails with
                    # "Top blob produced by multiple sources": reject it the same way
                    raise ModelError(f"{self.prototxt}: in-place layer {layer.name!r} ({layer.type}) rewrites "
                                     f"blob {top!r} after other layers already read it, which Caffe rejects; "
                                     "give it a new top name or move it before those readers")
            for bottom in layer.bottoms:
                readers[bottom] = readers.get(bottom, 0) + 1
            bottoms = [shapes[b] for b in layer.bottoms]
            try:
                if layer.type == "Input":
                    tops = [(batch,) + s[1:] if s else s for s in _input_shapes(layer, self.prototxt)]
                    blob_params: list[Shape] = []
                else:
                    tops, blob_params = SHAPE_RULES[layer.type](layer, bottoms)
            except _ShapeError as exc:
                raise ModelError(f"{self.prototxt}: layer {layer.name!r} ({layer.type}) with input shape(s) "
                                 f"{', '.join(map(str, bottoms))}: {exc}; fix the layer's parameters") from None
            if len(tops) != len(layer.tops):
                raise ModelError(f"{self.prototxt}: layer {layer.name!r} ({layer.type}) declares "
                                 f"{len(layer.tops)} top(s) but produces {len(tops)}; fix its top list")
            for name, shape in zip(layer.tops, tops):
                if name in shapes and name not in layer.bottoms:
                    raise ModelError(f"{self.prototxt}: blob {name!r} is produced again by layer {layer.name!r} "
                                     "without being its bottom (Caffe forbids two sources); rename the top")
                if name in shapes and shapes[name] != shape:
                    raise ModelError(f"{self.prototxt}: in-place layer {layer.name!r} changes the shape of "
                                     f"{name!r} from {shapes[name]} to {shape}; give it a new top name")
                shapes[name] = tuple(int(d) for d in shape)
                readers[name] = 0
                if any(d <= 0 for d in shapes[name]):
                    raise ModelError(f"{self.prototxt}: layer {layer.name!r} ({layer.type}) gives blob {name!r} "
                                     f"the empty shape {shapes[name]} (input too small for its kernel?); "
                                     "fix the input size or the layer's parameters")
            params[layer.name] = [tuple(int(d) for d in s) for s in blob_params]
        result = (shapes, params)
        self._shape_cache[batch] = result
        return result


@dataclass
class Model:
    """A savedeep model directory: the net, its weights and its mean file."""

    directory: Path
    prototxt: Path
    weights: Path
    mean_path: Path
    net: Net

    def validate_blobs(self, names: Sequence[str]) -> list[str]:
        """The requested blob names, deduplicated in order; unknown names raise ModelError listing valid ones."""
        if isinstance(names, str):
            names = [names]
        seen: set[str] = set()
        for name in names:
            if name in seen:
                log.warning("blob %r is requested more than once; it is saved once", name)
            seen.add(name)
        return check_blob_names(names, self.net.blobs, f"{self.prototxt}: ", f" of {self.net.name!r}")


def check_blob_names(names: Sequence[str], valid: Sequence[str], where: str = "", of: str = "") -> list[str]:
    """The names in order without duplicates; a ModelError for unknown ones, with a "did you mean" and
    the valid names (the one check of blob names, for the preflight and for both engines)."""
    out = list(dict.fromkeys(names))
    valid_set = set(valid)
    unknown = [n for n in out if n not in valid_set]
    if unknown:
        hints = []
        for n in unknown:
            close = difflib.get_close_matches(n, valid, n=3)
            hints.append(f"{n!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
        raise ModelError(f"{where}unknown blob(s) {', '.join(hints)}; valid blobs{of} are: {', '.join(valid)}")
    return out


# -- loading ------------------------------------------------------------------

def load_net(prototxt: Path, weights: Path | None = None) -> Net:
    """Read a prototxt (and optionally a .caffemodel) into a TEST-phase Net with shapes and weights."""
    prototxt = Path(prototxt)
    net_param = parse_prototxt(prototxt)
    layer_params = _layer_params(net_param, prototxt)
    layers = _build_layers(layer_params, prototxt)
    net = Net(net_param.name, layers, prototxt)
    if weights is not None:
        attach_weights(net, Path(weights))
    return net


# The loggers that report what reading a model's files finds (dropped layers, skipped fields).
_READER_LOGGERS = ("savedeep.caffe.model", "savedeep.caffe.prototxt", "savedeep.caffe.caffemodel")


@contextmanager
def _reports_held_back() -> Iterator[None]:
    """Hold back the warnings and notes of reading the model files while the block runs."""
    loggers = [logging.getLogger(name) for name in _READER_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def load_model(directory: Path, weights: bool = True, reread: bool = False) -> Model:
    """Load a savedeep model directory (deploy.prototxt, weights.caffemodel, mean.npy) into a Model.

    ``reread``: the files were read and reported on already in this run (a worker reading what the
    parent's preflight checked): their warnings are not logged again, so that each is printed once
    per run and not once more per worker process. Errors still raise.
    """
    if reread:
        with _reports_held_back():
            return load_model(directory, weights)
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"{directory}: model directory not found (or not a directory); {MODEL_DIR_CONTENTS}")
    prototxt = directory / PROTOTXT_NAME
    weights_path = directory / WEIGHTS_NAME
    mean_path = directory / MEAN_NAME
    required = [prototxt, mean_path] + ([weights_path] if weights else [])
    missing = [p for p in required if not p.is_file()]
    if missing:
        raise ModelError(f"{', '.join(map(str, missing))}: missing from the model directory; {MODEL_DIR_CONTENTS}")
    net = load_net(prototxt, weights_path if weights else None)
    return Model(directory=directory, prototxt=prototxt, weights=weights_path, mean_path=mean_path, net=net)


def _layer_params(net_param: Message, source: Path) -> list[Message]:
    """The net's LayerParameters after Caffe's upgrades (V1 layers, input fields), TEST phase only."""
    if net_param.has("layers") and net_param.has("layer"):
        raise ModelError(f"{source}: mixes the V1 'layers' and the current 'layer' format; "
                         "use one (upgrade with Caffe's upgrade_net_proto_text)")
    params = [upgrade_v1_layer(v1) for v1 in net_param.layers] if net_param.has("layers") else list(net_param.layer)
    input_layer = _input_fields_to_layer(net_param, source)
    if input_layer is not None:
        params.insert(0, input_layer)
    state = net_param.state if net_param.has("state") else Message("NetState", phase="TEST")
    if state.phase != "TEST":
        log.info("%s: net state phase %s ignored; savedeep always builds the TEST net", source, state.phase)
        state = Message("NetState", phase="TEST", level=state.level, stage=list(state.stage))
    return [p for p in params if layer_included(p, state)]


def upgrade_v1_layer(v1: Message) -> Message:
    """Turn a V1 ``layers {}`` entry into a LayerParameter the way Caffe's UpgradeV1LayerParameter does."""
    lp = Message("LayerParameter")
    for name in ("bottom", "top", "include", "exclude", "loss_weight"):
        if v1.has(name):
            setattr(lp, name, list(getattr(v1, name)))
    if v1.has("name"):
        lp.name = v1.name
    if v1.has("type"):
        v1_type = v1.type
        lp.type = V1_LAYER_TYPES.get(v1_type, str(v1_type)) if isinstance(v1_type, str) else f"V1_TYPE_{v1_type}"
    if v1.has("blobs"):
        lp.blobs = list(v1.blobs)
    # per-blob settings move into ParamSpec entries, one per blob index
    counts = max(len(v1.param), len(v1.blob_share_mode), len(v1.blobs_lr), len(v1.weight_decay))
    for i in range(counts):
        spec = lp.add("param")
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            mode = v1.blob_share_mode[i]
            spec.share_mode = mode if isinstance(mode, str) else ("STRICT", "PERMISSIVE")[mode]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    for _num, v1_num, name, _msg in LAYER_PARAMS:
        if v1_num is not None and v1.has(name):
            setattr(lp, name, getattr(v1, name).copy())
    return lp


def _input_fields_to_layer(net_param: Message, source: Path) -> Message | None:
    """Caffe's UpgradeNetInput: `input:` with `input_dim:` x4 or `input_shape {}` becomes an Input layer."""
    if not net_param.has("input"):
        if net_param.has("input_dim") or net_param.has("input_shape"):
            raise ModelError(f"{source}: input_dim/input_shape given without `input: \"name\"`; add the input name")
        return None
    names = list(net_param.input)
    layer = Message("LayerParameter", name="input", type="Input", top=names)
    input_param = layer.mutable("input_param")
    if net_param.has("input_shape"):
        if len(net_param.input_shape) != len(names):
            raise ModelError(f"{source}: {len(names)} input(s) but {len(net_param.input_shape)} input_shape "
                             "entries; give one input_shape { dim: ... } per input")
        input_param.shape = [s.copy() for s in net_param.input_shape]
    elif net_param.has("input_dim"):
        dims = list(net_param.input_dim)
        if len(dims) != 4 * len(names):
            raise ModelError(f"{source}: {len(names)} input(s) need {4 * len(names)} input_dim values "
                             f"(N, C, H, W each), found {len(dims)}")
        input_param.shape = [Message("BlobShape", dim=dims[4 * i:4 * i + 4]) for i in range(len(names))]
    else:
        raise ModelError(f"{source}: input {names} has no shape; add four `input_dim:` lines (N, C, H, W) "
                         "or an `input_shape { dim: ... }`")
    return layer


def _rule_met(state: Message, rule: Message) -> bool:
    if rule.has("phase") and rule.phase != state.phase:
        return False
    if rule.has("min_level") and state.level < rule.min_level:
        return False
    if rule.has("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def layer_included(lp: Message, state: Message) -> bool:
    """Caffe's FilterNet rule: include rules (any) win; otherwise excluded if any exclude rule is met."""
    if lp.has("include"):
        return any(_rule_met(state, rule) for rule in lp.include)
    return not any(_rule_met(state, rule) for rule in lp.exclude)


def _build_layers(params: list[Message], source: Path) -> list[Layer]:
    layers: list[Layer] = []
    names: set[str] = set()
    for index, lp in enumerate(params):
        name = lp.name or f"layer{index}"
        ltype = lp.type
        if ltype in _DROPPED_TYPES or ltype.endswith("Loss"):
            log.warning("%s: layer %r (%s) needs labels or has no output to save; dropped from the TEST net",
                        source, name, ltype)
            continue
        if ltype == "MemoryData":
            lp = _memory_data_to_input(lp, name, source)
            ltype = "Input"
        elif ltype in REFUSED_TYPES:
            raise UnsupportedLayerError(f"{source}: layer {name!r} has type {ltype!r}, which savedeep refuses: "
                                        f"{REFUSED_TYPES[ltype]}")
        elif ltype in DATA_LAYER_TYPES:
            raise UnsupportedLayerError(
                f"{source}: layer {name!r} is a {ltype} layer, which reads a training database; savedeep feeds "
                "images itself: replace it with an Input layer (type: \"Input\" input_param { shape "
                "{ dim: 1 dim: 3 dim: H dim: W } }) or mark it include { phase: TRAIN }")
        if ltype not in SHAPE_RULES and ltype != "Input":
            raise UnsupportedLayerError(
                f"{source}: layer {name!r} has type {ltype!r}, which savedeep does not support; "
                f"supported types: {', '.join(supported_layer_types())}")
        if name in names:
            raise ModelError(f"{source}: two layers are named {name!r}; layer names must be unique "
                             "(weights are matched by name)")
        names.add(name)
        layers.append(Layer(name, ltype, list(lp.bottom), list(lp.top), lp))
    return layers


def _memory_data_to_input(lp: Message, name: str, source: Path) -> Message:
    p = lp.memory_data_param
    if not all((p.batch_size, p.channels, p.height, p.width)) or not lp.top:
        raise UnsupportedLayerError(f"{source}: MemoryData layer {name!r} lacks batch_size/channels/height/width "
                                    "or a top; replace it with an Input layer")
    if len(lp.top) > 1:
        log.info("%s: MemoryData layer %r becomes an Input of %r; its label top %s is dropped",
                 source, name, lp.top[0], list(lp.top[1:]))
    shape = Message("BlobShape", dim=[p.batch_size, p.channels, p.height, p.width])
    return Message("LayerParameter", name=name, type="Input", top=[lp.top[0]],
                   input_param=Message("InputParameter", shape=[shape]))


def _input_shapes(layer: Layer, source: Path) -> list[Shape]:
    shapes = [tuple(int(d) for d in s.dim) for s in layer.param.input_param.shape]
    if len(shapes) == 1 and len(layer.tops) > 1:
        shapes = shapes * len(layer.tops)
    if len(shapes) != len(layer.tops):
        raise ModelError(f"{source}: Input layer {layer.name!r} has {len(layer.tops)} top(s) but "
                         f"{len(shapes)} shape(s); give one input_param {{ shape {{ dim: ... }} }} per top")
    return shapes


# -- weights ------------------------------------------------------------------

def read_weights(path: Path, mapped: bool = False) -> dict[str, list[Message]]:
    """Layer name -> BlobProto list of a .caffemodel (V1 or current format); later duplicates win, as in Caffe.

    ``mapped``: see savedeep.caffe.caffemodel.read_caffemodel (for checks that keep no array).
    """
    net_param = read_caffemodel(path, mapped=mapped)
    out: dict[str, list[Message]] = {}
    for lp in net_param.layer:
        out[lp.name] = list(lp.blobs)
    for v1 in net_param.layers:
        out[v1.name] = list(v1.blobs)
    return out


def attach_weights(net: Net, weights: Path) -> None:
    """Give every parametric layer its blobs from ``weights``, checking counts and shapes against the prototxt."""
    _match_weights(net, weights, keep=True)
    net.weights = weights


def check_weights(net: Net, weights: Path) -> None:
    """Read ``weights`` and check it against ``net`` as attach_weights does, keeping no array.

    The parent runs this before any worker starts, so that a truncated, empty or
    mismatched caffemodel is one clear error instead of a consumer failing at start-up.
    """
    _match_weights(net, weights, keep=False)


def _match_weights(net: Net, weights: Path, keep: bool) -> None:
    source = read_weights(weights, mapped=not keep)  # a check only reads the headers
    expected = net.param_shapes(net.declared_batch())
    for layer in net.layers:
        wanted = expected.get(layer.name, [])
        found = source.get(layer.name)
        if not wanted:
            if found:
                log.debug("%s: layer %r has %d blob(s) that %s does not use", weights, layer.name, len(found),
                          layer.type)
            if keep:
                layer.blobs = []
            continue
        if not found:
            raise ModelError(f"{weights}: has no weights for layer {layer.name!r} ({layer.type}) of {net.prototxt}, "
                             f"which needs blobs of shapes {wanted}; use the caffemodel trained for this prototxt")
        if len(found) != len(wanted):
            raise ModelError(f"{weights}: layer {layer.name!r} ({layer.type}) has {len(found)} blob(s) but "
                             f"{net.prototxt} expects {len(wanted)} of shapes {wanted} (check bias_term); "
                             "use the caffemodel trained for this prototxt")
        arrays = []
        for index, (blob, shape) in enumerate(zip(found, wanted)):
            got, legacy = blob_shape(blob)
            if got != shape and not (legacy and len(shape) <= 4 and (1,) * (4 - len(shape)) + shape == got):
                raise ModelError(f"{weights}: layer {layer.name!r} ({layer.type}) blob {index} has shape {got} "
                                 f"but {net.prototxt} expects {shape}; the prototxt and caffemodel do not match")
            # legacy 4-D blobs are reshaped to the net's shape, as Caffe does when it copies them
            array = blob_array(blob, f"{weights}: layer {layer.name!r}", copy=keep)
            if keep:
                arrays.append(array.reshape(shape))
        if keep:
            layer.blobs = arrays


# -- shape rules ----------------------------------------------------------------

class ShapeError(Exception):
    """A layer's parameters do not fit its input shapes (turned into a ModelError naming the layer)."""


_ShapeError = ShapeError  # the name used by the shape rules below


def canonical_axis(axis: int, ndim: int) -> int:
    """Caffe's CanonicalAxisIndex: negative axes count from the end (ShapeError if out of range)."""
    if not -ndim <= axis < ndim:
        raise _ShapeError(f"axis {axis} is out of range for a {ndim}-D blob")
    return axis % ndim


def _same(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    return [bottoms[0]] * len(layer.tops), []


def _spatial_values(name: str, repeated: list[int], h: int | None, w: int | None, n: int,
                    default: int | None) -> list[int]:
    if h is not None or w is not None:
        if n != 2:
            raise _ShapeError(f"{name}_h/{name}_w only work for 2-D spatial input; use {name}")
        if h is None or w is None:
            raise _ShapeError(f"give both {name}_h and {name}_w")
        if repeated:
            raise _ShapeError(f"give either {name} or {name}_h/{name}_w, not both")
        return [h, w]
    if not repeated:
        if default is None:
            raise _ShapeError(f"{name} is required")
        return [default] * n
    if len(repeated) == 1:
        return list(repeated) * n
    if len(repeated) != n:
        raise _ShapeError(f"{name} has {len(repeated)} values for {n} spatial axes")
    return list(repeated)


def conv_geometry(p: Message, n_spatial: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Kernel, stride, pad and dilation per spatial axis of a ConvolutionParameter, as Caffe expands them."""
    kernel = _spatial_values("kernel", list(p.kernel_size), p.kernel_h if p.has("kernel_h") else None,
                             p.kernel_w if p.has("kernel_w") else None, n_spatial, None)
    stride = _spatial_values("stride", list(p.stride), p.stride_h if p.has("stride_h") else None,
                             p.stride_w if p.has("stride_w") else None, n_spatial, 1)
    pad = _spatial_values("pad", list(p.pad), p.pad_h if p.has("pad_h") else None,
                          p.pad_w if p.has("pad_w") else None, n_spatial, 0)
    dilation = _spatial_values("dilation", list(p.dilation), None, None, n_spatial, 1)
    if any(k <= 0 for k in kernel) or any(s <= 0 for s in stride) or any(d <= 0 for d in dilation):
        raise _ShapeError("kernel, stride and dilation must be positive")
    return kernel, stride, pad, dilation


def _convolution(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.convolution_param
    deconv = layer.type == "Deconvolution"
    shape = bottoms[0]
    axis = canonical_axis(p.axis, len(shape))
    n_spatial = len(shape) - axis - 1
    if n_spatial < 1:
        raise _ShapeError("convolution needs at least one spatial axis after the channel axis")
    kernel, stride, pad, dilation = conv_geometry(p, n_spatial)
    channels = shape[axis]
    num_output, group = p.num_output, p.group
    if num_output <= 0:
        raise _ShapeError("num_output must be positive")
    if group <= 0 or channels % group or num_output % group:
        raise _ShapeError(f"group {group} must divide both the input channels {channels} and num_output {num_output}")
    for other in bottoms[1:]:
        if other != shape:
            raise _ShapeError("all bottoms of a convolution must have the same shape")
    out_spatial = []
    for i in range(n_spatial):
        extent = dilation[i] * (kernel[i] - 1) + 1
        size = shape[axis + 1 + i]
        if deconv:
            out_spatial.append(stride[i] * (size - 1) + extent - 2 * pad[i])
        else:
            out_spatial.append((size + 2 * pad[i] - extent) // stride[i] + 1)
    top = tuple(shape[:axis]) + (num_output,) + tuple(out_spatial)
    if deconv:
        weights: Shape = (channels, num_output // group, *kernel)
    else:
        weights = (num_output, channels // group, *kernel)
    params = [weights] + ([(num_output,)] if p.bias_term else [])
    return [top] * len(layer.tops), params


def pooling_geometry(p: Message, height: int, width: int) -> tuple[list[int], list[int], list[int]]:
    """Kernel, stride and pad (h, w) of a PoolingParameter for an input of the given size."""
    if p.global_pooling:
        if p.has("kernel_size") or p.has("kernel_h") or p.has("kernel_w"):
            raise _ShapeError("global_pooling takes no kernel size")
        kernel = [height, width]
    elif p.has("kernel_size"):
        kernel = [p.kernel_size, p.kernel_size]
    elif p.has("kernel_h") and p.has("kernel_w"):
        kernel = [p.kernel_h, p.kernel_w]
    else:
        raise _ShapeError("give kernel_size or kernel_h and kernel_w (or global_pooling: true)")
    pad = [p.pad_h, p.pad_w] if p.has("pad_h") or p.has("pad_w") else [p.pad, p.pad]
    stride = [p.stride_h, p.stride_w] if p.has("stride_h") or p.has("stride_w") else [p.stride, p.stride]
    if any(k <= 0 for k in kernel) or any(s <= 0 for s in stride):
        raise _ShapeError("kernel and stride must be positive")
    if p.global_pooling and (any(pad) or any(s != 1 for s in stride)):
        raise _ShapeError("global_pooling needs pad 0 and stride 1")
    if any(pd >= k for pd, k in zip(pad, kernel)):
        raise _ShapeError(f"pad {pad} must be smaller than the kernel {kernel}")
    return kernel, stride, pad


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool = True) -> int:
    """Caffe's pooled output size: ceil (or floor) division, last window clipped to start inside the padded input."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _pooling(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.pooling_param
    shape = bottoms[0]
    if len(shape) != 4:
        raise _ShapeError("pooling needs a 4-D (N, C, H, W) input")
    n, c, h, w = shape
    kernel, stride, pad = pooling_geometry(p, h, w)
    ceil = p.round_mode == "CEIL"
    top = (n, c, pooled_size(h, kernel[0], stride[0], pad[0], ceil), pooled_size(w, kernel[1], stride[1], pad[1], ceil))
    if len(layer.tops) > 1 and p.pool != "MAX":
        raise _ShapeError("only MAX pooling has a second (mask) top")
    return [top] * len(layer.tops), []


def _inner_product(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.inner_product_param
    shape = bottoms[0]
    axis = canonical_axis(p.axis, len(shape))
    if p.num_output <= 0:
        raise _ShapeError("num_output must be positive")
    k = int(np.prod(shape[axis:], dtype=np.int64))
    n = p.num_output
    weights = (k, n) if p.transpose else (n, k)
    params = [weights] + ([(n,)] if p.bias_term else [])
    return [tuple(shape[:axis]) + (n,)], params


def _concat(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.concat_param
    ref = bottoms[0]
    axis = p.concat_dim if p.has("concat_dim") else p.axis
    axis = canonical_axis(axis, len(ref))
    total = 0
    for s in bottoms:
        if len(s) != len(ref) or any(a != b for i, (a, b) in enumerate(zip(s, ref)) if i != axis):
            raise _ShapeError(f"bottoms must match except on axis {axis}")
        total += s[axis]
    return [ref[:axis] + (total,) + ref[axis + 1:]], []


def _slice(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.slice_param
    shape = bottoms[0]
    axis = canonical_axis(p.slice_dim if p.has("slice_dim") else p.axis, len(shape))
    dim = shape[axis]
    ntops = len(layer.tops)
    points = list(p.slice_point)
    if points:
        if len(points) != ntops - 1:
            raise _ShapeError(f"{len(points)} slice_point(s) for {ntops} tops (need {ntops - 1})")
        edges = [0] + points + [dim]
        sizes = [b - a for a, b in zip(edges, edges[1:])]
        if any(s <= 0 for s in sizes):
            raise _ShapeError(f"slice_point {points} must increase strictly inside (0, {dim})")
    else:
        if dim % ntops:
            raise _ShapeError(f"axis {axis} of size {dim} cannot be split evenly into {ntops} tops")
        sizes = [dim // ntops] * ntops
    return [shape[:axis] + (s,) + shape[axis + 1:] for s in sizes], []


def _eltwise(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.eltwise_param
    if any(s != bottoms[0] for s in bottoms):
        raise _ShapeError("all bottoms of an Eltwise layer must have the same shape")
    if p.has("coeff") and len(p.coeff) != len(bottoms):
        raise _ShapeError(f"{len(p.coeff)} coeff values for {len(bottoms)} bottoms")
    if p.has("coeff") and p.operation != "SUM":
        raise _ShapeError("coeff works only with operation SUM")
    return [bottoms[0]], []


def _channels(shape: Shape) -> int:
    return shape[1] if len(shape) > 1 else 1


def _batch_norm(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    c = _channels(bottoms[0])
    return [bottoms[0]], [(c,), (c,), (1,)]


def _param_span(shape: Shape, axis: int, num_axes: int) -> Shape:
    axis = canonical_axis(axis, len(shape)) if shape else 0
    if num_axes < -1:
        raise _ShapeError("num_axes must be -1 or more")
    end = len(shape) if num_axes == -1 else axis + num_axes
    if end > len(shape):
        raise _ShapeError(f"axis {axis} + num_axes {num_axes} goes past the {len(shape)}-D input")
    return tuple(shape[axis:end])


def _scale_or_bias(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    is_scale = layer.type == "Scale"
    p = layer.param.scale_param if is_scale else layer.param.bias_param
    shape = bottoms[0]
    if len(bottoms) > 1:
        other = bottoms[1]
        axis = canonical_axis(p.axis, len(shape)) if other else 0
        if tuple(shape[axis:axis + len(other)]) != other:
            raise _ShapeError(f"second bottom {other} must match the first bottom's axes from {axis}")
        params = [other] if is_scale and p.bias_term else []
        return [shape], params
    span = _param_span(shape, p.axis, p.num_axes)
    params = [span] + ([span] if is_scale and p.bias_term else [])
    return [shape], params


def _prelu(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    if len(bottoms[0]) < 2:
        raise _ShapeError("PReLU needs an input with a channel axis")
    shared = layer.param.prelu_param.channel_shared
    return [bottoms[0]], [() if shared else (bottoms[0][1],)]


def _flatten(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.flatten_param
    shape = bottoms[0]
    start, end = canonical_axis(p.axis, len(shape)), canonical_axis(p.end_axis, len(shape))
    if end < start:
        raise _ShapeError(f"end_axis {p.end_axis} comes before axis {p.axis}")
    inner = int(np.prod(shape[start:end + 1], dtype=np.int64))
    return [shape[:start] + (inner,) + shape[end + 1:]], []


def _reshape(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.reshape_param
    shape = bottoms[0]
    ndim = len(shape)
    start = p.axis if p.axis >= 0 else ndim + p.axis + 1
    if not 0 <= start <= ndim:
        raise _ShapeError(f"axis {p.axis} is out of range")
    if p.num_axes < -1:
        raise _ShapeError("num_axes must be -1 or more")
    end = ndim if p.num_axes == -1 else start + p.num_axes
    if end > ndim:
        raise _ShapeError(f"axis {p.axis} + num_axes {p.num_axes} goes past the {ndim}-D input")
    dims = [int(d) for d in p.shape.dim]
    if dims.count(-1) > 1:
        raise _ShapeError("at most one dim may be -1")
    new = []
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= ndim:
                raise _ShapeError(f"dim {i} is 0 (copy) but the input has no axis {start + i}")
            new.append(shape[start + i])
        elif d < -1:
            raise _ShapeError(f"dim {d} is invalid (use -1 to infer, 0 to copy)")
        else:
            new.append(d)
    top = list(shape[:start]) + new + list(shape[end:])
    count = int(np.prod(shape, dtype=np.int64))
    if -1 in top:
        i = top.index(-1)
        known = int(np.prod([d for j, d in enumerate(top) if j != i], dtype=np.int64))
        if known == 0 or count % known:
            raise _ShapeError(f"cannot infer the -1 dim: {count} values do not divide into {top}")
        top[i] = count // known
    if int(np.prod(top, dtype=np.int64)) != count:
        raise _ShapeError(f"new shape {tuple(top)} does not hold the input's {count} values")
    return [tuple(top)], []


def _crop(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.crop_param
    if len(bottoms) != 2:
        raise _ShapeError("Crop takes two bottoms: the blob to crop and one of the target size")
    shape, ref = bottoms
    if len(shape) != len(ref):
        raise _ShapeError("both bottoms must have the same number of axes")
    start = canonical_axis(p.axis, len(shape))
    offsets = list(p.offset)
    if len(offsets) > 1 and len(offsets) != len(shape) - start:
        raise _ShapeError(f"{len(offsets)} offsets for {len(shape) - start} cropped axes")
    top = list(shape)
    for i in range(start, len(shape)):
        off = 0 if not offsets else offsets[0] if len(offsets) == 1 else offsets[i - start]
        if shape[i] - off < ref[i]:
            raise _ShapeError(f"axis {i}: offset {off} + size {ref[i]} exceeds {shape[i]}")
        top[i] = ref[i]
    return [tuple(top)], []


def _argmax(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.argmax_param
    shape = bottoms[0]
    if p.top_k < 1:
        raise _ShapeError("top_k must be at least 1")
    if p.has("axis"):
        axis = canonical_axis(p.axis, len(shape))
        if p.top_k > shape[axis]:
            raise _ShapeError(f"top_k {p.top_k} exceeds the size {shape[axis]} of axis {axis}")
        top = list(shape)
        top[axis] = p.top_k
        return [tuple(top)], []
    if p.top_k > int(np.prod(shape[1:], dtype=np.int64)):
        raise _ShapeError(f"top_k {p.top_k} exceeds the number of values per image")
    top = [1] * max(3, len(shape))
    top[0] = shape[0]
    top[2] = p.top_k
    if p.out_max_val:
        top[1] = 2
    return [tuple(top)], []


def _softmax(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    canonical_axis(layer.param.softmax_param.axis, len(bottoms[0]))
    return [bottoms[0]], []


def _lrn(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.lrn_param
    if p.local_size % 2 == 0:
        raise _ShapeError("LRN local_size must be odd")
    if len(bottoms[0]) != 4:
        raise _ShapeError("LRN needs a 4-D (N, C, H, W) input")
    return [bottoms[0]], []


def _split(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    return [bottoms[0]] * len(layer.tops), []


def _keeps_batch(axis: int, what: str) -> None:
    """Refuse a layer that would mix (or multiply) the images of a batch: savedeep saves one row per image."""
    if axis == 0:
        raise _ShapeError(f"{what} axis 0, the batch axis, mixes the images of a batch, and savedeep saves one row "
                          "per image; use axis 1 or later")


def _reduction(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    shape = bottoms[0]
    axis = canonical_axis(layer.param.reduction_param.axis, len(shape))
    _keeps_batch(axis, "Reduction over the axes from")
    return [shape[:axis]], []


def _tile(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.tile_param
    shape = bottoms[0]
    axis = canonical_axis(p.axis, len(shape))
    _keeps_batch(axis, "Tile along")
    if not p.has("tiles") or p.tiles <= 0:
        raise _ShapeError("tile_param.tiles must be given and positive")
    return [shape[:axis] + (shape[axis] * p.tiles,) + shape[axis + 1:]], []


def spp_levels(height: int, width: int, pyramid_height: int) -> list[tuple[list[int], list[int], list[int]]]:
    """Kernel, stride and pad (h, w) of each level of Caffe's SPP layer: level l has 2^l bins per side.

    The kernel is the size over the bins rounded up, the stride equals the kernel, and the pad is half
    of what the bins overhang the input (rounded up), as Caffe's SPPLayer sets its pooling layers.
    """
    levels = []
    for level in range(pyramid_height):
        bins = 2 ** level
        kernel = [-(-height // bins), -(-width // bins)]
        pad = [(kernel[0] * bins - height + 1) // 2, (kernel[1] * bins - width + 1) // 2]
        if any(pd >= k for pd, k in zip(pad, kernel)):
            raise _ShapeError(f"pyramid level {level} ({bins}x{bins} bins) needs pad {pad} for kernel {kernel}, which "
                              f"Caffe's pooling refuses: the {height}x{width} input is too small for "
                              f"pyramid_height {pyramid_height}")
        levels.append((kernel, list(kernel), pad))
    return levels


def _spp(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.spp_param
    shape = bottoms[0]
    if len(shape) != 4:
        raise _ShapeError("SPP needs a 4-D (N, C, H, W) input")
    if p.pyramid_height < 1:
        raise _ShapeError("spp_param.pyramid_height must be at least 1")
    n, c, h, w = shape
    sizes = [(pooled_size(h, k[0], s[0], pd[0]), pooled_size(w, k[1], s[1], pd[1]))
             for k, s, pd in spp_levels(h, w, p.pyramid_height)]
    if p.pyramid_height == 1:  # Caffe runs the one pooling layer alone, without the flatten
        return [(n, c) + sizes[0]], []
    return [(n, sum(c * oh * ow for oh, ow in sizes))], []


def _embed(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.embed_param
    if p.num_output <= 0 or p.input_dim <= 0:
        raise _ShapeError("embed_param.num_output and input_dim must be positive")
    params = [(p.input_dim, p.num_output)] + ([(p.num_output,)] if p.bias_term else [])
    return [bottoms[0] + (p.num_output,)], params


def _im2col(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.convolution_param
    shape = bottoms[0]
    axis = canonical_axis(p.axis, len(shape))
    n_spatial = len(shape) - axis - 1
    if n_spatial < 1:
        raise _ShapeError("Im2col needs at least one spatial axis after the channel axis")
    kernel, stride, pad, dilation = conv_geometry(p, n_spatial)
    out = [(shape[axis + 1 + i] + 2 * pad[i] - (dilation[i] * (kernel[i] - 1) + 1)) // stride[i] + 1
           for i in range(n_spatial)]
    return [tuple(shape[:axis]) + (shape[axis] * int(np.prod(kernel)),) + tuple(out)], []


def legacy_shape(shape: Shape) -> Shape:
    """Caffe's (num, channels, height, width) of a blob of at most 4 axes, a missing axis counting as 1."""
    if len(shape) > 4:
        raise _ShapeError(f"this layer takes blobs of at most 4 axes (num, channels, height, width), got {len(shape)}")
    return tuple(shape) + (1,) * (4 - len(shape))


def _mvn(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    return [legacy_shape(bottoms[0])], []  # Caffe reshapes the top to (num, channels, height, width)


def _clip(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.clip_param
    if not (p.has("min") and p.has("max")):
        raise _ShapeError("clip_param needs both min and max (Caffe requires them)")
    return [bottoms[0]], []


_Rule = Callable[[Layer, list[Shape]], tuple[list[Shape], list[Shape]]]

SHAPE_RULES: dict[str, _Rule] = {
    "Convolution": _convolution,
    "Deconvolution": _convolution,
    "Pooling": _pooling,
    "LRN": _lrn,
    "InnerProduct": _inner_product,
    "ReLU": _same,
    "PReLU": _prelu,
    "ELU": _same,
    "Sigmoid": _same,
    "TanH": _same,
    "AbsVal": _same,
    "Power": _same,
    "Exp": _same,
    "Log": _same,
    "BNLL": _same,
    "Dropout": _same,
    "Softmax": _softmax,
    "Concat": _concat,
    "Slice": _slice,
    "Split": _split,
    "Eltwise": _eltwise,
    "BatchNorm": _batch_norm,
    "Scale": _scale_or_bias,
    "Bias": _scale_or_bias,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Crop": _crop,
    "ArgMax": _argmax,
    "MVN": _mvn,
    "Reduction": _reduction,
    "Tile": _tile,
    "SPP": _spp,
    "Threshold": _same,
    "Embed": _embed,
    "Im2col": _im2col,
    "Clip": _clip,
    "Swish": _same,
}


def supported_layer_types() -> list[str]:
    """The layer types savedeep can model, sorted."""
    return sorted(set(SHAPE_RULES) | {"Input"})
