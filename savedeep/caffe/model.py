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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from savedeep.caffe.schema import LAYER_PARAMS, V1_LAYER_TYPES, Message
from savedeep.caffe.caffemodel import blob_array, blob_shape, read_caffemodel
from savedeep.errors import ModelError, UnsupportedLayerError
from savedeep.caffe.prototxt import parse_prototxt
from savedeep.caffe.shapes import (  # noqa: F401 - the layer, its shape rules and Caffe's geometry, also from here
    SHAPE_RULES,
    Layer,
    Shape,
    ShapeError,
    canonical_axis,
    conv_geometry,
    legacy_shape,
    pooled_size,
    pooling_geometry,
    spp_levels,
    supported_layer_types,
)

log = logging.getLogger(__name__)

PROTOTXT_NAME = "deploy.prototxt"
WEIGHTS_NAME = "weights.caffemodel"
MEAN_NAME = "mean.npy"
MODEL_DIR_CONTENTS = (
    f"a model directory must contain {PROTOTXT_NAME} (the network), "
    f"{WEIGHTS_NAME} (trained weights) and {MEAN_NAME} (the mean, (3,) or (3,H,W); (1,) or (1,H,W) for a 1-channel input)"
)

# Layers that only feed data during training; a deploy net declares an Input instead.
DATA_LAYER_TYPES = frozenset({"Data", "ImageData", "HDF5Data", "WindowData", "DummyData", "AnnotatedData", "VideoData"})
# Layers that need labels and produce no activations worth saving: dropped from a TEST net.
_DROPPED_TYPES = frozenset({"Accuracy", "Silence"})

_RECURRENT = (
    "a recurrent layer: its blobs are (time, stream, ...) and it needs a sequence-continuation "
    "input, while savedeep feeds one image per row"
)
# Layer types of standard Caffe (BVLC master's layer catalogue) that can run at deploy time but that
# savedeep refuses, with the reason: each breaks "one row per image, blobs computed from that image".
# Data layers, losses and Accuracy are handled apart (DATA_LAYER_TYPES, _DROPPED_TYPES). The docs'
# layer types page (docs/reference/layers.md) is built from this table.
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
            raise ModelError(
                f"{prototxt}: the net declares no input; add an Input layer "
                '(layer { name: "data" type: "Input" top: "data" '
                "input_param { shape { dim: 1 dim: 3 dim: 227 dim: 227 } } })"
            )
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
                raise ModelError(
                    f"{self.prototxt}: layer {layer.name!r} ({layer.type}) reads blob(s) {missing} "
                    "that no earlier layer produces; fix its bottom names or the layer order"
                )
            for i, top in enumerate(layer.tops):
                if i < len(layer.bottoms) and layer.bottoms[i] == top and readers.get(top, 0):
                    # Caffe inserts a Split for the earlier readers and then fails with
                    # "Top blob produced by multiple sources": reject it the same way
                    raise ModelError(
                        f"{self.prototxt}: in-place layer {layer.name!r} ({layer.type}) rewrites "
                        f"blob {top!r} after other layers already read it, which Caffe rejects; "
                        "give it a new top name or move it before those readers"
                    )
            for bottom in layer.bottoms:
                readers[bottom] = readers.get(bottom, 0) + 1
            bottoms = [shapes[b] for b in layer.bottoms]
            try:
                if layer.type == "Input":
                    tops = [(batch,) + s[1:] if s else s for s in _input_shapes(layer, self.prototxt)]
                    blob_params: list[Shape] = []
                else:
                    tops, blob_params = SHAPE_RULES[layer.type](layer, bottoms)
            except ShapeError as exc:
                raise ModelError(
                    f"{self.prototxt}: layer {layer.name!r} ({layer.type}) with input shape(s) "
                    f"{', '.join(map(str, bottoms))}: {exc}; fix the layer's parameters"
                ) from None
            if len(tops) != len(layer.tops):
                raise ModelError(
                    f"{self.prototxt}: layer {layer.name!r} ({layer.type}) declares "
                    f"{len(layer.tops)} top(s) but produces {len(tops)}; fix its top list"
                )
            for name, shape in zip(layer.tops, tops):
                if name in shapes and name not in layer.bottoms:
                    raise ModelError(
                        f"{self.prototxt}: blob {name!r} is produced again by layer {layer.name!r} "
                        "without being its bottom (Caffe forbids two sources); rename the top"
                    )
                if name in shapes and shapes[name] != shape:
                    raise ModelError(
                        f"{self.prototxt}: in-place layer {layer.name!r} changes the shape of "
                        f"{name!r} from {shapes[name]} to {shape}; give it a new top name"
                    )
                shapes[name] = tuple(int(d) for d in shape)
                readers[name] = 0
                if any(d <= 0 for d in shapes[name]):
                    raise ModelError(
                        f"{self.prototxt}: layer {layer.name!r} ({layer.type}) gives blob {name!r} "
                        f"the empty shape {shapes[name]} (input too small for its kernel?); "
                        "fix the input size or the layer's parameters"
                    )
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
        raise ModelError(
            f"{source}: mixes the V1 'layers' and the current 'layer' format; "
            "use one (upgrade with Caffe's upgrade_net_proto_text)"
        )
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
            raise ModelError(f'{source}: input_dim/input_shape given without `input: "name"`; add the input name')
        return None
    names = list(net_param.input)
    layer = Message("LayerParameter", name="input", type="Input", top=names)
    input_param = layer.mutable("input_param")
    if net_param.has("input_shape"):
        if len(net_param.input_shape) != len(names):
            raise ModelError(
                f"{source}: {len(names)} input(s) but {len(net_param.input_shape)} input_shape "
                "entries; give one input_shape { dim: ... } per input"
            )
        input_param.shape = [s.copy() for s in net_param.input_shape]
    elif net_param.has("input_dim"):
        dims = list(net_param.input_dim)
        if len(dims) != 4 * len(names):
            raise ModelError(
                f"{source}: {len(names)} input(s) need {4 * len(names)} input_dim values "
                f"(N, C, H, W each), found {len(dims)}"
            )
        input_param.shape = [Message("BlobShape", dim=dims[4 * i : 4 * i + 4]) for i in range(len(names))]
    else:
        raise ModelError(
            f"{source}: input {names} has no shape; add four `input_dim:` lines (N, C, H, W) "
            "or an `input_shape { dim: ... }`"
        )
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
            log.warning(
                "%s: layer %r (%s) needs labels or has no output to save; dropped from the TEST net",
                source,
                name,
                ltype,
            )
            continue
        if ltype == "MemoryData":
            lp = _memory_data_to_input(lp, name, source)
            ltype = "Input"
        elif ltype in REFUSED_TYPES:
            raise UnsupportedLayerError(
                f"{source}: layer {name!r} has type {ltype!r}, which savedeep refuses: {REFUSED_TYPES[ltype]}"
            )
        elif ltype in DATA_LAYER_TYPES:
            raise UnsupportedLayerError(
                f"{source}: layer {name!r} is a {ltype} layer, which reads a training database; savedeep feeds "
                'images itself: replace it with an Input layer (type: "Input" input_param { shape '
                "{ dim: 1 dim: 3 dim: H dim: W } }) or mark it include { phase: TRAIN }"
            )
        if ltype not in SHAPE_RULES and ltype != "Input":
            raise UnsupportedLayerError(
                f"{source}: layer {name!r} has type {ltype!r}, which savedeep does not support; "
                f"supported types: {', '.join(supported_layer_types())}"
            )
        if name in names:
            raise ModelError(
                f"{source}: two layers are named {name!r}; layer names must be unique (weights are matched by name)"
            )
        names.add(name)
        layers.append(Layer(name, ltype, list(lp.bottom), list(lp.top), lp))
    return layers


