"""Reading Caffe models without pycaffe: schema-driven text and wire parsing, shapes, weights, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from savedeep.caffe.schema import Message
from savedeep.caffe.caffemodel import decode_message, encode_message, make_blob, read_caffemodel
from savedeep.errors import ModelError, UnsupportedLayerError
from savedeep.caffe.model import load_model, load_net, pooled_size, supported_layer_types
from savedeep.caffe.prototxt import format_text, parse_text
from savedeep.caffe.synthetic import random_weights, write_caffemodel

MODELS = ("caffenet", "alexnet", "googlenet")

# A net touching every supported layer type, with geometries that hit Caffe's edge rules.
# Expected shapes were worked out by hand from Caffe's arithmetic (and agree with pycaffe).
COVER_NET = """
name: "cover"  # every layer type savedeep models
layer { name: "data" type: "Input" top: "data" input_param { shape: { dim: 2 dim: 3 dim: 17 dim: 17 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer { name: "dil" type: "Convolution" bottom: "conv1" top: "dil"
        convolution_param { num_output: 4 kernel_size: 3 dilation: 2 group: 2 bias_term: false } }
layer { name: "pool_ceil" type: "Pooling" bottom: "conv1" top: "pool_ceil"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "pool_clip" type: "Pooling" bottom: "conv1" top: "pool_clip"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "pool_global" type: "Pooling" bottom: "conv1" top: "pool_global"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "deconv" type: "Deconvolution" bottom: "pool_ceil" top: "deconv"
        convolution_param { num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2 } }
layer { name: "bn" type: "BatchNorm" bottom: "deconv" top: "deconv" batch_norm_param { use_global_stats: true } }
layer { name: "scale" type: "Scale" bottom: "deconv" top: "deconv" scale_param { bias_term: true } }
layer { name: "lrn" type: "LRN" bottom: "deconv" top: "lrn" lrn_param { local_size: 3 alpha: 1e-4 beta: 0.75 } }
layer { name: "prelu" type: "PReLU" bottom: "lrn" top: "prelu" }
layer { name: "prelu_shared" type: "PReLU" bottom: "lrn" top: "prelu_shared" prelu_param { channel_shared: true } }
layer { name: "elu" type: "ELU" bottom: "deconv" top: "elu" elu_param { alpha: 0.5 } }
layer { name: "drop" type: "Dropout" bottom: "elu" top: "elu" dropout_param { dropout_ratio: 0.3 } }
layer { name: "sig" type: "Sigmoid" bottom: "deconv" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "deconv" top: "tanh" }
layer { name: "abs" type: "AbsVal" bottom: "deconv" top: "abs" }
layer { name: "pow" type: "Power" bottom: "abs" top: "pow" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "exp" type: "Exp" bottom: "deconv" top: "exp" }
layer { name: "log" type: "Log" bottom: "pow" top: "log" }
layer { name: "bnll" type: "BNLL" bottom: "deconv" top: "bnll" }
layer { name: "concat" type: "Concat" bottom: "deconv" bottom: "elu" top: "concat" }
layer { name: "slice" type: "Slice" bottom: "concat" top: "s1" top: "s2" top: "s3"
        slice_param { axis: 1 slice_point: 2 slice_point: 5 } }
layer { name: "split" type: "Split" bottom: "s1" top: "sa" top: "sb" }
layer { name: "prod" type: "Eltwise" bottom: "sa" bottom: "sb" top: "prod" eltwise_param { operation: PROD } }
layer { name: "diff" type: "Eltwise" bottom: "sa" bottom: "sb" top: "diff" eltwise_param { coeff: 1 coeff: -1 } }
layer { name: "ip_small" type: "InnerProduct" bottom: "pool_global" top: "ip_small"
        inner_product_param { num_output: 3 } }
layer { name: "scale2" type: "Scale" bottom: "s2" bottom: "ip_small" top: "scale2" scale_param { axis: 0 } }
layer { name: "bias" type: "Bias" bottom: "s3" top: "bias" }
layer { name: "flat" type: "Flatten" bottom: "s3" top: "flat" flatten_param { axis: 1 end_axis: 2 } }
layer { name: "reshape" type: "Reshape" bottom: "s3" top: "reshape" reshape_param { shape { dim: 0 dim: -1 dim: 4 } } }
layer { name: "reshape2" type: "Reshape" bottom: "s3" top: "reshape2"
        reshape_param { axis: 1 num_axes: 1 shape { dim: 7 dim: 1 } } }
layer { name: "crop" type: "Crop" bottom: "deconv" bottom: "pool_clip" top: "crop" crop_param { axis: 2 offset: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "s3" top: "ip" inner_product_param { num_output: 10 } }
layer { name: "ip_axis" type: "InnerProduct" bottom: "reshape" top: "ip_axis"
        inner_product_param { num_output: 5 axis: 2 transpose: true } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
layer { name: "argmax" type: "ArgMax" bottom: "prob" top: "argmax" argmax_param { top_k: 3 out_max_val: true } }
layer { name: "argmax_axis" type: "ArgMax" bottom: "prob" top: "argmax_axis" argmax_param { top_k: 2 axis: 1 } }
"""

COVER_SHAPES = {
    "data": (2, 3, 17, 17),
    "conv1": (2, 8, 9, 9),
    "dil": (2, 4, 5, 5),
    "pool_ceil": (2, 8, 4, 4),
    "pool_clip": (2, 8, 5, 5),
    "pool_global": (2, 8, 1, 1),
    "deconv": (2, 6, 8, 8),
    "lrn": (2, 6, 8, 8),
    "prelu": (2, 6, 8, 8),
    "prelu_shared": (2, 6, 8, 8),
    "elu": (2, 6, 8, 8),
    "sig": (2, 6, 8, 8),
    "tanh": (2, 6, 8, 8),
    "abs": (2, 6, 8, 8),
    "pow": (2, 6, 8, 8),
    "exp": (2, 6, 8, 8),
    "log": (2, 6, 8, 8),
    "bnll": (2, 6, 8, 8),
    "concat": (2, 12, 8, 8),
    "s1": (2, 2, 8, 8),
    "s2": (2, 3, 8, 8),
    "s3": (2, 7, 8, 8),
    "sa": (2, 2, 8, 8),
    "sb": (2, 2, 8, 8),
    "prod": (2, 2, 8, 8),
    "diff": (2, 2, 8, 8),
    "ip_small": (2, 3),
    "scale2": (2, 3, 8, 8),
    "bias": (2, 7, 8, 8),
    "flat": (2, 56, 8),
    "reshape": (2, 112, 4),
    "reshape2": (2, 7, 1, 8, 8),
    "crop": (2, 6, 5, 5),
    "ip": (2, 10),
    "ip_axis": (2, 112, 5),
    "prob": (2, 10),
    "argmax": (2, 2, 3),
    "argmax_axis": (2, 2),
}

COVER_PARAMS = {
    "conv1": [(8, 3, 3, 3), (8,)],
    "dil": [(4, 4, 3, 3)],
    "deconv": [(8, 3, 4, 4), (6,)],
    "prelu": [(6,)],
    "prelu_shared": [()],
    "bn": [(6,), (6,), (1,)],
    "scale": [(6,), (6,)],
    "ip_small": [(3, 8), (3,)],
    "bias": [(7,)],
    "ip": [(10, 448), (10,)],
    "ip_axis": [(4, 5), (5,)],
}

SMALL_BODY = """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
SMALL_SHAPES = {"data": (1, 3, 10, 10), "conv": (1, 4, 8, 8), "pool": (1, 4, 4, 4), "fc": (1, 3), "prob": (1, 3)}

V1_NET = """
name: "v1net"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 10 input_dim: 10
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
         convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool" top: "fc" inner_product_param { num_output: 3 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "fc" bottom: "label" top: "loss" include { phase: TRAIN } }
"""


def write(tmp_path: Path, text: str, name: str = "deploy.prototxt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def input_layer(shape: tuple[int, ...]) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'name: "small"\nlayer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'


@pytest.fixture()
def small_proto(tmp_path: Path) -> Path:
    return write(tmp_path, input_layer((1, 3, 10, 10)) + SMALL_BODY)


# -- text format ---------------------------------------------------------------


def test_message_defaults_and_presence() -> None:
    msg = parse_text('layer { name: "p" type: "Pooling" pooling_param { kernel_size: 3 } }')
    layer = msg.layer[0]
    p = layer.pooling_param
    assert p.kernel_size == 3 and p.has("kernel_size")
    assert p.pool == "MAX" and not p.has("pool")  # enum default by name
    assert p.stride == 1 and p.round_mode == "CEIL"
    assert layer.convolution_param.bias_term is True  # absent sub-message reads as defaults
    assert not layer.has("convolution_param")
    assert layer.bottom == [] and layer.lrn_param.alpha == 1.0 and layer.lrn_param.beta == 0.75
    with pytest.raises(AttributeError):
        _ = layer.no_such_field


def test_text_format_syntax_variants() -> None:
    text = r"""
    # comment line
    name: 'quote\'s "net"\n\x41\101' # trailing comment
    layer <
      name: "a" "b"   # adjacent strings join
      type: "Convolution"
      top: "t1" top: "t2"; bottom: ["x", "y"]
      convolution_param: { num_output: 0x10 kernel_size: [3, 5] weight_filler { std: 1e-4 } bias_filler { value: .5 } }
      lrn_param { alpha: 1. beta: -2.5e+1 norm_region: WITHIN_CHANNEL k: inf }
      relu_param { negative_slope: 1f engine: 2 }
      batch_norm_param { use_global_stats: True }
      include { phase: TEST }
    >
    """
    msg = parse_text(text)
    assert msg.name == 'quote\'s "net"\nAA'
    layer = msg.layer[0]
    assert layer.name == "ab" and layer.top == ["t1", "t2"] and layer.bottom == ["x", "y"]
    cp = layer.convolution_param
    assert cp.num_output == 16 and cp.kernel_size == [3, 5]
    assert cp.weight_filler.std == pytest.approx(1e-4) and cp.bias_filler.value == 0.5
    assert layer.lrn_param.alpha == 1.0 and layer.lrn_param.beta == -25.0
    assert layer.lrn_param.norm_region == "WITHIN_CHANNEL" and layer.lrn_param.k == float("inf")
    assert layer.relu_param.negative_slope == 1.0 and layer.relu_param.engine == "CUDNN"
    assert layer.batch_norm_param.use_global_stats is True
    assert layer.include[0].phase == "TEST"
    # writing it back and re-reading gives the same message
    assert parse_text(format_text(msg)) == msg


@pytest.mark.parametrize(
    "text, where, expected",
    [
        ('name: "x"\nlayer {\n  name: "a"\n  type "ReLU"\n}\n', ":4:8:", "':' after 'type'"),
        ('layer {\n  name: "a"\n', ":3:1:", "'}'"),
        ("layer { convolution_param { num_output: -3 } }", ":1:41:", "an integer in [0,"),
        ("layer { pooling_param { pool: MAXIMUM } }", ":1:31:", "one of MAX, AVE, STOCHASTIC"),
        ("layer { convolution_param { kernal_size: 3 } }", ":1:29:", "unknown field 'kernal_size'"),
        ('layer { name: "a\n" }', ":1:15:", "unexpected character"),
        ("layer { lrn_param { alpha: x1 } }", ":1:28:", "a number for 'alpha'"),
    ],
)
def test_parse_errors_name_file_line_column(tmp_path: Path, text: str, where: str, expected: str) -> None:
    path = write(tmp_path, text, "bad.prototxt")
    with pytest.raises(ModelError) as info:
        load_net(path)
    message = str(info.value)
    assert f"{path}{where}" in message
    assert expected in message


def test_unknown_layer_param_is_skipped_and_type_reported(tmp_path: Path, caplog) -> None:
    # a fork's layer (SSD's Normalize), outside standard Caffe
    body = 'layer { name: "nrm" type: "Normalize" bottom: "data" top: "nrm" norm_param { across_spatial: false } }\n'
    path = write(tmp_path, input_layer((1, 3, 4, 4)) + body)
    with caplog.at_level(logging.WARNING), pytest.raises(UnsupportedLayerError) as info:
        load_net(path)
    message = str(info.value)
    assert "'nrm'" in message and "'Normalize'" in message and "Convolution" in message and str(path) in message
    assert "norm_param" in caplog.text
    assert set(supported_layer_types()) >= {"Input", "Deconvolution", "Crop", "ArgMax", "BatchNorm", "Scale"}


# -- nets and shapes -----------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_real_prototxts_parse_with_known_shapes(testdata: Path, name: str) -> None:
    net = load_net(testdata / "models" / name / "deploy.prototxt")
    shapes = net.blob_shapes(1)
    assert net.input_name == "data" and net.input_shape[1:] == (3, 224, 224) or net.input_shape[1:] == (3, 227, 227)
    assert list(shapes) == net.blobs and shapes["prob"] == (1, 1000)
    assert all(not b.endswith("_split") and "_split_" not in b for b in net.blobs)
    if name in ("caffenet", "alexnet"):
        assert shapes["conv1"] == (1, 96, 55, 55) and shapes["pool5"] == (1, 256, 6, 6) and shapes["fc6"] == (1, 4096)
        assert net.param_shapes()["conv2"] == [(256, 48, 5, 5), (256,)]
        assert net.param_shapes()["fc6"] == [(4096, 9216), (4096,)]
        assert "relu1" in net.inplace_layers and "drop6" in net.inplace_layers
    else:
        assert shapes["inception_3a/output"] == (1, 256, 28, 28)
        assert shapes["inception_5b/output"] == (1, 1024, 7, 7) and shapes["pool5/7x7_s1"] == (1, 1024, 1, 1)
        assert len(net.blobs) == 85
    assert net.blob_shapes(7)["prob"] == (7, 1000)


def test_every_layer_type_shape_and_params(tmp_path: Path) -> None:
    net = load_net(write(tmp_path, COVER_NET))
    assert net.blob_shapes(2) == COVER_SHAPES
    assert net.blobs == list(COVER_SHAPES)
    assert net.param_shapes(2) == COVER_PARAMS
    assert net.inplace_layers == ["relu1", "bn", "scale", "drop"]
    assert net.blob_shapes(5)["crop"] == (5, 6, 5, 5)
    assert net.layer("deconv").param.convolution_param.group == 2
    assert net.layer("split").tops == ["sa", "sb"]  # an explicit Split's blobs are visible


@pytest.mark.parametrize(
    "size, kernel, stride, pad, expected",
    [
        (9, 3, 2, 0, 4),
        (9, 2, 2, 1, 5),
        (13, 3, 2, 0, 6),
        (14, 3, 2, 1, 8),
        (5, 2, 2, 1, 3),
        (7, 7, 1, 0, 1),
        (5, 3, 3, 1, 2),
    ],
)
def test_pooled_size_ceil_and_clip(size: int, kernel: int, stride: int, pad: int, expected: int) -> None:
    assert pooled_size(size, kernel, stride, pad) == expected


def test_three_input_styles_and_v1_agree(tmp_path: Path) -> None:
    head = 'name: "small"\ninput: "data"\n'
    styles = {
        "layer": input_layer((1, 3, 10, 10)),
        "input_dim": head + "input_dim: 1\ninput_dim: 3\ninput_dim: 10\ninput_dim: 10\n",
        "input_shape": head + "input_shape { dim: 1 dim: 3 dim: 10 dim: 10 }\n",
    }
    for style, text in styles.items():
        net = load_net(write(tmp_path, text + SMALL_BODY, f"{style}.prototxt"))
        assert net.blob_shapes(1) == SMALL_SHAPES, style
        assert net.input_name == "data" and net.input_shape == (1, 3, 10, 10)
        assert net.layers[0].type == "Input"
    v1 = load_net(write(tmp_path, V1_NET, "v1.prototxt"))
    assert [(ly.name, ly.type) for ly in v1.layers] == [
        ("input", "Input"),
        ("conv", "Convolution"),
        ("relu", "ReLU"),
        ("pool", "Pooling"),
        ("fc", "InnerProduct"),
        ("prob", "Softmax"),
    ]  # the TRAIN-only loss is gone
    assert v1.blob_shapes(1) == SMALL_SHAPES
    conv = v1.layer("conv").param
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1.0, 1.0), (2.0, 0.0)]
    assert conv.convolution_param.num_output == 4 and v1.layer("pool").param.pooling_param.pool == "MAX"


def test_phase_rules_keep_only_test_layers(tmp_path: Path, caplog) -> None:
    text = (
        'name: "tv"\n'
        + """
layer { name: "train_data" type: "Data" top: "data" top: "label" include { phase: TRAIN } data_param { source: "x" } }
layer { name: "data" type: "Input" top: "data" top: "label" include { phase: TEST }
        input_param { shape { dim: 1 dim: 3 dim: 10 dim: 10 } shape { dim: 1 } } }
"""
        + SMALL_BODY
        + """
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "train_only" type: "ReLU" bottom: "fc" top: "train_only" exclude { phase: TEST } }
layer { name: "staged" type: "ReLU" bottom: "fc" top: "staged" include { stage: "deploy-extra" } }
"""
    )
    with caplog.at_level(logging.WARNING):
        net = load_net(write(tmp_path, text))
    assert [ly.name for ly in net.layers] == ["data", "conv", "relu", "pool", "fc", "prob"]
    assert net.blobs == ["data", "label", "conv", "pool", "fc", "prob"]
    assert "'acc'" in caplog.text and "'loss'" in caplog.text


def test_data_layer_in_test_phase_is_rejected(tmp_path: Path) -> None:
    text = 'layer { name: "d" type: "ImageData" top: "data" top: "label" image_data_param { source: "list.txt" } }\n'
    with pytest.raises(UnsupportedLayerError, match="Input layer"):
        load_net(write(tmp_path, text + SMALL_BODY))
    # a MemoryData layer states its shape, so it becomes the input
    mem = (
        'layer { name: "d" type: "MemoryData" top: "data" top: "label" '
        "memory_data_param { batch_size: 1 channels: 3 height: 10 width: 10 } }\n"
    )
    net = load_net(write(tmp_path, mem + SMALL_BODY))
    assert net.blob_shapes(1) == SMALL_SHAPES


def test_shape_errors_name_the_layer(tmp_path: Path) -> None:
    body = (
        'layer { name: "big" type: "Convolution" bottom: "data" top: "big" '
        "convolution_param { num_output: 2 kernel_size: 9 } }\n"
    )
    with pytest.raises(ModelError, match=r"layer 'big' \(Convolution\).*empty shape"):
        load_net(write(tmp_path, input_layer((1, 3, 5, 5)) + body))
    body = 'layer { name: "r" type: "ReLU" bottom: "nope" top: "r" }\n'
    with pytest.raises(ModelError, match=r"layer 'r' \(ReLU\) reads blob\(s\) \['nope'\]"):
        load_net(write(tmp_path, input_layer((1, 3, 5, 5)) + body))
    with pytest.raises(ModelError, match="declares no input"):
        load_net(write(tmp_path, 'name: "empty"\n'))


# -- caffemodel ----------------------------------------------------------------


def test_real_open_nsfw_weights(nsfw_dir: Path) -> None:
    model = load_model(nsfw_dir)
    net = model.net
    assert model.weights == nsfw_dir / "weights.caffemodel" and model.mean_path == nsfw_dir / "mean.npy"
    assert net.name == "ResNet_50_1by2_nsfw" and net.input_shape == (1, 3, 224, 224)
    assert len(net.inplace_layers) == 155
    shapes = {ly.name: [b.shape for b in ly.blobs] for ly in net.layers if ly.blobs}
    assert shapes == net.param_shapes()
    assert shapes["conv_1"] == [(64, 3, 7, 7), (64,)] and shapes["bn_1"] == [(64,), (64,), (1,)]
    assert shapes["fc_nsfw"] == [(2, 1024), (2,)]
    for layer in net.layers:
        for blob in layer.blobs:
            assert blob.dtype == np.float32 and blob.flags.writeable and np.isfinite(blob).all()
    assert net.blob_shapes(3)["prob"] == (3, 2)


def test_writer_round_trip_and_random_weight_magnitudes(tmp_path: Path) -> None:
    proto = write(tmp_path, COVER_NET)
    net = load_net(proto)
    weights = random_weights(net, seed=3)
    assert {k: [w.shape for w in v] for k, v in weights.items()} == COVER_PARAMS
    assert (weights["bn"][1] > 0).all() and weights["bn"][2].tolist() == [1.0]
    assert weights["conv1"][0].std() == pytest.approx(np.sqrt(2 / 27), rel=0.3)
    path = tmp_path / "w.caffemodel"
    write_caffemodel(path, net, weights)
    loaded = load_net(proto, path)
    for layer in loaded.layers:
        expected = weights.get(layer.name, [])
        assert len(layer.blobs) == len(expected)
        for got, want in zip(layer.blobs, expected):
            np.testing.assert_array_equal(got, want)
    # same weights again from the random seed
    np.testing.assert_array_equal(random_weights(net, seed=3)["ip"][0], weights["ip"][0])


def test_v1_caffemodel_with_legacy_and_double_blobs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    fc = rng.normal(size=(3, 64)).astype(np.float32)
    fcb = rng.normal(size=3)
    net_param = Message("NetParameter", name="v1net")
    conv = net_param.add("layers")
    conv.name, conv.type = "conv", "CONVOLUTION"
    conv.blobs = [
        Message("BlobProto", num=4, channels=3, height=3, width=3, data=w.ravel()),
        Message("BlobProto", num=1, channels=1, height=1, width=4, data=b),
    ]
    ip = net_param.add("layers")
    ip.name, ip.type = "fc", "INNER_PRODUCT"
    ip.blobs = [
        Message("BlobProto", num=1, channels=1, height=3, width=64, data=fc.ravel()),
        Message("BlobProto", shape=Message("BlobShape", dim=[3]), double_data=fcb),
    ]
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(encode_message(net_param))
    net = load_net(write(tmp_path, V1_NET, "v1.prototxt"), path)
    np.testing.assert_array_equal(net.layer("conv").blobs[0], w)
    np.testing.assert_array_equal(net.layer("conv").blobs[1], b)  # legacy (1,1,1,4) -> (4,)
    np.testing.assert_array_equal(net.layer("fc").blobs[0], fc)
    np.testing.assert_allclose(net.layer("fc").blobs[1], fcb.astype(np.float32))


def test_wire_decoder_skips_unknown_fields() -> None:
    layer = Message("LayerParameter", name="c", type="Convolution", top=["c"])
    layer.convolution_param = Message("ConvolutionParameter", num_output=5, pad=[1], axis=-1)
    layer.blobs = [make_blob(np.arange(6, dtype=np.float32).reshape(2, 3))]
    net_param = Message("NetParameter", name="n", layer=[layer])
    data = encode_message(net_param)
    # unknown fields of every wire type: varint 900, fixed64 901, bytes 902, group 903, fixed32 904
    junk = (
        bytes([0xA0, 0x38, 0x96, 0x01])
        + bytes([0xA9, 0x38])
        + b"\x00" * 8
        + bytes([0xB2, 0x38, 0x03])
        + b"abc"
        + bytes([0xBB, 0x38, 0x08, 0x01, 0xBC, 0x38])
        + bytes([0xC5, 0x38])
        + b"\x00" * 4
    )
    decoded = decode_message(junk + data + junk)
    assert decoded == net_param
    assert decoded.layer[0].convolution_param.axis == -1  # negative int32 survives the 10-byte varint
    np.testing.assert_array_equal(decoded.layer[0].blobs[0].data, np.arange(6, dtype=np.float32))


def test_weights_mismatch_names_both_files(tmp_path: Path, small_proto: Path) -> None:
    net = load_net(small_proto)
    weights = random_weights(net, 0)
    bad = dict(weights, conv=[np.zeros((4, 3, 5, 5), np.float32), weights["conv"][1]])
    path = tmp_path / "bad.caffemodel"
    write_caffemodel(path, net, bad)
    with pytest.raises(ModelError) as info:
        load_net(small_proto, path)
    message = str(info.value)
    assert str(path) in message and str(small_proto) in message and "'conv'" in message
    assert "(4, 3, 5, 5)" in message and "(4, 3, 3, 3)" in message
    write_caffemodel(path, net, dict(weights, fc=weights["fc"][:1]))
    with pytest.raises(ModelError, match=r"'fc' \(InnerProduct\) has 1 blob\(s\) but .* expects 2"):
        load_net(small_proto, path)
    write_caffemodel(path, net, {"conv": weights["conv"]})
    with pytest.raises(ModelError, match="no weights for layer 'fc'"):
        load_net(small_proto, path)
    path.write_bytes(b"\x0a\xff\xff")
    with pytest.raises(ModelError, match="not a valid binary caffemodel"):
        read_caffemodel(path)


def test_missing_files(tmp_path: Path, small_proto: Path) -> None:
    with pytest.raises(ModelError, match="prototxt not found"):
        load_net(tmp_path / "nope.prototxt")
    with pytest.raises(ModelError, match="caffemodel not found"):
        load_net(small_proto, tmp_path / "nope.caffemodel")
    with pytest.raises(ModelError, match="model directory not found"):
        load_model(tmp_path / "nodir")
    with pytest.raises(ModelError) as info:
        load_model(tmp_path)  # has deploy.prototxt only
    message = str(info.value)
    assert str(tmp_path / "mean.npy") in message and str(tmp_path / "weights.caffemodel") in message
    assert "deploy.prototxt" in message
    np.save(tmp_path / "mean.npy", np.zeros(3, np.float32))
    model = load_model(tmp_path, weights=False)
    assert model.net.blobs == list(SMALL_SHAPES)


def test_validate_blobs(tmp_path: Path, small_proto: Path, caplog) -> None:
    np.save(tmp_path / "mean.npy", np.zeros(3, np.float32))
    model = load_model(tmp_path, weights=False)
    with caplog.at_level(logging.WARNING):
        assert model.validate_blobs(["fc", "conv", "fc"]) == ["fc", "conv"]
    assert "'fc'" in caplog.text
    with pytest.raises(ModelError) as info:
        model.validate_blobs(["conv", "fc7", "prob"])
    message = str(info.value)
    assert "'fc7'" in message and "did you mean 'fc'" in message and "data, conv, pool, fc, prob" in message


# -- against pycaffe -------------------------------------------------------------


def test_cover_net_matches_pycaffe(pycaffe, tmp_path: Path) -> None:
    proto = write(tmp_path, COVER_NET)
    net = load_net(proto)
    path = tmp_path / "cover.caffemodel"
    weights = random_weights(net, seed=1)
    write_caffemodel(path, net, weights)
    cnet = pycaffe.Net(str(proto), str(path), pycaffe.TEST)
    visible = {k: tuple(v.data.shape) for k, v in cnet.blobs.items() if "_split_" not in k}
    assert visible == COVER_SHAPES
    assert {k: [tuple(b.data.shape) for b in v] for k, v in cnet.params.items()} == COVER_PARAMS
    for name, blobs in weights.items():
        for got, want in zip(cnet.params[name], blobs):
            np.testing.assert_array_equal(got.data, want)


def test_v1_net_and_writer_match_pycaffe(pycaffe, tmp_path: Path) -> None:
    proto = write(tmp_path, V1_NET)
    net = load_net(proto)
    path = tmp_path / "v1.caffemodel"
    write_caffemodel(path, net, random_weights(net, 2))
    cnet = pycaffe.Net(str(proto), str(path), pycaffe.TEST)
    assert {k: tuple(v.data.shape) for k, v in cnet.blobs.items()} == SMALL_SHAPES
    loaded = load_net(proto, path)
    for name in ("conv", "fc"):
        for got, want in zip(cnet.params[name], loaded.layer(name).blobs):
            np.testing.assert_array_equal(got.data, want)


def test_open_nsfw_weights_equal_pycaffe(pycaffe, nsfw_dir: Path) -> None:
    model = load_model(nsfw_dir)
    cnet = pycaffe.Net(str(model.prototxt), str(model.weights), pycaffe.TEST)
    ours = {ly.name: ly.blobs for ly in model.net.layers if ly.blobs}
    assert list(ours) == list(cnet.params)
    for name, blobs in cnet.params.items():
        assert [tuple(b.data.shape) for b in blobs] == [b.shape for b in ours[name]]
        for got, want in zip(ours[name], blobs):
            np.testing.assert_array_equal(got, want.data)


def test_inplace_after_other_readers_is_rejected_like_caffe(tmp_path: Path) -> None:
    body = """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "side" type: "Sigmoid" bottom: "conv" top: "side" }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
"""
    with pytest.raises(ModelError, match="in-place layer 'relu' .* after other layers already read it"):
        load_net(write(tmp_path, input_layer((1, 3, 4, 4)) + body))


def test_pooling_round_mode_and_fork_ceil_mode(tmp_path: Path) -> None:
    def pool_net(extra: str) -> Path:
        body = (
            f'layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" '
            f"pooling_param {{ pool: MAX kernel_size: 3 stride: 2 {extra} }} }}\n"
        )
        return write(tmp_path, input_layer((1, 3, 10, 10)) + body, f"pool{len(extra)}.prototxt")

    assert load_net(pool_net("")).blob_shapes()["pool"] == (1, 3, 5, 5)  # ceil((10-3)/2)+1
    assert load_net(pool_net("round_mode: FLOOR")).blob_shapes()["pool"] == (1, 3, 4, 4)
    floor = load_net(pool_net("ceil_mode: false"))  # a fork's spelling of the same thing
    assert floor.blob_shapes()["pool"] == (1, 3, 4, 4)
    assert floor.layer("pool").param.pooling_param.round_mode == "FLOOR"
