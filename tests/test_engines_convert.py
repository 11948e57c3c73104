"""`savedeep convert`: the ONNX graph (run by onnxruntime), the torch.export program and the generated module
(each loaded in a plain PyTorch interpreter where savedeep does not import) agree with pycaffe on real nets and on the layer cases
whose Caffe rules ONNX's defaults would break; layers ONNX cannot express exactly are refused by name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from savedeep.caffe.synthetic import random_weights, write_caffemodel
from savedeep.cli import main
from savedeep.engines.conversion import ONNX_OPSET, convert
from savedeep.errors import ConfigError, UnsupportedLayerError
from tests.nets import LAYER_CASES, channel_err, layer, make_caffemodel, photo_batch, rel_err, write_net
from tests.test_engines import IMAGENET, NET_CHANNEL_TOLERANCE, NET_TOLERANCE, real_net_dir
from tests.test_engines_layers import TOLERANCE as LAYER_TOLERANCE

torch.set_num_threads(1)

# Runs a .pt2 in a fresh interpreter (-I: no PYTHONPATH, no user site, no script directory) with
# savedeep's editable-install finder removed, after checking that savedeep does not import.
_PLAIN_TORCH = r"""
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
sys.path_importer_cache.clear()
try:
    import savedeep
except ImportError:
    pass
else:
    raise SystemExit(f"savedeep is importable here: {savedeep.__file__}")
import numpy as np, torch
torch.set_num_threads(1)
program = torch.export.load(sys.argv[1])
x = np.load(sys.argv[2])
with torch.no_grad():
    out = program.module()(torch.from_numpy(x))
assert isinstance(out, dict), type(out)
np.savez(sys.argv[3], **{f"b{i}": v.numpy() for i, v in enumerate(out.values())}, names=np.array(list(out)))
"""


def _run_isolated(script: str, model: Path, x: np.ndarray, tmp: Path) -> dict[str, np.ndarray]:
    """``script``'s outputs for `x` and the model file, from a Python process (``-I``) that cannot import savedeep."""
    np.save(tmp / "x.npy", x)
    r = subprocess.run(
        [sys.executable, "-I", "-c", script, str(model), str(tmp / "x.npy"), str(tmp / "y.npz")],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(tmp / "y.npz") as z:
        return {str(n): z[f"b{i}"] for i, n in enumerate(z["names"])}


def run_plain_torch(pt2: Path, x: np.ndarray, tmp: Path) -> dict[str, np.ndarray]:
    """The .pt2's outputs for `x`, computed by a Python process that cannot import savedeep."""
    return _run_isolated(_PLAIN_TORCH, pt2, x, tmp)


def run_onnx(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {inp.name: x})))


def _compare(name: str, got: dict, expected: dict, blobs: list[str], tol: float, channel_tol: float) -> str:
    assert list(got) == blobs
    errors = {b: rel_err(got[b], expected[b]) for b in blobs}
    per_channel = {b: channel_err(got[b], expected[b]) for b in blobs}
    worst, worst_channel = max(errors, key=errors.get), max(per_channel, key=per_channel.get)
    assert errors[worst] <= tol, (name, {b: e for b, e in errors.items() if e > tol})
    assert per_channel[worst_channel] <= channel_tol, (name, {b: e for b, e in per_channel.items() if e > channel_tol})
    return (
        f"{name}: {len(blobs)} blobs, max relative error {errors[worst]:.2e} ({worst!r}), "
        f"per channel {per_channel[worst_channel]:.2e} ({worst_channel!r})"
    )


# --- whole nets against pycaffe ----------------------------------------------------------