def _memory_data_to_input(lp: Message, name: str, source: Path) -> Message:
    p = lp.memory_data_param
    if not all((p.batch_size, p.channels, p.height, p.width)) or not lp.top:
        raise UnsupportedLayerError(
            f"{source}: MemoryData layer {name!r} lacks batch_size/channels/height/width "
            "or a top; replace it with an Input layer"
        )
    if len(lp.top) > 1:
        log.info(
            "%s: MemoryData layer %r becomes an Input of %r; its label top %s is dropped",
            source,
            name,
            lp.top[0],
            list(lp.top[1:]),
        )
    shape = Message("BlobShape", dim=[p.batch_size, p.channels, p.height, p.width])
    return Message(
        "LayerParameter", name=name, type="Input", top=[lp.top[0]], input_param=Message("InputParameter", shape=[shape])
    )


def _input_shapes(layer: Layer, source: Path) -> list[Shape]:
    shapes = [tuple(int(d) for d in s.dim) for s in layer.param.input_param.shape]
    if len(shapes) == 1 and len(layer.tops) > 1:
        shapes = shapes * len(layer.tops)
    if len(shapes) != len(layer.tops):
        raise ModelError(
            f"{source}: Input layer {layer.name!r} has {len(layer.tops)} top(s) but "
            f"{len(shapes)} shape(s); give one input_param {{ shape {{ dim: ... }} }} per top"
        )
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
                log.debug(
                    "%s: layer %r has %d blob(s) that %s does not use", weights, layer.name, len(found), layer.type
                )
            if keep:
                layer.blobs = []
            continue
        if not found:
            raise ModelError(
                f"{weights}: has no weights for layer {layer.name!r} ({layer.type}) of {net.prototxt}, "
                f"which needs blobs of shapes {wanted}; use the caffemodel trained for this prototxt"
            )
        if len(found) != len(wanted):
            raise ModelError(
                f"{weights}: layer {layer.name!r} ({layer.type}) has {len(found)} blob(s) but "
                f"{net.prototxt} expects {len(wanted)} of shapes {wanted} (check bias_term); "
                "use the caffemodel trained for this prototxt"
            )
        arrays = []
        for index, (blob, shape) in enumerate(zip(found, wanted)):
            got, legacy = blob_shape(blob)
            if got != shape and not (legacy and len(shape) <= 4 and (1,) * (4 - len(shape)) + shape == got):
                raise ModelError(
                    f"{weights}: layer {layer.name!r} ({layer.type}) blob {index} has shape {got} "
                    f"but {net.prototxt} expects {shape}; the prototxt and caffemodel do not match"
                )
            # legacy 4-D blobs are reshaped to the net's shape, as Caffe does when it copies them
            array = blob_array(blob, f"{weights}: layer {layer.name!r}", copy=keep)
            if keep:
                arrays.append(array.reshape(shape))
        if keep:
            layer.blobs = arrays
