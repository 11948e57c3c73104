"""The subset of Caffe's ``caffe.proto`` that savedeep reads and writes, as Python data.

Field numbers, types and proto2 defaults are those of BVLC Caffe 1.0 (the
format CaffeNet, AlexNet, GoogLeNet and open_nsfw were saved in). Both the
text parser (:mod:`savedeep.caffe.prototxt`) and the wire codec
(:mod:`savedeep.caffe.caffemodel`) are driven by these tables, so a message or field
that is not listed here is skipped by the binary decoder and reported by the
text parser.

Where forks disagree with BVLC we follow BVLC: ``PoolingParameter`` field 13 is
the ``round_mode`` enum (``CEIL``/``FLOOR``); a fork's ``ceil_mode: false`` in
text is accepted as an alias of ``round_mode: FLOOR`` (see ``TEXT_ALIASES``).

Size: tables transcribed from ``caffe.proto`` (a message's fields with numbers, types and defaults);
they are data, read top to bottom against the proto file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Scalar wire classes: how each scalar type travels in the protobuf wire format.
VARINT_TYPES = frozenset({"int32", "uint32", "int64", "uint64", "bool", "enum"})
FIXED32_TYPES = frozenset({"float"})
FIXED64_TYPES = frozenset({"double"})


@dataclass(frozen=True)
class Field:
    """One field of a message: number, name, type, label and proto2 default."""

    number: int
    name: str
    type: str  # int32/uint32/int64/uint64/float/double/bool/string/bytes/enum/message
    repeated: bool = False
    packed: bool = False
    default: Any = None
    type_name: str | None = None  # message or enum name for type "message" / "enum"
    array: bool = False  # decode a repeated float/double into one numpy array (blob data)

    @property
    def named_type(self) -> str:
        """The message or enum type of a "message" or "enum" field (every such field of the schema names one)."""
        assert self.type_name is not None, f"field {self.name} ({self.type}) names no message or enum type"
        return self.type_name

    @property
    def label(self) -> str:
        """The proto2 label: 'repeated' or 'optional'."""
        return "repeated" if self.repeated else "optional"


def _opt(number: int, name: str, type_: str, default: Any = None, type_name: str | None = None) -> Field:
    if default is None:
        default = _zero(type_, type_name)
    return Field(number, name, type_, False, False, default, type_name)


def _rep(
    number: int, name: str, type_: str, type_name: str | None = None, packed: bool = False, array: bool = False
) -> Field:
    return Field(number, name, type_, True, packed, None, type_name, array)


def _msg(number: int, name: str, type_name: str) -> Field:
    return Field(number, name, "message", False, False, None, type_name)


def _rmsg(number: int, name: str, type_name: str) -> Field:
    return Field(number, name, "message", True, False, None, type_name)


def _enum(number: int, name: str, type_name: str, default: str | None = None) -> Field:
    if default is None:
        default = next(iter(ENUMS[type_name]))  # proto2: the first value listed
    return Field(number, name, "enum", False, False, default, type_name)


def _zero(type_: str, type_name: str | None) -> Any:
    if type_ in ("float", "double"):
        return 0.0
    if type_ == "bool":
        return False
    if type_ == "string":
        return ""
    if type_ == "bytes":
        return b""
    return 0


# Enums: name -> {value name: number}, in declaration order (the first is the proto2 default).
_ENGINE = {"DEFAULT": 0, "CAFFE": 1, "CUDNN": 2}
ENUMS: dict[str, dict[str, int]] = {
    "Phase": {"TRAIN": 0, "TEST": 1},
    "ParamSpec.DimCheckMode": {"STRICT": 0, "PERMISSIVE": 1},
    "FillerParameter.VarianceNorm": {"FAN_IN": 0, "FAN_OUT": 1, "AVERAGE": 2},
    "ConvolutionParameter.Engine": _ENGINE,
    "PoolingParameter.PoolMethod": {"MAX": 0, "AVE": 1, "STOCHASTIC": 2},
    "PoolingParameter.Engine": _ENGINE,
    "PoolingParameter.RoundMode": {"CEIL": 0, "FLOOR": 1},
    "LRNParameter.NormRegion": {"ACROSS_CHANNELS": 0, "WITHIN_CHANNEL": 1},
    "LRNParameter.Engine": _ENGINE,
    "ReLUParameter.Engine": _ENGINE,
    "SigmoidParameter.Engine": _ENGINE,
    "TanHParameter.Engine": _ENGINE,
    "SoftmaxParameter.Engine": _ENGINE,
    "EltwiseParameter.EltwiseOp": {"PROD": 0, "SUM": 1, "MAX": 2},
    "ReductionParameter.ReductionOp": {"SUM": 1, "ASUM": 2, "SUMSQ": 3, "MEAN": 4},
    "SPPParameter.PoolMethod": {"MAX": 0, "AVE": 1, "STOCHASTIC": 2},
    "SPPParameter.Engine": _ENGINE,
    "DataParameter.DB": {"LEVELDB": 0, "LMDB": 1},
    "LossParameter.NormalizationMode": {"FULL": 0, "VALID": 1, "BATCH_SIZE": 2, "NONE": 3},
    "V1LayerParameter.LayerType": {
        "NONE": 0,
        "ABSVAL": 35,
        "ACCURACY": 1,
        "ARGMAX": 30,
        "BNLL": 2,
        "CONCAT": 3,
        "CONTRASTIVE_LOSS": 37,
        "CONVOLUTION": 4,
        "DATA": 5,
        "DECONVOLUTION": 39,
        "DROPOUT": 6,
        "DUMMY_DATA": 32,
        "EUCLIDEAN_LOSS": 7,
        "ELTWISE": 25,
        "EXP": 38,
        "FLATTEN": 8,
        "HDF5_DATA": 9,
        "HDF5_OUTPUT": 10,
        "HINGE_LOSS": 28,
        "IM2COL": 11,
        "IMAGE_DATA": 12,
        "INFOGAIN_LOSS": 13,
        "INNER_PRODUCT": 14,
        "LRN": 15,
        "MEMORY_DATA": 29,
        "MULTINOMIAL_LOGISTIC_LOSS": 16,
        "MVN": 34,
        "POOLING": 17,
        "POWER": 26,
        "RELU": 18,
        "SIGMOID": 19,
        "SIGMOID_CROSS_ENTROPY_LOSS": 27,
        "SILENCE": 36,
        "SOFTMAX": 20,
        "SOFTMAX_LOSS": 21,
        "SPLIT": 22,
        "SLICE": 33,
        "TANH": 23,
        "WINDOW_DATA": 24,
        "THRESHOLD": 31,
    },
    "V1LayerParameter.DimCheckMode": {"STRICT": 0, "PERMISSIVE": 1},
}

# V1 enum layer type -> V2 type string (what Caffe's UpgradeV1LayerType produces).
V1_LAYER_TYPES: dict[str, str] = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DATA": "Data",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}


def _fields(*fields: Field) -> dict[str, Field]:
    return {f.name: f for f in fields}


MESSAGES: dict[str, dict[str, Field]] = {}

MESSAGES["BlobShape"] = _fields(_rep(1, "dim", "int64", packed=True))
MESSAGES["BlobProto"] = _fields(
    _msg(7, "shape", "BlobShape"),
    _rep(5, "data", "float", packed=True, array=True),
    _rep(6, "diff", "float", packed=True, array=True),
    _rep(8, "double_data", "double", packed=True, array=True),
    _rep(9, "double_diff", "double", packed=True, array=True),
    # legacy 4-D shape, used when `shape` is absent
    _opt(1, "num", "int32", 0),
    _opt(2, "channels", "int32", 0),
    _opt(3, "height", "int32", 0),
    _opt(4, "width", "int32", 0),
)
MESSAGES["BlobProtoVector"] = _fields(_rmsg(1, "blobs", "BlobProto"))
MESSAGES["FillerParameter"] = _fields(
    _opt(1, "type", "string", "constant"),
    _opt(2, "value", "float", 0.0),
    _opt(3, "min", "float", 0.0),
    _opt(4, "max", "float", 1.0),
    _opt(5, "mean", "float", 0.0),
    _opt(6, "std", "float", 1.0),
    _opt(7, "sparse", "int32", -1),
    _enum(8, "variance_norm", "FillerParameter.VarianceNorm", "FAN_IN"),
)
MESSAGES["NetState"] = _fields(
    _enum(1, "phase", "Phase", "TEST"),
    _opt(2, "level", "int32", 0),
    _rep(3, "stage", "string"),
)
MESSAGES["NetStateRule"] = _fields(
    _enum(1, "phase", "Phase"),
    _opt(2, "min_level", "int32"),
    _opt(3, "max_level", "int32"),
    _rep(4, "stage", "string"),
    _rep(5, "not_stage", "string"),
)
MESSAGES["ParamSpec"] = _fields(
    _opt(1, "name", "string"),
    _enum(2, "share_mode", "ParamSpec.DimCheckMode"),
    _opt(3, "lr_mult", "float", 1.0),
    _opt(4, "decay_mult", "float", 1.0),
)
MESSAGES["NetParameter"] = _fields(
    _opt(1, "name", "string"),
    _rep(3, "input", "string"),
    _rmsg(8, "input_shape", "BlobShape"),
    _rep(4, "input_dim", "int32"),
    _opt(5, "force_backward", "bool", False),
    _msg(6, "state", "NetState"),
    _opt(7, "debug_info", "bool", False),
    _rmsg(100, "layer", "LayerParameter"),
    _rmsg(2, "layers", "V1LayerParameter"),
)
MESSAGES["TransformationParameter"] = _fields(
    _opt(1, "scale", "float", 1.0),
    _opt(2, "mirror", "bool", False),
    _opt(3, "crop_size", "uint32", 0),
    _opt(4, "mean_file", "string"),
    _rep(5, "mean_value", "float"),
    _opt(6, "force_color", "bool", False),
    _opt(7, "force_gray", "bool", False),
)
MESSAGES["LossParameter"] = _fields(
    _opt(1, "ignore_label", "int32"),
    _enum(3, "normalization", "LossParameter.NormalizationMode", "VALID"),
    _opt(2, "normalize", "bool"),
)
MESSAGES["AccuracyParameter"] = _fields(
    _opt(1, "top_k", "uint32", 1),
    _opt(2, "axis", "int32", 1),
    _opt(3, "ignore_label", "int32"),
)
MESSAGES["ArgMaxParameter"] = _fields(
    _opt(1, "out_max_val", "bool", False),
    _opt(2, "top_k", "uint32", 1),
    _opt(3, "axis", "int32"),
)
MESSAGES["ConcatParameter"] = _fields(
    _opt(2, "axis", "int32", 1),
    _opt(1, "concat_dim", "uint32", 1),
)
MESSAGES["BatchNormParameter"] = _fields(
    _opt(1, "use_global_stats", "bool"),
    _opt(2, "moving_average_fraction", "float", 0.999),
    _opt(3, "eps", "float", 1e-5),
)
MESSAGES["BiasParameter"] = _fields(
    _opt(1, "axis", "int32", 1),
    _opt(2, "num_axes", "int32", 1),
    _msg(3, "filler", "FillerParameter"),
)
MESSAGES["ConvolutionParameter"] = _fields(
    _opt(1, "num_output", "uint32"),
    _opt(2, "bias_term", "bool", True),
    _rep(3, "pad", "uint32"),
    _rep(4, "kernel_size", "uint32"),
    _rep(6, "stride", "uint32"),
    _rep(18, "dilation", "uint32"),
    _opt(9, "pad_h", "uint32", 0),
    _opt(10, "pad_w", "uint32", 0),
    _opt(11, "kernel_h", "uint32"),
    _opt(12, "kernel_w", "uint32"),
    _opt(13, "stride_h", "uint32"),
    _opt(14, "stride_w", "uint32"),
    _opt(5, "group", "uint32", 1),
    _msg(7, "weight_filler", "FillerParameter"),
    _msg(8, "bias_filler", "FillerParameter"),
    _enum(15, "engine", "ConvolutionParameter.Engine", "DEFAULT"),
    _opt(16, "axis", "int32", 1),
    _opt(17, "force_nd_im2col", "bool", False),
)
MESSAGES["CropParameter"] = _fields(
    _opt(1, "axis", "int32", 2),
    _rep(2, "offset", "uint32"),
)
MESSAGES["DataParameter"] = _fields(
    _opt(1, "source", "string"),
    _opt(4, "batch_size", "uint32"),
    _opt(7, "rand_skip", "uint32", 0),
    _enum(8, "backend", "DataParameter.DB", "LEVELDB"),
    _opt(2, "scale", "float", 1.0),
    _opt(3, "mean_file", "string"),
    _opt(5, "crop_size", "uint32", 0),
    _opt(6, "mirror", "bool", False),
    _opt(9, "force_encoded_color", "bool", False),
    _opt(10, "prefetch", "uint32", 4),
)
MESSAGES["DropoutParameter"] = _fields(_opt(1, "dropout_ratio", "float", 0.5))
MESSAGES["EltwiseParameter"] = _fields(
    _enum(1, "operation", "EltwiseParameter.EltwiseOp", "SUM"),
    _rep(2, "coeff", "float"),
    _opt(3, "stable_prod_grad", "bool", True),
)
MESSAGES["ELUParameter"] = _fields(_opt(1, "alpha", "float", 1.0))
MESSAGES["ExpParameter"] = _fields(
    _opt(1, "base", "float", -1.0),
    _opt(2, "scale", "float", 1.0),
    _opt(3, "shift", "float", 0.0),
)
MESSAGES["FlattenParameter"] = _fields(
    _opt(1, "axis", "int32", 1),
    _opt(2, "end_axis", "int32", -1),
)
MESSAGES["ImageDataParameter"] = _fields(
    _opt(1, "source", "string"),
    _opt(4, "batch_size", "uint32", 1),
    _opt(7, "rand_skip", "uint32", 0),
    _opt(8, "shuffle", "bool", False),
    _opt(9, "new_height", "uint32", 0),
    _opt(10, "new_width", "uint32", 0),
    _opt(11, "is_color", "bool", True),
    _opt(2, "scale", "float", 1.0),
    _opt(3, "mean_file", "string"),
    _opt(5, "crop_size", "uint32", 0),
    _opt(6, "mirror", "bool", False),
    _opt(12, "root_folder", "string", ""),
)
MESSAGES["InnerProductParameter"] = _fields(
    _opt(1, "num_output", "uint32"),
    _opt(2, "bias_term", "bool", True),
    _msg(3, "weight_filler", "FillerParameter"),
    _msg(4, "bias_filler", "FillerParameter"),
    _opt(5, "axis", "int32", 1),
    _opt(6, "transpose", "bool", False),
)
MESSAGES["InputParameter"] = _fields(_rmsg(1, "shape", "BlobShape"))
MESSAGES["LogParameter"] = _fields(
    _opt(1, "base", "float", -1.0),
    _opt(2, "scale", "float", 1.0),
    _opt(3, "shift", "float", 0.0),
)
MESSAGES["LRNParameter"] = _fields(
    _opt(1, "local_size", "uint32", 5),
    _opt(2, "alpha", "float", 1.0),
    _opt(3, "beta", "float", 0.75),
    _enum(4, "norm_region", "LRNParameter.NormRegion", "ACROSS_CHANNELS"),
    _opt(5, "k", "float", 1.0),
    _enum(6, "engine", "LRNParameter.Engine", "DEFAULT"),
)
MESSAGES["MemoryDataParameter"] = _fields(
    _opt(1, "batch_size", "uint32"),
    _opt(2, "channels", "uint32"),
    _opt(3, "height", "uint32"),
    _opt(4, "width", "uint32"),
)
MESSAGES["PoolingParameter"] = _fields(
    _enum(1, "pool", "PoolingParameter.PoolMethod", "MAX"),
    _opt(4, "pad", "uint32", 0),
    _opt(9, "pad_h", "uint32", 0),
    _opt(10, "pad_w", "uint32", 0),
    _opt(2, "kernel_size", "uint32"),
    _opt(5, "kernel_h", "uint32"),
    _opt(6, "kernel_w", "uint32"),
    _opt(3, "stride", "uint32", 1),
    _opt(7, "stride_h", "uint32"),
    _opt(8, "stride_w", "uint32"),
    _enum(11, "engine", "PoolingParameter.Engine", "DEFAULT"),
    _opt(12, "global_pooling", "bool", False),
    _enum(13, "round_mode", "PoolingParameter.RoundMode", "CEIL"),
)
MESSAGES["PowerParameter"] = _fields(
    _opt(1, "power", "float", 1.0),
    _opt(2, "scale", "float", 1.0),
    _opt(3, "shift", "float", 0.0),
)
MESSAGES["PReLUParameter"] = _fields(
    _msg(1, "filler", "FillerParameter"),
    _opt(2, "channel_shared", "bool", False),
)
MESSAGES["ReLUParameter"] = _fields(
    _opt(1, "negative_slope", "float", 0.0),
    _enum(2, "engine", "ReLUParameter.Engine", "DEFAULT"),
)
MESSAGES["ReshapeParameter"] = _fields(
    _msg(1, "shape", "BlobShape"),
    _opt(2, "axis", "int32", 0),
    _opt(3, "num_axes", "int32", -1),
)
MESSAGES["ScaleParameter"] = _fields(
    _opt(1, "axis", "int32", 1),
    _opt(2, "num_axes", "int32", 1),
    _msg(3, "filler", "FillerParameter"),
    _opt(4, "bias_term", "bool", False),
    _msg(5, "bias_filler", "FillerParameter"),
)
MESSAGES["SigmoidParameter"] = _fields(_enum(1, "engine", "SigmoidParameter.Engine", "DEFAULT"))
MESSAGES["SliceParameter"] = _fields(
    _opt(3, "axis", "int32", 1),
    _rep(2, "slice_point", "uint32"),
    _opt(1, "slice_dim", "uint32", 1),
)
MESSAGES["SoftmaxParameter"] = _fields(
    _enum(1, "engine", "SoftmaxParameter.Engine", "DEFAULT"),
    _opt(2, "axis", "int32", 1),
)
MESSAGES["TanHParameter"] = _fields(_enum(1, "engine", "TanHParameter.Engine", "DEFAULT"))
MESSAGES["MVNParameter"] = _fields(
    _opt(1, "normalize_variance", "bool", True),
    _opt(2, "across_channels", "bool", False),
    _opt(3, "eps", "float", 1e-9),
)
MESSAGES["ReductionParameter"] = _fields(
    _enum(1, "operation", "ReductionParameter.ReductionOp", "SUM"),
    _opt(2, "axis", "int32", 0),
    _opt(3, "coeff", "float", 1.0),
)
MESSAGES["TileParameter"] = _fields(
    _opt(1, "axis", "int32", 1),
    _opt(2, "tiles", "int32"),
)
MESSAGES["SPPParameter"] = _fields(
    _opt(1, "pyramid_height", "uint32"),
    _enum(2, "pool", "SPPParameter.PoolMethod", "MAX"),
    _enum(6, "engine", "SPPParameter.Engine", "DEFAULT"),
)
MESSAGES["ThresholdParameter"] = _fields(_opt(1, "threshold", "float", 0.0))
MESSAGES["EmbedParameter"] = _fields(
    _opt(1, "num_output", "uint32"),
    _opt(2, "input_dim", "uint32"),
    _opt(3, "bias_term", "bool", True),
    _msg(4, "weight_filler", "FillerParameter"),
    _msg(5, "bias_filler", "FillerParameter"),
)
# BVLC master (after 1.0): Clip and Swish; the brocolli fork pycaffe is built from lacks both
MESSAGES["ClipParameter"] = _fields(
    _opt(1, "min", "float"),
    _opt(2, "max", "float"),
)
MESSAGES["SwishParameter"] = _fields(_opt(1, "beta", "float", 1.0))

# Per-layer parameter messages:
# (number in LayerParameter, number in V1LayerParameter or None, field name, message type)
LAYER_PARAMS: list[tuple[int, int | None, str, str]] = [
    (100, 36, "transform_param", "TransformationParameter"),
    (101, 42, "loss_param", "LossParameter"),
    (102, 27, "accuracy_param", "AccuracyParameter"),
    (103, 23, "argmax_param", "ArgMaxParameter"),
    (139, None, "batch_norm_param", "BatchNormParameter"),
    (141, None, "bias_param", "BiasParameter"),
    (104, 9, "concat_param", "ConcatParameter"),
    (106, 10, "convolution_param", "ConvolutionParameter"),
    (144, None, "crop_param", "CropParameter"),
    (107, 11, "data_param", "DataParameter"),
    (108, 12, "dropout_param", "DropoutParameter"),
    (110, 24, "eltwise_param", "EltwiseParameter"),
    (140, None, "elu_param", "ELUParameter"),
    (111, 41, "exp_param", "ExpParameter"),
    (135, None, "flatten_param", "FlattenParameter"),
    (115, 15, "image_data_param", "ImageDataParameter"),
    (117, 17, "inner_product_param", "InnerProductParameter"),
    (143, None, "input_param", "InputParameter"),
    (134, None, "log_param", "LogParameter"),
    (118, 18, "lrn_param", "LRNParameter"),
    (119, 22, "memory_data_param", "MemoryDataParameter"),
    (121, 19, "pooling_param", "PoolingParameter"),
    (122, 21, "power_param", "PowerParameter"),
    (131, None, "prelu_param", "PReLUParameter"),
    (123, 30, "relu_param", "ReLUParameter"),
    (133, None, "reshape_param", "ReshapeParameter"),
    (142, None, "scale_param", "ScaleParameter"),
    (124, 38, "sigmoid_param", "SigmoidParameter"),
    (125, 39, "softmax_param", "SoftmaxParameter"),
    (126, 31, "slice_param", "SliceParameter"),
    (127, 37, "tanh_param", "TanHParameter"),
    (120, 34, "mvn_param", "MVNParameter"),
    (136, None, "reduction_param", "ReductionParameter"),
    (138, None, "tile_param", "TileParameter"),
    (132, None, "spp_param", "SPPParameter"),
    (128, 25, "threshold_param", "ThresholdParameter"),
    (137, None, "embed_param", "EmbedParameter"),
    (148, None, "clip_param", "ClipParameter"),
    (147, None, "swish_param", "SwishParameter"),
]

MESSAGES["LayerParameter"] = _fields(
    _opt(1, "name", "string"),
    _opt(2, "type", "string"),
    _rep(3, "bottom", "string"),
    _rep(4, "top", "string"),
    _enum(10, "phase", "Phase", "TRAIN"),
    _rep(5, "loss_weight", "float"),
    _rmsg(6, "param", "ParamSpec"),
    _rmsg(7, "blobs", "BlobProto"),
    _rep(11, "propagate_down", "bool"),
    _rmsg(8, "include", "NetStateRule"),
    _rmsg(9, "exclude", "NetStateRule"),
    *(_msg(num, name, msg) for num, _v1, name, msg in LAYER_PARAMS),
)
MESSAGES["V1LayerParameter"] = _fields(
    _rep(2, "bottom", "string"),
    _rep(3, "top", "string"),
    _opt(4, "name", "string"),
    _rmsg(32, "include", "NetStateRule"),
    _rmsg(33, "exclude", "NetStateRule"),
    _enum(5, "type", "V1LayerParameter.LayerType", "NONE"),
    _rmsg(6, "blobs", "BlobProto"),
    _rep(1001, "param", "string"),
    Field(1002, "blob_share_mode", "enum", True, False, None, "V1LayerParameter.DimCheckMode"),
    _rep(7, "blobs_lr", "float"),
    _rep(8, "weight_decay", "float"),
    _rep(35, "loss_weight", "float"),
    *(_msg(v1, name, msg) for _num, v1, name, msg in LAYER_PARAMS if v1 is not None),
)

# Text-format spellings from Caffe forks mapped onto BVLC fields:
# (message, alias field) -> (BVLC field, {alias value: BVLC value}).
TEXT_ALIASES: dict[tuple[str, str], tuple[str, dict[Any, Any]]] = {
    ("PoolingParameter", "ceil_mode"): ("round_mode", {True: "CEIL", False: "FLOOR"}),
}

# Messages whose unknown text fields are skipped with a warning instead of an error:
# the layer messages, where an unknown `*_param` belongs to a layer type we do not
# model (that layer is then reported as unsupported by type, not as a syntax error).
LENIENT_MESSAGES = frozenset({"LayerParameter", "V1LayerParameter", "NetParameter"})

# number -> Field lookup per message, built once.
BY_NUMBER: dict[str, dict[int, Field]] = {
    name: {f.number: f for f in fields.values()} for name, fields in MESSAGES.items()
}


def enum_name(enum: str, number: int) -> str | int:
    """The value name of an enum number, or the number itself when the schema does not know it."""
    for name, value in ENUMS[enum].items():
        if value == number:
            return name
    return number


class Message:
    """A decoded protobuf message: attribute access returns the field's value or its proto2 default.

    A repeated field reads as a list (blob data as a numpy array); an absent
    sub-message reads as a default Message; enums read as their value names.
    ``has(name)`` tells whether a field was given.
    """

    __slots__ = ("_type", "_values")

    def __init__(self, type_name: str, **values: Any) -> None:
        if type_name not in MESSAGES:
            raise KeyError(f"unknown message type {type_name!r}")
        object.__setattr__(self, "_type", type_name)
        object.__setattr__(self, "_values", {})
        for name, value in values.items():
            setattr(self, name, value)

    @property
    def type_name(self) -> str:
        """The message's schema name, e.g. 'LayerParameter'."""
        return self._type

    def _field(self, name: str) -> Field:
        try:
            return MESSAGES[self._type][name]
        except KeyError:
            raise AttributeError(f"{self._type} has no field {name!r}") from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        field = self._field(name)
        values = self._values
        if name in values:
            return values[name]
        if field.repeated:
            if field.array:
                import numpy as np

                return np.empty(0, np.float64 if field.type == "double" else np.float32)
            # stored so that `msg.top.append(...)` edits the message, as protobuf's containers do
            values[name] = []
            return values[name]
        if field.type == "message":
            return Message(field.named_type)
        return field.default

    def __setattr__(self, name: str, value: Any) -> None:
        self._field(name)
        self._values[name] = value

    def has(self, name: str) -> bool:
        """Whether the field was given (a repeated field: whether it has any element)."""
        self._field(name)
        value = self._values.get(name)
        if value is None:
            return False
        if self._field(name).repeated:
            return len(value) > 0
        return True

    def clear(self, name: str) -> None:
        """Remove a field so that it reads as its default again."""
        self._field(name)
        self._values.pop(name, None)

    def add(self, name: str) -> "Message":
        """Append a new sub-message to a repeated message field and return it."""
        field = self._field(name)
        if field.type != "message" or not field.repeated:
            raise TypeError(f"{self._type}.{name} is not a repeated message field")
        child = Message(field.named_type)
        self._values.setdefault(name, []).append(child)
        return child

    def mutable(self, name: str) -> "Message":
        """The sub-message of an optional message field, created (and set) if absent."""
        field = self._field(name)
        if field.type != "message" or field.repeated:
            raise TypeError(f"{self._type}.{name} is not an optional message field")
        if name not in self._values:
            self._values[name] = Message(field.named_type)
        return self._values[name]

    def items(self) -> list[tuple[Field, Any]]:
        """The given fields with their values, in field-number order."""
        fields = MESSAGES[self._type]
        given = [(fields[n], v) for n, v in self._values.items()]
        return sorted(given, key=lambda fv: fv[0].number)

    def copy(self) -> "Message":
        """A deep copy (numpy arrays are shared: they are never written in place)."""
        out = Message(self._type)
        for field, value in self.items():
            if field.type == "message":
                value = [v.copy() for v in value] if field.repeated else value.copy()
            elif field.repeated and not field.array:
                value = list(value)
            out._values[field.name] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the given fields (sub-messages as dicts, arrays as lists)."""
        out: dict[str, Any] = {}
        for field, value in self.items():
            if field.type == "message":
                out[field.name] = [v.to_dict() for v in value] if field.repeated else value.to_dict()
            elif field.array:
                out[field.name] = value.tolist()
            else:
                out[field.name] = list(value) if field.repeated else value
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self._type == other._type and _plain(self) == _plain(other)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        inner = ", ".join(f"{f.name}={_short(v)}" for f, v in self.items())
        return f"{self._type}({inner})"


def _plain(msg: Message) -> dict[str, Any]:
    return msg.to_dict()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