@pytest.mark.caffe
@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGENET + ["open_nsfw"])
def test_converted_nets_match_pycaffe(name, pycaffe, testdata, photos, tmp_path, request):
    from savedeep.engines import create_engine
    from savedeep.caffe.model import load_model

    directory, mean_bgr = real_net_dir(name, pycaffe, testdata, tmp_path, request)
    model = load_model(directory)
    blobs = [b for b in model.net.blobs if b != model.net.input_name]  # every blob the net computes
    onnx_path = convert(directory, "onnx", tmp_path / f"{name}.onnx", blobs)
    pt2 = convert(directory, "torch", tmp_path / f"{name}.pt2", blobs)
    py = convert(directory, "torch", tmp_path / f"{name}.py", blobs)

    # 3 images: not the batch of 2 that the dynamic-batch export traced
    x = photo_batch(photos, tuple(model.net.input_shape[1:]), mean_bgr, n=3)
    caffe_engine = create_engine("caffe", model, "cpu", batch_size=3, threads=1)
    try:
        expected = caffe_engine.forward(x, blobs)
    finally:
        caffe_engine.close()
    lines = [
        _compare(f"{name} onnxruntime", run_onnx(onnx_path, x), expected, blobs, NET_TOLERANCE, NET_CHANNEL_TOLERANCE),
        _compare(
            f"{name} plain torch .pt2",
            run_plain_torch(pt2, x, tmp_path),
            expected,
            blobs,
            NET_TOLERANCE,
            NET_CHANNEL_TOLERANCE,
        ),
        _compare(
            f"{name} plain torch module",
            run_plain_module(py, x, tmp_path),
            expected,
            blobs,
            NET_TOLERANCE,
            NET_CHANNEL_TOLERANCE,
        ),
    ]
    print("\n" + "\n".join(lines))


# --- the layer cases where ONNX's defaults differ from Caffe's rules ----------------------

ONNX_CASES = sorted(
    c
    for c in LAYER_CASES
    if c.startswith(
        ("pool", "lrn", "crop", "alias", "split", "slice", "concat", "reshape", "flatten", "deconv", "inplace")
    )
)
ONNX_CASES += [
    "scale_two_bottoms",
    "bias_two_bottoms",
    "batchnorm_batch_stats",
    "ip_axis2_nobias",
    "ip_transpose",
    "softmax_axis",
    "eltwise_sum",
    "eltwise_max",
    "prelu",
    "elu",
    "bnll",
    "power",
    "log_base",
    "exp_base",
]
# the layer types added for issue 29 (SPP's AVE levels need the clipped divisor spelled out, as AVE pooling)
ONNX_CASES += [
    "spp_max",
    "spp_ave",
    "spp_one_level",
    "mvn",
    "mvn_2d",
    "reduction_mean_coeff",
    "tile_then_conv",
    "threshold_value",
    "embed_threshold_nobias",
    "im2col_dilation_hw",
]


# Caffe nets whose parameters span the batch axis (a Scale/Bias with axis 0 and a second bottom)
BATCH_SPECIFIC = {"scale_two_bottoms", "bias_two_bottoms"}


@pytest.mark.caffe
@pytest.mark.slow
@pytest.mark.parametrize("case", ONNX_CASES)
def test_onnx_layer_case_matches_pycaffe(case, pycaffe, tmp_path):
    from savedeep.engines.caffe_engine import CaffeEngine
    from savedeep.caffe.model import load_net

    shape, body = LAYER_CASES[case]
    prototxt = write_net(tmp_path, case, body, shape)
    weights = make_caffemodel(pycaffe, prototxt, tmp_path / "weights.caffemodel", seed=7)
    np.save(tmp_path / "mean.npy", np.zeros(3, np.float32))
    net = load_net(prototxt, weights)
    blobs = [b for b in net.blobs if b != net.input_name]
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    engine = CaffeEngine(prototxt, weights, net, "cpu", batch_size=shape[0], threads=1)
    try:
        expected = engine.forward(x, blobs)
    finally:
        engine.close()
    batch = shape[0] if case in BATCH_SPECIFIC else "dynamic"
    got = run_onnx(convert(tmp_path, "onnx", tmp_path / "m.onnx", blobs, batch=batch), x)
    print("\n" + _compare(case, got, expected, blobs, LAYER_TOLERANCE, LAYER_TOLERANCE))


