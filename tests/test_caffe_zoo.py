"""The public model zoo on both engines: real deploy definitions that no one here wrote (tests/data/zoo).

Each model gets seeded random weights written by savedeep.caffe.synthetic into a real .caffemodel, once per
test session. The bugs these tests are for: a layer or parameter that savedeep's shape rules or the torch
engine read differently from Caffe in a real net (a wrong shape, a wrong number), a caffemodel that
pycaffe cannot load (the fork's 512 MiB protobuf limit: VGG16/VGG19/FCN-size weights), and a net that
needs a layer outside standard Caffe crashing a worker instead of being refused before the run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from savedeep.engines import create_engine
from tests.conftest import TESTDATA
from tests.nets import rel_err
from tests.test_data_preprocess import caffe_io_with_resize  # noqa: F401 - a fixture: pycaffe's caffe.io with resize

ZOO = TESTDATA / "zoo"
# The bar: every blob of the torch engine within 1e-5 of that blob's largest value in pycaffe's.
ZOO_TOLERANCE = 1e-5
PYCAFFE_OLD_LIMIT = 512 * 2**20  # the brocolli-caffe fork's protobuf read limit before scripts/patch_caffe_source.sh


@dataclass(frozen=True)
class ZooModel:
    name: str
    # Where the net allows another input size (no InnerProduct fixes it), a smaller one keeps CI short:
    # the deploy text's input dims are replaced in the test's copy, nothing else.
    input_hw: tuple[int, int] | None = None
    # A layer type outside standard Caffe that the model needs: savedeep must refuse it (exit 3).
    refused: str | None = None


MODELS = [
    ZooModel("rcnn_ilsvrc13"),
    ZooModel("flickr_style"),
    ZooModel("lenet"),
    ZooModel("cifar10_quick"),
    ZooModel("resnet50"),
    ZooModel("resnet101"),
    ZooModel("resnet152"),
    ZooModel("alexnet_places365"),
    ZooModel("googlenet_places365"),
    ZooModel("vgg16_places365"),
    ZooModel("squeezenet_v1.0", input_hw=(99, 99)),
    ZooModel("squeezenet_v1.1", input_hw=(99, 99)),
    ZooModel("mobilenet_v1"),
    ZooModel("mobilenet_v2"),
    ZooModel("se_bn_inception"),
    ZooModel("se_resnet50", refused="Axpy"),
    ZooModel("fcn8s_voc", input_hw=(64, 64)),
    ZooModel("resnext50_32x4d"),
    ZooModel("densenet121"),
    ZooModel("inception_v3"),
    ZooModel("vgg19"),
]
BY_NAME = {m.name: m for m in MODELS}


def test_the_corpus_and_its_readme_list_the_same_models():
    """Every folder is tested and documented (source, commit, licence), and nothing tested is missing."""
    folders = sorted(p.name for p in ZOO.iterdir() if (p / "deploy.prototxt").is_file())
    assert folders == sorted(BY_NAME)
    readme = (ZOO / "README.md").read_text()
    for name in folders:
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{name}/` |")), None)
        assert row is not None, f"tests/data/zoo/README.md has no row for {name}"
        assert re.search(r"\| `[0-9a-f]{12}` \|", row), f"{name}: no commit in its README row"
    assert len([m for m in MODELS if m.refused is None]) >= 15


def _with_input(text: str, hw: tuple[int, int]) -> str:
    """The deploy text with its input's height and width replaced (the last two input dims)."""
    new, n = re.subn(
        r"(dim:\s*\d+\s+dim:\s*\d+\s+)dim:\s*\d+(\s+)dim:\s*\d+",
        lambda m: f"{m.group(1)}dim: {hw[0]}{m.group(2)}dim: {hw[1]}",
        text,
        count=1,
    )
    assert n == 1, "no 4-D input shape found in the deploy text"
    return new


