"""The engines: device parsing, the Engine contract (copies, out=, errors), Caffe blob semantics,
and agreement of the torch engine with pycaffe on CaffeNet, AlexNet, GoogLeNet and the real open_nsfw.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from savedeep.engines import (
    Device,
    DeviceUnavailableError,
    Engine,
    check_device,
    create_engine,
    parse_device,
)
from savedeep.engines.torch_engine import TorchEngine, TorchNet
from savedeep.errors import ConfigError, InputError, ModelError
from tests.nets import channel_err, layer, make_caffemodel, photo_batch, rel_err, write_net

TOLERANCE = 1e-4  # torch on CUDA against the CPU (TF32 off)
# torch against pycaffe on whole nets (CaffeNet, AlexNet, GoogLeNet with random weights, open_nsfw),
# with margin over the worst measured: 4.4e-6 over the whole blob, 3.7e-5 channel by channel
# (open_nsfw's conv_stage1_block2_branch2b; tests/nets.py: rel_err, channel_err).
NET_TOLERANCE = 2e-5
NET_CHANNEL_TOLERANCE = 1e-4

torch.set_num_threads(1)

# --- devices -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("cpu", Device("cpu")),
        ("cuda:0", Device("cuda", 0)),
        ("cuda:3", Device("cuda", 3)),
        ("cuda", Device("cuda", 0)),
        (" CUDA:1 ", Device("cuda", 1)),
    ],
)
def test_parse_device(text, expected):
    assert parse_device(text) == expected
    assert str(parse_device(str(expected))) == str(expected)


@pytest.mark.parametrize("text", ["gpu0", "cuda:", "cuda:-1", "cpu:0", "tpu", "", "cuda:x", "0"])
def test_parse_device_rejects(text):
    with pytest.raises(ConfigError, match="'cpu' or 'cuda:N'"):
        parse_device(text)


def test_check_device():
    check_device(Device("cpu"), 0, "torch")
    check_device(Device("cuda", 1), 2, "torch")
    with pytest.raises(DeviceUnavailableError, match="sees no CUDA GPU.*use device 'cpu'"):
        check_device(Device("cuda", 0), 0, "caffe")
    with pytest.raises(DeviceUnavailableError, match=r"sees 2 GPU\(s\) \(cuda:0..cuda:1\)"):
        check_device(Device("cuda", 2), 2, "torch")
    assert issubclass(DeviceUnavailableError, ConfigError)


# --- a tiny weightless net that shows Caffe's blob semantics ----------------------

# data -> a = 2*data -> ReLU in place on a -> b = a + 1 ; c = tanh(data)
SEMANTICS = (
    layer("double", "Power", "data", "a", "power_param", scale=2)
    + layer("relu", "ReLU", "a", "a")
    + layer("inc", "Power", "a", "b", "power_param", shift=1)
    + layer("th", "TanH", "data", "c")
)
SHAPE = (4, 3, 5, 6)


@pytest.fixture
def tiny_model(tmp_path):
    """A savedeep model directory (prototxt, caffemodel written by our writer, mean) of the SEMANTICS net."""
    from savedeep.caffe.synthetic import write_caffemodel
    from savedeep.caffe.model import load_model, load_net

    prototxt = write_net(tmp_path / "tiny", "tiny", SEMANTICS, SHAPE)
    write_caffemodel(tmp_path / "tiny" / "weights.caffemodel", load_net(prototxt), {})
    np.save(tmp_path / "tiny" / "mean.npy", np.zeros(3, np.float32))
    return load_model(tmp_path / "tiny")


def _kinds():
    return [pytest.param("torch"), pytest.param("torch_nchw"), pytest.param("caffe", marks=pytest.mark.caffe)]


def _engine(kind, model, request, batch_size=4):
    if kind == "caffe":
        request.getfixturevalue("pycaffe")
    if kind == "torch_nchw":  # the torch engine without channels_last (its default on the CPU)
        return TorchEngine(model.net, "cpu", batch_size, threads=1, channels_last=False)
    return create_engine(kind, model, "cpu", batch_size=batch_size, threads=1)


@pytest.mark.parametrize("kind", _kinds())
def test_inplace_blob_holds_last_write(kind, tiny_model, request):
    engine = _engine(kind, tiny_model, request)
    assert isinstance(engine, Engine)
    x = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    out = engine.forward(x, ["a", "b", "c", "data"])
    np.testing.assert_allclose(out["a"], np.maximum(2 * x, 0), rtol=1e-6)  # post-ReLU, as pycaffe
    np.testing.assert_allclose(out["b"], np.maximum(2 * x, 0) + 1, rtol=1e-6)
    np.testing.assert_allclose(out["c"], np.tanh(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["data"], x)
    # asking for one early blob alone gives the same final value
    np.testing.assert_allclose(engine.forward(x, ["a"])["a"], out["a"])
    engine.close()


@pytest.mark.parametrize("kind", _kinds())
def test_forward_returns_copies_and_fills_out(kind, tiny_model, request):
    engine = _engine(kind, tiny_model, request)
    assert engine.input_shape == SHAPE[1:]
    assert engine.blob_shapes == {"data": SHAPE[1:], "a": SHAPE[1:], "b": SHAPE[1:], "c": SHAPE[1:]}
    rng = np.random.default_rng(1)
    x1 = rng.normal(size=SHAPE).astype(np.float32)
    x2 = rng.normal(size=(2, *SHAPE[1:])).astype(np.float32)
    first = engine.forward(x1, ["b", "data"])
    kept = {k: v.copy() for k, v in first.items()}
    second = engine.forward(x2, ["b", "data"])  # a smaller batch: the engine reshapes
    for k in kept:  # the earlier results are not views that the next forward overwrote
        np.testing.assert_array_equal(first[k], kept[k])
        assert first[k].dtype == np.float32 and first[k].flags.c_contiguous
    assert second["b"].shape == (2, *SHAPE[1:])
    x2_before = x2.copy()
    second["data"][...] = 7  # the returned input blob is not the caller's batch
    np.testing.assert_array_equal(x2, x2_before)

    # `out` takes the blobs it has buffers for (float32 or float16); the others come back as copies
    out = {"b": np.full((4, *SHAPE[1:]), -1, np.float32), "c": np.full((4, *SHAPE[1:]), -1, np.float16)}
    got = engine.forward(x2, ["b", "a", "c"], out=out)
    assert list(got) == ["b", "a", "c"]
    for k in ("b", "c"):
        assert got[k].shape == (2, *SHAPE[1:]) and np.shares_memory(got[k], out[k])
        assert (out[k][2:] == -1).all()  # rows past n untouched
    assert got["a"].dtype == np.float32 and not any(np.shares_memory(got["a"], o) for o in out.values())
    np.testing.assert_allclose(out["b"][:2], np.maximum(2 * x2, 0) + 1, rtol=1e-6)
    np.testing.assert_array_equal(got["a"], engine.forward(x2, ["a"])["a"])
    # float16 buffers hold exactly numpy's rounding of the engine's float32 values
    np.testing.assert_array_equal(out["c"][:2], engine.forward(x2, ["c"])["c"].astype(np.float16))
    engine.close()


@pytest.mark.parametrize("kind", _kinds())
def test_float16_out_rounds_like_numpy(kind, tiny_model, request):
    """Ties, the largest float16, overflow to inf, subnormals, signed zero: the engine's cast is numpy's."""
    engine = _engine(kind, tiny_model, request)
    # b = max(2x, 0) + 1 and a = max(2x, 0): pick x so that a and b land on float16's edge cases
    edge = np.array(
        [
            2.0**-12,
            3 * 2.0**-12,
            2.0**-13,
            65504 / 2,
            65520 / 2,
            1e6,
            2.0**-26,
            2.0**-25 * 3,
            1e-9,
            0.0,
            -0.0,
            -5.0,
            1 / 3,
            2 / 3,
            12345.678,
            2.0**-16,
        ],
        np.float64,
    )
    x = np.resize(edge, SHAPE).astype(np.float32)
    ref = engine.forward(x, ["a", "b", "c"])
    out = {k: np.zeros((4, *SHAPE[1:]), np.float16) for k in ("a", "b", "c")}
    engine.forward(x, ["a", "b", "c"], out=out)
    with np.errstate(over="ignore"):
        for k in out:
            expected = ref[k].astype(np.float16)
            np.testing.assert_array_equal(out[k], expected)
            assert (np.signbit(out[k]) == np.signbit(expected)).all()
    assert np.isinf(out["b"]).any() and (out["a"] == np.float16(65504)).any()  # the edges were reached
    engine.close()


@pytest.mark.parametrize("kind", _kinds())
def test_forward_errors(kind, tiny_model, request):
    engine = _engine(kind, tiny_model, request, batch_size=2)
    x = np.zeros((2, *SHAPE[1:]), np.float32)
    with pytest.raises(ModelError, match="unknown blob.*'nope'.*data, a, b, c"):
        engine.forward(x, ["nope"])
    with pytest.raises(InputError, match="batch_size 2"):
        engine.forward(np.zeros((3, *SHAPE[1:]), np.float32), ["a"])
    with pytest.raises(InputError, match=r"\(n, 3, 5, 6\)"):
        engine.forward(np.zeros((2, 3, 5, 7), np.float32), ["a"])
    with pytest.raises(InputError, match="output buffer for blob 'a'"):
        engine.forward(x, ["a"], out={"a": np.zeros((1, *SHAPE[1:]), np.float32)})
    with pytest.raises(InputError, match="'a' must be a writeable float32 or float16 array, got float64"):
        engine.forward(x, ["a"], out={"a": np.zeros((2, *SHAPE[1:]), np.float64)})
    frozen = np.zeros((2, *SHAPE[1:]), np.float32)
    frozen.flags.writeable = False
    with pytest.raises(InputError, match="got read-only float32"):
        engine.forward(x, ["a"], out={"a": frozen})
    engine.close()


def test_create_engine_rejects_bad_arguments(tiny_model):
    with pytest.raises(ConfigError, match="engine 'tensorflow' is unknown: use one of caffe, torch"):
        create_engine("tensorflow", tiny_model, "cpu", 4)
    with pytest.raises(ConfigError, match="batch_size"):
        create_engine("torch", tiny_model, "cpu", 0)
    with pytest.raises(ConfigError, match="threads"):
        create_engine("torch", tiny_model, "cpu", 2, threads=0)
    with pytest.raises(ConfigError, match="'cpu' or 'cuda:N'"):
        create_engine("torch", tiny_model, "gpu", 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_torch_cuda_without_gpu_is_a_clear_error(tiny_model):
    with pytest.raises(DeviceUnavailableError, match="cuda:0: the torch engine sees no CUDA GPU"):
        create_engine("torch", tiny_model, "cuda:0", 2)


@pytest.mark.caffe
def test_caffe_cuda_on_cpu_only_build_is_a_clear_error(tiny_model, pycaffe):
    from savedeep.engines.caffe_engine import cuda_device_count
    from savedeep.engines.gpus import caffe_has_cuda

    if caffe_has_cuda(pycaffe) and cuda_device_count() > 0:
        pytest.skip("this pycaffe has CUDA and a GPU is present")
    with pytest.raises(DeviceUnavailableError, match="cuda:0: the caffe engine sees no CUDA GPU"):
        create_engine("caffe", tiny_model, "cuda:0", 2)


def test_plan_runs_only_what_the_requested_blobs_need(tiny_model):
    net = TorchNet(tiny_model.net)
    names = [layer.name for layer in tiny_model.net.layers if layer.type != "Input"]
    steps = lambda blobs: [names[i] for i in net.plan(blobs).steps]  # noqa: E731
    assert steps(["a"]) == ["double", "relu"]
    assert steps(["c"]) == ["th"]
    assert steps(["data"]) == []
    assert steps(["b", "c"]) == ["double", "relu", "inc", "th"]


def test_plan_follows_writes_through_shared_buffers(tmp_path):
    """In Caffe, Flatten's top shares memory with its bottom: the in-place ReLU on `f` changes `data`."""
    from savedeep.caffe.model import load_net

    body = layer("f", "Flatten", "data", "f") + layer("r", "ReLU", "f", "f") + layer("t", "TanH", "data", "t")
    net = load_net(write_net(tmp_path, "alias", body, (2, 3, 4, 5)))
    engine = TorchEngine(net, "cpu", 2)
    x = np.random.default_rng(2).normal(size=(2, 3, 4, 5)).astype(np.float32)
    out = engine.forward(x, ["data", "t"])
    np.testing.assert_array_equal(out["data"], np.maximum(x, 0))
    np.testing.assert_allclose(out["t"], np.tanh(np.maximum(x, 0)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("wanted", [["p", "d"], ["d"], ["p", "d", "data"]])
def test_inplace_layers_write_in_place_only_into_memory_no_one_else_holds(wanted, tmp_path):
    """The torch engine runs an in-place ReLU in place when the old value is not needed.

    Dropout gives its bottom back in torch (Caffe copies it), so `d` and `p` share memory
    and the ReLU on `d` must not change `p`; nor may anything write into the input.
    """
    from savedeep.caffe.model import load_net

    body = (
        layer("p", "Power", "data", "p", "power_param", scale=3)
        + layer("drop", "Dropout", "p", "d")
        + layer("r", "ReLU", "d", "d", "relu_param", negative_slope=0.25)
        + layer("q", "Power", "data", "q", "power_param", scale=-1)
        + layer("r2", "ReLU", "q", "q")
        + layer("s", "Sigmoid", "q", "q")
    )
    net = load_net(write_net(tmp_path, "inplace", body, (2, 3, 4, 5)))
    engine = TorchEngine(net, "cpu", 2)
    x = np.random.default_rng(3).normal(size=(2, 3, 4, 5)).astype(np.float32)
    x0 = x.copy()
    out = engine.forward(x, [*wanted, "q"])
    np.testing.assert_array_equal(x, x0)
    if "p" in wanted:
        np.testing.assert_allclose(out["p"], 3 * x, rtol=1e-6)
    np.testing.assert_allclose(out["d"], np.where(3 * x > 0, 3 * x, 0.25 * 3 * x), rtol=1e-6)
    np.testing.assert_allclose(out["q"], 1 / (1 + np.exp(-np.maximum(-x, 0))), rtol=1e-6)
    if "data" in wanted:
        np.testing.assert_array_equal(out["data"], x0)
    # The plan allows all three (no old value is wanted or read later); whether `d` still
    # shares memory with a held `p` is only known at run time, and the values above show
    # that the run-time check kept `p` intact.
    names = [layer.name for layer in net.layers if layer.type != "Input"]
    plan = engine.module.plan([*wanted, "q"])
    assert {names[i] for i, ok in zip(plan.steps, plan.inplace) if ok} == {"r", "r2", "s"}


def test_inplace_on_a_blob_with_other_readers_is_refused(tmp_path):
    """Caffe aborts on such a net ("produced by multiple sources"); we say why instead."""
    from savedeep.caffe.model import load_net

    body = layer("t", "TanH", "data", "t") + layer("r", "ReLU", "data", "data")
    with pytest.raises(ModelError, match=r"in.place.*'data'.*Caffe re(fuses|jects)"):
        TorchEngine(load_net(write_net(tmp_path, "bad", body, (1, 3, 4, 4))), "cpu", 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_engine_on_cuda_matches_cpu(tiny_model):
    x = np.random.default_rng(3).normal(size=SHAPE).astype(np.float32)
    cpu = create_engine("torch", tiny_model, "cpu", 4).forward(x, ["a", "b", "c", "data"])
    gpu_engine = create_engine("torch", tiny_model, "cuda:0", 4)
    assert gpu_engine.device == "cuda:0"
    gpu = gpu_engine.forward(x, ["a", "b", "c", "data"])
    for k in cpu:
        assert isinstance(gpu[k], np.ndarray)
        assert rel_err(gpu[k], cpu[k]) <= TOLERANCE
    # out=: cast and reordered on the GPU, then copied into the host buffers
    out = {"b": np.zeros(SHAPE, np.float16), "c": np.zeros(SHAPE, np.float32)}
    gpu_engine.forward(x, ["b", "c"], out=out)
    np.testing.assert_array_equal(out["b"], gpu["b"].astype(np.float16))
    np.testing.assert_array_equal(out["c"], gpu["c"])
    gpu_engine.close()


# --- agreement with pycaffe on real architectures ------------------------------------

IMAGENET = ["caffenet", "alexnet", "googlenet"]


def _random_model_dir(pycaffe, testdata: Path, name: str, root: Path) -> Path:
    """A model directory with tests/data's prototxt, He-normal random weights saved by pycaffe, the ILSVRC mean."""
    directory = root / name
    directory.mkdir()
    shutil.copy(testdata / "models" / name / "deploy.prototxt", directory / "deploy.prototxt")
    make_caffemodel(pycaffe, directory / "deploy.prototxt", directory / "weights.caffemodel", seed=11)
    shutil.copy(testdata / "models" / "ilsvrc_2012_mean.npy", directory / "mean.npy")
    return directory


def real_net_dir(name: str, pycaffe, testdata: Path, tmp_path: Path, request) -> tuple[Path, np.ndarray]:
    """(model directory, BGR mean vector) of a real net: open_nsfw with its real weights, or an ImageNet
    net of tests/data with random weights saved by pycaffe."""
    if name == "open_nsfw":
        return request.getfixturevalue("nsfw_dir"), np.array([104, 117, 123], np.float32)
    directory = _random_model_dir(pycaffe, testdata, name, tmp_path)
    return directory, np.load(directory / "mean.npy").mean(axis=(1, 2)).astype(np.float32)


@pytest.mark.caffe
@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGENET + ["open_nsfw"])
def test_torch_engine_matches_pycaffe_on_real_nets(name, pycaffe, testdata, photos, tmp_path, request):
    from savedeep.caffe.model import load_model

    directory, mean_bgr = real_net_dir(name, pycaffe, testdata, tmp_path, request)
    model = load_model(directory)
    caffe_engine = create_engine("caffe", model, "cpu", batch_size=4, threads=1)
    torch_engine = create_engine("torch", model, "cpu", batch_size=4, threads=1)
    assert torch_engine.blob_shapes == caffe_engine.blob_shapes
    assert torch_engine.input_shape == caffe_engine.input_shape
    x = photo_batch(photos, torch_engine.input_shape, mean_bgr, n=2)
    blobs = model.net.blobs
    try:
        expected = caffe_engine.forward(x, blobs)
        got = torch_engine.forward(x, blobs)
    finally:
        caffe_engine.close()
        torch_engine.close()
    errors = {b: rel_err(got[b], expected[b]) for b in blobs}
    per_channel = {b: channel_err(got[b], expected[b]) for b in blobs}
    worst, worst_channel = max(errors, key=errors.get), max(per_channel, key=per_channel.get)
    print(
        f"\n{name}: {len(blobs)} blobs, max relative error {errors[worst]:.2e} (blob {worst!r}), "
        f"per channel {per_channel[worst_channel]:.2e} (blob {worst_channel!r})"
    )
    assert errors[worst] <= NET_TOLERANCE, {b: e for b, e in errors.items() if e > NET_TOLERANCE}
    assert per_channel[worst_channel] <= NET_CHANNEL_TOLERANCE, {
        b: e for b, e in per_channel.items() if e > NET_CHANNEL_TOLERANCE
    }
    if name == "open_nsfw":  # real weights: the SFW/NSFW probabilities themselves agree closely
        assert np.abs(got["prob"] - expected["prob"]).max() < 1e-5


_FAULTS_SCRIPT = """
import resource, sys
import numpy as np
from savedeep.engines import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
np.ones(10_000_000, np.float32)  # 40 MB, freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    np.ones(10_000_000, np.float32)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_page_faults_on_reused_buffers():
    """A consumer's per-batch buffers (> 32 MiB) are faulted in afresh each time unless freed memory is kept."""

    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True, timeout=60
        ).stdout.split()
        return out[0], int(out[1])

    applied, kept = faults("keep")
    _, default = faults("default")
    assert applied == "True"
    # 5 x 40 MB faulted in again each time: 10,000 4 KiB pages or 20 huge pages (numpy madvises them) each
    assert default >= 5 * 20
    assert kept * 20 <= default


_THREAD_ALLOC_SCRIPT = """
import threading
import numpy as np
from savedeep.engines import keep_freed_memory
assert keep_freed_memory()
out = []
def work():
    a = np.ones(100_000_000, np.float32)  # 400 MB from a thread's own malloc arena
    out.append(float(a[::1000].sum()))
ts = [threading.Thread(target=work) for _ in range(2)]
[t.start() for t in ts]
[t.join() for t in ts]
print(out)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_still_allows_big_allocations_in_threads():
    """With mmap turned off, glibc must still serve blocks larger than a thread arena's heap (64 MiB)."""
    out = subprocess.run(
        [sys.executable, "-c", _THREAD_ALLOC_SCRIPT], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    assert out == "[100000.0, 100000.0]"