# --- the demo: open_nsfw over the demo photos ------------------------------------------------


@pytest.mark.slow
def test_onnx_open_nsfw_gives_the_demos_prob(nsfw_dir, photos, tmp_path):
    """onnxruntime on the converted model, fed the README's preprocessing recipe, gives a savedeep run's `prob`."""
    import cv2
    import onnx

    import savedeep

    images = tmp_path / "images"
    images.mkdir()
    demo_photos = [p for p in photos if p.parent.name != "images"]  # scikit-image's: the demo's photos
    for p in demo_photos:
        (images / p.name).symlink_to(p)
    root = Path(__file__).resolve().parents[1]
    savedeep.run(
        root / "configs" / "demo.yaml",
        model=nsfw_dir,
        images=images,
        output=tmp_path / "out" / "acts.pk",
        blobs=["prob"],
        producers=1,
        writers=1,
        cpu_consumers=1,
    )
    df = savedeep.load(tmp_path / "out" / "acts.pk")
    assert len(df) == len(demo_photos) >= 10

    path = convert(nsfw_dir, "onnx", tmp_path / "nsfw.onnx")  # default outputs: the net's output, prob
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    mean_bgr = np.array(json.loads(meta["savedeep.mean_bgr"]), np.float32)
    assert mean_bgr.tolist() == [104, 117, 123]
    _, _, h, w = json.loads(meta["savedeep.input"])["shape"]
    batch = []
    for name in df["image"]:
        bgr = cv2.imread(str(images / name), cv2.IMREAD_COLOR)  # 8-bit, channels already BGR
        bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR_EXACT)
        x = (bgr / 255.0).astype(np.float32) * np.float32(255) - mean_bgr
        batch.append(x.transpose(2, 0, 1))
    got = run_onnx(path, np.stack(batch))
    assert list(got) == ["prob"]
    expected = np.stack(df["prob"].to_numpy())
    print(f"\nopen_nsfw demo photos: max |prob difference| {np.abs(got['prob'] - expected).max():.2e}")
    np.testing.assert_allclose(got["prob"], expected, atol=1e-5, rtol=0)


# --- the file: metadata, batch, outputs, errors -----------------------------------------------

BODY = (
    layer("c", "Convolution", "data", "c", "convolution_param", num_output=4, kernel_size=3, pad=1)
    + layer("r", "ReLU", "c", "c")
    + layer("p", "Pooling", "c", "p", "pooling_param", pool="AVE", kernel_size=3, stride=2, pad=1)
    + layer("f", "InnerProduct", "p", "f", "inner_product_param", num_output=5)
)


@pytest.fixture
def small_model(tmp_path):
    """A model directory: conv -> ReLU in place -> AVE pooling (padded, border windows clipped) -> fc."""
    from savedeep.caffe.model import load_net

    d = tmp_path / "small"
    prototxt = write_net(d, "small", BODY, (1, 3, 9, 11))
    net = load_net(prototxt)
    write_caffemodel(d / "weights.caffemodel", net, random_weights(net, seed=3))
    np.save(d / "mean.npy", np.array([1.5, 2.5, 3.5], np.float32))
    return d


def _engine_out(directory: Path, x: np.ndarray, blobs: list[str]) -> dict[str, np.ndarray]:
    from savedeep.engines.torch_engine import TorchEngine
    from savedeep.caffe.model import load_model

    return TorchEngine(load_model(directory).net, "cpu", len(x), channels_last=False).forward(x, blobs)