class ZooCache:
    """Model directories with seeded random weights, made once per session on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: dict[str, Path] = {}

    def model_dir(self, name: str) -> Path:
        if name in self.made:
            return self.made[name]
        from savedeep.caffe.model import load_net
        from savedeep.caffe.synthetic import random_weights, write_caffemodel

        entry = BY_NAME[name]
        directory = self.root / name
        directory.mkdir()
        text = (ZOO / name / "deploy.prototxt").read_text()
        if entry.input_hw is not None:
            text = _with_input(text, entry.input_hw)
        (directory / "deploy.prototxt").write_text(text)
        net = load_net(directory / "deploy.prototxt")
        channels = net.blob_shapes(1)[net.input_name][1]
        # the usual ImageNet BGR means, or a luminance mean for a 1-channel (grayscale) input
        np.save(directory / "mean.npy", np.array([104.0, 117.0, 123.0] if channels == 3 else [33.3], np.float32))
        weights = random_weights(net, seed=29)
        # The classifier that feeds a Softmax gets 1/20 of its He-normal scale. An error in a softmax's
        # output is about the absolute error of its logits, which grows with their size: random logits
        # reach ~10, where float32 summation order alone moves DenseNet-121's prob by 1.4e-5 (a 1e-7
        # change of the input moves it by 4e-6; at 1/10, 8e-6). Trained classifiers have logits of a few units.
        writers = {}  # blob -> the layer that creates it (not the in-place layers that overwrite it)
        for layer in net.layers:
            for top in layer.tops:
                writers.setdefault(top, layer)
        for layer in net.layers:
            if layer.type != "Softmax":
                continue
            writer = writers.get(layer.bottoms[0])
            while writer is not None and writer.name not in weights and writer.bottoms:  # through a Reshape
                writer = writers.get(writer.bottoms[0])
            if writer is not None and writer.name in weights:
                weights[writer.name] = [array * np.float32(0.05) for array in weights[writer.name]]
        write_caffemodel(directory / "weights.caffemodel", net, weights)
        self.made[name] = directory
        return directory


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> ZooCache:
    return ZooCache(tmp_path_factory.mktemp("zoo"))


def _inputs(photos: list[Path], shape: tuple[int, int, int], n: int = 2) -> np.ndarray:
    """n real photos warped to the net's input: BGR minus the ImageNet means times 0.017 (MobileNet's input
    scale), or gray in [0, 1] for 1 channel.

    Inputs of order 1, as trained nets with batch normalisation see inside: with raw +-128 inputs and
    random weights, SE-BN-Inception's excitation logits reach hundreds, and its sigmoids then turn
    float32 rounding into 3e-3 of the blob (a 1e-7 change of the input does the same).
    """
    import cv2

    c, h, w = shape
    out = np.empty((n, c, h, w), np.float32)
    for i, path in enumerate(photos[:n]):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR if c == 3 else cv2.IMREAD_GRAYSCALE)
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        if c == 3:
            out[i] = ((img - np.array([104.0, 117.0, 123.0], np.float32)) * np.float32(0.017)).transpose(2, 0, 1)
        else:
            out[i, 0] = img / 255.0
    return out


RUNNABLE = [m.name for m in MODELS if m.refused is None]


@pytest.mark.caffe
@pytest.mark.slow
@pytest.mark.parametrize("name", RUNNABLE)
def test_zoo_model_on_both_engines(name, zoo, pycaffe, photos):
    """savedeep's shapes (inspect) equal pycaffe's; the torch engine equals pycaffe on every blob."""
    from savedeep.caffe.inspect import inspect_model
    from savedeep.caffe.model import load_model

    directory = zoo.model_dir(name)
    model = load_model(directory)
    caffe_engine = create_engine("caffe", model, "cpu", batch_size=2, threads=2)
    try:
        shapes = {row["blob"]: tuple(row["shape"]) for row in inspect_model(directory)}
        pycaffe_shapes = {b: tuple(caffe_engine.net.blobs[b].data.shape[1:]) for b in shapes}
        assert shapes == pycaffe_shapes
        assert set(shapes) == {b for b in caffe_engine.net.blobs if "_split_" not in b}
        x = _inputs(photos, caffe_engine.input_shape)
        expected = caffe_engine.forward(x, model.net.blobs)
    finally:
        caffe_engine.close()
    torch_engine = create_engine("torch", model, "cpu", batch_size=2, threads=2)
    try:
        got = torch_engine.forward(x, model.net.blobs)
    finally:
        torch_engine.close()
    errors = {b: rel_err(got[b], expected[b]) for b in model.net.blobs}
    worst = max(errors, key=errors.get)
    print(f"\n{name}: {len(errors)} blobs, worst {errors[worst]:.1e} of the blob's largest value ({worst!r})")
    assert all(np.isfinite(expected[b]).all() for b in expected)
    assert errors[worst] <= ZOO_TOLERANCE, {b: e for b, e in errors.items() if e > ZOO_TOLERANCE}


def _savedeep(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GLOG_minloglevel": "2"}
    return subprocess.run(
        [sys.executable, "-m", "savedeep", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


@pytest.mark.parametrize("name", [m.name for m in MODELS if m.refused])
@pytest.mark.parametrize("engine", ["torch", "caffe"])
def test_a_model_needing_a_non_standard_layer_is_refused_in_one_line(name, engine, tmp_path, photos):
    """Before any worker starts, for either engine: exit 3, one line naming the layer type and the file."""
    entry = BY_NAME[name]
    directory = tmp_path / "model"
    directory.mkdir()
    shutil.copy(ZOO / name / "deploy.prototxt", directory / "deploy.prototxt")
    # No weights can be made for a net savedeep cannot read: a placeholder file, never opened.
    (directory / "weights.caffemodel").write_bytes(b"")
    shutil.copy(TESTDATA / "models" / "ilsvrc_2012_mean.npy", directory / "mean.npy")
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(photos[0], images / photos[0].name)
    out = tmp_path / "out" / "acts.pk"
    proc = _savedeep(
        "run",
        "--model",
        str(directory),
        "--images",
        str(images),
        "-o",
        str(out),
        "--blobs",
        "prob",
        "--engine",
        engine,
        cwd=tmp_path,
    )
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert entry.refused in lines[0] and "deploy.prototxt" in lines[0], lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.caffe
@pytest.mark.slow
def test_weights_over_512_mib_run_on_the_caffe_engine_and_equal_the_torch_engine(zoo, pycaffe, photos, tmp_path):
    """VGG16-size weights through the whole pipeline on the caffe engine (the consumer process loads them).

    Before scripts/patch_caffe_source.sh, pycaffe's consumer died with SIGABRT ("exceeds the total
    bytes limit") and the run exited 6.
    """
    import savedeep

    directory = zoo.model_dir("vgg16_places365")
    size = (directory / "weights.caffemodel").stat().st_size
    assert size > PYCAFFE_OLD_LIMIT, size
    images = tmp_path / "images"
    images.mkdir()
    for p in photos[:3]:
        shutil.copy(p, images / p.name)
    frames = {}
    for engine in ("caffe", "torch"):
        out = tmp_path / engine / "acts.pk"
        savedeep.run(
            None,
            model=directory,
            images=images,
            output=out,
            blobs=["conv5_3", "fc7", "prob"],
            engine=engine,
            batch_size=3,
            cpu_consumers=1,
            consumer_threads=2,
        )
        frames[engine] = savedeep.load(out)
    caffe_df, torch_df = frames["caffe"], frames["torch"]
    assert list(caffe_df["image"]) == list(torch_df["image"]) == sorted(p.name for p in photos[:3])
    for blob in ("conv5_3", "fc7", "prob"):
        a, b = np.stack(torch_df[blob]), np.stack(caffe_df[blob])
        assert rel_err(a, b) <= ZOO_TOLERANCE, blob


@pytest.mark.parametrize("engine", ["torch", "caffe"])
def test_a_caffemodel_over_2_gib_is_refused_before_any_worker_starts(engine, testdata, tmp_path, photos):
    """A weights file no engine can read (protobuf's 2 GiB - 1 limit) is one line, exit 3, nothing written.

    Without the size check the torch engine's preflight read 2 GiB into memory and failed to decode it,
    and pycaffe would have aborted in the consumer. The file is sparse: it costs no disk.
    """
    from savedeep.caffe.caffemodel import MAX_CAFFEMODEL_BYTES

    directory = tmp_path / "model"
    directory.mkdir()
    shutil.copy(testdata / "models" / "caffenet" / "deploy.prototxt", directory / "deploy.prototxt")
    shutil.copy(testdata / "models" / "ilsvrc_2012_mean.npy", directory / "mean.npy")
    weights = directory / "weights.caffemodel"
    with open(weights, "wb") as f:
        f.truncate(MAX_CAFFEMODEL_BYTES + 1)
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(photos[0], images / photos[0].name)
    proc = _savedeep(
        "run",
        "--model",
        str(directory),
        "--images",
        str(images),
        "-o",
        str(tmp_path / "out" / "acts.pk"),
        "--blobs",
        "fc7",
        "--engine",
        engine,
        cwd=tmp_path,
    )
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert str(weights) in lines[0] and "2,147,483,647 bytes" in lines[0], lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.caffe
@pytest.mark.slow
@pytest.mark.parametrize("engine", ["torch", "caffe"])
def test_a_grayscale_net_runs_end_to_end_and_equals_pycaffe(engine, zoo, caffe_io_with_resize, photos, tmp_path):  # noqa: F811
    """LeNet's (1, 28, 28) input through the whole pipeline (producers, shared memory, consumers, writer).

    The reference is pycaffe alone: caffe.io.load_image(color=False)'s luminance, Transformer.preprocess
    (caffe.io.resize_image, raw_scale, mean) and net.forward. Before: "3-channel BGR images only", exit 3.
    """
    import savedeep
    from tests.test_data_preprocess import caffe_load_gray, gray_transformer

    caffe = caffe_io_with_resize
    directory = zoo.model_dir("lenet")
    mean = np.load(directory / "mean.npy")
    images = tmp_path / "images"
    images.mkdir()
    chosen = [p for p in photos if p.name in ("cat.jpg", "cat_gray.jpg", "astronaut.png", "camera.png")]
    for p in chosen:
        shutil.copy(p, images / p.name)
    out = tmp_path / "out" / "acts.pk"
    savedeep.run(
        None,
        model=directory,
        images=images,
        output=out,
        blobs=["conv1", "ip2"],
        engine=engine,
        batch_size=3,
        preprocess={"resize": "caffe-io", "input_scale": 0.00390625},
    )
    df = savedeep.load(out)
    assert list(df["image"]) == sorted(p.name for p in chosen)
    net = caffe.Net(str(directory / "deploy.prototxt"), caffe.TEST, weights=str(directory / "weights.caffemodel"))
    t = gray_transformer(caffe, (1, 28, 28), mean, input_scale=0.00390625)
    x = np.stack([t.preprocess("data", caffe_load_gray(images / name)) for name in df["image"]])
    net.blobs["data"].reshape(*x.shape)
    net.blobs["data"].data[...] = x
    net.forward()
    for blob in ("conv1", "ip2"):
        got = np.stack(df[blob])
        assert rel_err(got, net.blobs[blob].data) <= ZOO_TOLERANCE, blob