def test_onnx_file_metadata_batch_and_blob_semantics(small_model, tmp_path):
    import onnx

    path = convert(small_model, "onnx", tmp_path / "m.onnx", ["c", "p", "f"])
    proto = onnx.load(str(path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [ONNX_OPSET]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["savedeep.mean_bgr"]) == [1.5, 2.5, 3.5]
    assert json.loads(meta["savedeep.input"])["shape"] == ["N", 3, 9, 11]
    assert json.loads(meta["savedeep.outputs"]) == ["c", "p", "f"]
    pre = json.loads(meta["savedeep.preprocessing"])
    assert pre["spec"]["channel_order"] == "BGR" and pre["spec"]["raw_scale"] == 255
    assert not list(tmp_path.glob(".*"))  # no temporary file left
    for n in (1, 3):  # a dynamic batch axis
        x = np.random.default_rng(n).normal(size=(n, 3, 9, 11)).astype(np.float32)
        got, ref = run_onnx(path, x), _engine_out(small_model, x, ["c", "p", "f"])
        assert (got["c"] >= 0).all()  # the in-place ReLU's blob is the post-ReLU value
        for b in ref:
            assert rel_err(got[b], ref[b]) <= 1e-6, b

    fixed = convert(small_model, "onnx", tmp_path / "fixed.onnx", ["f"], batch=2)
    dims = onnx.load(str(fixed)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3, 9, 11]


def test_pt2_metadata_and_dict_of_blobs(small_model, tmp_path):
    pt2 = convert(small_model, "torch", tmp_path / "m.pt2", ["p", "c"])
    extra = {"savedeep.json": ""}
    program = torch.export.load(str(pt2), extra_files=extra)
    meta = json.loads(extra["savedeep.json"])  # one plain JSON object: no JSON strings inside it
    assert meta["mean_bgr"] == [1.5, 2.5, 3.5] and meta["outputs"] == ["p", "c"]
    assert meta["preprocessing"]["options"]["raw_scale"] == 255 and meta["input"]["shape"] == ["N", 3, 9, 11]
    x = np.random.default_rng(0).normal(size=(3, 3, 9, 11)).astype(np.float32)
    out = program.module()(torch.from_numpy(x))
    assert list(out) == ["p", "c"]
    ref = _engine_out(small_model, x, ["p", "c"])
    for b in ref:
        np.testing.assert_allclose(out[b].numpy(), ref[b], rtol=1e-6, atol=1e-6)


def test_default_outputs_are_the_nets_outputs(small_model, tmp_path):
    import onnx

    proto = onnx.load(str(convert(small_model, "onnx", tmp_path / "m.onnx")))
    assert [o.name for o in proto.graph.output] == ["f"]


# --- refusals ------------------------------------------------------------------------------

ARGMAX = layer("t", "TanH", "data", "t") + layer("a", "ArgMax", "t", "a", "argmax_param", axis=1, top_k=1)


def _model(tmp_path: Path, body: str, shape=(1, 3, 5, 6)) -> Path:
    from savedeep.caffe.model import load_net

    d = tmp_path / "model"
    net = load_net(write_net(d, "m", body, shape))
    write_caffemodel(d / "weights.caffemodel", net, random_weights(net, seed=0))
    np.save(d / "mean.npy", np.zeros(3, np.float32))
    return d


def test_layer_onnx_cannot_express_is_refused_by_name(tmp_path, capsys):
    d = _model(tmp_path, ARGMAX)
    with pytest.raises(UnsupportedLayerError, match=r"layer 'a' .* type 'ArgMax'.*ONNX cannot express exactly"):
        convert(d, "onnx", tmp_path / "m.onnx", ["a"])
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.glob(".m*"))
    assert main(["convert", str(d), "--to", "onnx", "-o", str(tmp_path / "m.onnx"), "-q"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'ArgMax'" in err[0] and "--to torch" in err[0]
    # blobs before the ArgMax convert; the torch program keeps the ArgMax
    x = np.random.default_rng(0).normal(size=(1, 3, 5, 6)).astype(np.float32)
    got = run_onnx(convert(d, "onnx", tmp_path / "t.onnx", ["t"]), x)
    np.testing.assert_allclose(got["t"], np.tanh(x), rtol=1e-6)
    out = torch.export.load(str(convert(d, "torch", tmp_path / "a.pt2", ["a"]))).module()(torch.from_numpy(x))
    np.testing.assert_array_equal(out["a"].numpy(), np.tanh(x).argmax(axis=1)[:, None].astype(np.float32))


def test_layer_type_savedeep_does_not_run_is_refused_by_name(tmp_path):
    d = _model(tmp_path, layer("t", "TanH", "data", "t"))
    text = (d / "deploy.prototxt").read_text() + 'layer { name: "odd" type: "Axpy" bottom: "t" top: "o" }\n'
    (d / "deploy.prototxt").write_text(text)
    for to, dest in (("onnx", "m.onnx"), ("torch", "m.pt2")):
        with pytest.raises(UnsupportedLayerError, match=r"layer 'odd' has type 'Axpy'"):
            convert(d, to, tmp_path / dest, ["o"])


def test_net_tied_to_its_batch_size_needs_a_fixed_batch(tmp_path):
    from savedeep.errors import ModelError

    shape, body = LAYER_CASES["scale_two_bottoms"]
    d = _model(tmp_path, body, shape)
    with pytest.raises(ModelError, match=r"depend on the batch size.*--batch 2"):
        convert(d, "onnx", tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    got = run_onnx(convert(d, "onnx", tmp_path / "m.onnx", ["sc"], batch=2), x)
    assert rel_err(got["sc"], _engine_out(d, x, ["sc"])["sc"]) <= 1e-6


def test_convert_argument_errors(small_model, tmp_path):
    (tmp_path / "there.onnx").write_bytes(b"x")
    with pytest.raises(ConfigError, match="exists; .*--overwrite"):
        convert(small_model, "onnx", tmp_path / "there.onnx")
    with pytest.raises(ConfigError, match=r"\.pt2"):
        convert(small_model, "torch", tmp_path / "m.pth")
    with pytest.raises(ConfigError, match="'data' is the net's input"):
        convert(small_model, "onnx", tmp_path / "m.onnx", ["data", "f"])
    with pytest.raises(ConfigError, match="--batch"):
        convert(small_model, "onnx", tmp_path / "m.onnx", batch="0")
    assert main(["convert", str(small_model), "--to", "onnx", "-o", str(tmp_path / "m.onnx"), "-b", "nope"]) == 3


_WITHOUT_ONNX = """
import sys
sys.modules["onnx"] = None  # as if the convert extra were not installed
from savedeep.cli import main
sys.exit(main(["convert", sys.argv[1], "--to", "onnx", "-o", sys.argv[2]]))
"""


def test_without_the_extra_convert_says_what_to_install(small_model, tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", _WITHOUT_ONNX, str(small_model), str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "pip install 'savedeep[convert]'" in r.stderr and "onnx" in r.stderr


def test_api_convert_stays_a_function(small_model, tmp_path):
    """savedeep.convert is the function even after its module was imported (a module named
    savedeep/convert.py would replace the package attribute on import)."""
    import savedeep
    import savedeep.engines.conversion  # noqa: F401

    assert callable(savedeep.convert)
    assert savedeep.convert(small_model, "torch", tmp_path / "m.pt2") == tmp_path / "m.pt2"


# --- --to torch -o NAME.py: the module peers take -------------------------------------------------


def import_module_file(path: Path):
    """Import a converted NAME.py as a fresh module (its own name, so tests never share one)."""
    import importlib.util
    import uuid

    spec = importlib.util.spec_from_file_location(f"converted_{uuid.uuid4().hex}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hook_outputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, object]:
    """Every named module's output for input ``x`` (copied when the hook runs: later in-place ops leave it)."""
    seen: dict[str, object] = {}
    handles = []
    for name, mod in model.named_modules():
        if name:

            def hook(m, args, out, name=name):
                seen[name] = out.detach().clone() if torch.is_tensor(out) else tuple(o.detach().clone() for o in out)

            handles.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


# layer types the engine runs that tests/nets.py's cases leave out (tests/test_caffe_zoo.py checks them with pycaffe)
MODULE_CASES = {
    **LAYER_CASES,
    "clip": ((2, 3, 5, 6), layer("c", "Clip", "data", "c", "clip_param", min=-0.5, max=0.7)),
    "swish_beta": ((2, 3, 5, 6), layer("s", "Swish", "data", "s", "swish_param", beta=1.5)),
    "pool_stochastic": (
        (2, 3, 8, 11),
        layer("a", "AbsVal", "data", "a")
        + layer("p", "Pooling", "a", "p", "pooling_param", pool="STOCHASTIC", kernel_size=3, stride=2),
    ),
}


@pytest.mark.parametrize("case", sorted(MODULE_CASES))
def test_module_layer_case_matches_the_engine_blob_by_blob(case, tmp_path):
    """Every layer case as a module: the outputs and, for every blob, the forward hook of the module
    that METADATA names for it equal the torch engine's blob (the engine is compared with pycaffe
    in tests/test_engines_layers.py); the module traces with torch.fx and switches train/eval."""
    from savedeep.engines.torch_engine import TorchEngine
    from savedeep.caffe.model import load_model

    shape, body = MODULE_CASES[case]
    d = _model(tmp_path, body, shape)
    model_files = load_model(d)
    blobs = [b for b in model_files.net.blobs if b != model_files.net.input_name]
    path = convert(d, "torch", tmp_path / "m.py", blobs)
    assert path == tmp_path / "m.py" and (tmp_path / "m.pt").is_file()
    module = import_module_file(path)
    model = module.load()
    assert not model.training
    x = np.random.default_rng(5).normal(size=shape).astype(np.float32)
    expected = TorchEngine(model_files.net, "cpu", shape[0]).forward(x, blobs)
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    out = out if isinstance(out, dict) else {blobs[0]: out}
    assert list(out) == blobs
    for b in blobs:
        np.testing.assert_allclose(out[b].numpy(), expected[b], rtol=1e-6, atol=1e-6, err_msg=f"{case}: output {b}")
    seen = hook_outputs(model, torch.from_numpy(x))
    for b, (mod, index) in module.METADATA["modules"].items():
        value = seen[mod] if index is None else seen[mod][index]
        np.testing.assert_allclose(
            value.numpy(), expected[b], rtol=1e-6, atol=1e-6, err_msg=f"{case}: hook on {mod!r} for blob {b!r}"
        )
    torch.fx.symbolic_trace(model)  # what torchvision's create_feature_extractor builds on
    model.train()
    model.eval()


def test_module_of_caffenet_is_named_after_its_layers(caffenet_dir, tmp_path):
    """CaffeNet as a module: one submodule per layer named after it, the in-place ReLU and Dropout as
    children of the layer whose top they change, and a hook on ``fc6`` gets Caffe's blob fc6 (post-ReLU;
    the torch.export program's ops.15 gave fc6 before relu6)."""
    from savedeep.engines.torch_engine import TorchEngine
    from savedeep.caffe.model import load_model

    path = convert(caffenet_dir, "torch", tmp_path / "caffenet.py")
    module = import_module_file(path)
    model = module.load()
    names = dict(model.named_modules())
    net = load_model(caffenet_dir).net
    for net_layer in net.layers:
        if net_layer.type == "Input":
            continue
        in_place = net_layer.tops == net_layer.bottoms
        expected = f"{net_layer.bottoms[0]}.{net_layer.name}" if in_place else net_layer.name
        assert expected in names, (net_layer.name, sorted(names)[:20])
    assert [n for n in names if n.startswith("fc6")] == ["fc6", "fc6.relu6", "fc6.drop6"]
    assert module.METADATA["modules"]["fc6"] == ["fc6", None]
    x = np.random.default_rng(0).normal(size=(2, 3, 227, 227)).astype(np.float32) * 40
    seen = hook_outputs(model, torch.from_numpy(x))
    ref = TorchEngine(net, "cpu", 2).forward(x, ["conv1", "pool5", "fc6", "fc7", "prob"])
    for blob in ref:
        np.testing.assert_array_equal(seen[blob].numpy(), ref[blob], err_msg=blob)
    assert (seen["fc6"].numpy() >= 0).all() and (seen["fc6"].numpy() == 0).any()
    meta = module.METADATA
    assert meta["format"] == "torch-module" and meta["input"]["shape"] == ["N", 3, 227, 227]
    assert isinstance(meta["preprocessing"]["options"], dict)  # one JSON object, no JSON strings inside
    assert len(list(model.parameters())) == 16 and all(p.requires_grad for p in model.parameters())


_PLAIN_MODULE = r"""
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
sys.path_importer_cache.clear()
try:
    import savedeep
except ImportError:
    pass
else:
    raise SystemExit(f"savedeep is importable here: {savedeep.__file__}")
import os
import numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(sys.argv[1]))
module = __import__(os.path.splitext(os.path.basename(sys.argv[1]))[0])
model = module.load()
x = np.load(sys.argv[2])
with torch.no_grad():
    out = model(torch.from_numpy(x))
out = out if isinstance(out, dict) else {model.outputs[0]: out}
np.savez(sys.argv[3], **{f"b{i}": v.numpy() for i, v in enumerate(out.values())}, names=np.array(list(out)))
"""


def run_plain_module(py: Path, x: np.ndarray, tmp: Path) -> dict[str, np.ndarray]:
    """The converted module's outputs for `x`, computed by a Python process that cannot import savedeep."""
    return _run_isolated(_PLAIN_MODULE, py, x, tmp)


def test_module_runs_where_savedeep_is_not_installed(small_model, tmp_path):
    py = convert(small_model, "torch", tmp_path / "small.py", ["p", "c", "f"])
    x = np.random.default_rng(2).normal(size=(3, 3, 9, 11)).astype(np.float32)
    got = run_plain_module(py, x, tmp_path)
    ref = _engine_out(small_model, x, ["p", "c", "f"])
    assert list(got) == ["p", "c", "f"]
    for b in ref:
        np.testing.assert_allclose(got[b], ref[b], rtol=1e-6, atol=1e-6)


def test_module_file_names_and_overwrite(small_model, tmp_path):
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"m\.pt exists; .*--overwrite"):
        convert(small_model, "torch", tmp_path / "m.py")
    assert not (tmp_path / "m.py").exists()
    with pytest.raises(ConfigError, match="not a Python identifier"):
        convert(small_model, "torch", tmp_path / "my-net.py")
    convert(small_model, "torch", tmp_path / "m.py", overwrite=True)
    assert not list(tmp_path.glob(".*"))  # no temporary file left
    assert main(["convert", str(small_model), "--to", "torch", "-o", str(tmp_path / "m.pth")]) == 2


def test_module_names_of_caffe_layer_names():
    """One documented rule (docs/how-to/convert.md, "As a PyTorch module"); add_module refuses nn.Module's own names."""
    from savedeep.engines.conversion import module_name

    taken: set[str] = set()
    names = ["inception_3a/1x1", "1x1", "class", "half", "training", "fc6", "fc6", "conv1.x", "", "forward"]
    assert [module_name(n, taken) for n in names] == [
        "inception_3a_1x1",
        "x1x1",
        "class_",
        "half_",
        "training_",
        "fc6",
        "fc6_2",
        "conv1_x",
        "x",
        "forward_",
    ]
    model = torch.nn.Module()
    for n in taken:
        model.add_module(n, torch.nn.Identity())  # every name is one add_module takes
