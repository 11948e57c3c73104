"""The converted module and savedeep.transform in the tools researchers use, installed from PyPI.

- savedeep.transform gives, bit for bit, the input blob a savedeep run fed (the run saves its
  ``data`` blob), from a path and from a PIL image, for a model directory and for a converted
  file; torchvision's ImageFolder takes it as ``transform=``.
- Each docs block fenced ``python peers`` (docs/how-to/convert.md: torchvision's feature extractor,
  thingsvision, torchlens, Brain-Score) runs as written, after the README's first command, in the peers' venv
  (scripts/peer_env.sh: none of these packages installs beside the project's pins); each block
  asserts its numbers against savedeep's own output.

The bugs these are for: a recipe that fails as written (thingsvision's ``model.eval()`` on a
torch.export module, ``KeyError: 'ops.15'``), a hook that sees a blob before its in-place ReLU, a
transform that re-implements the preprocessing and drifts from the producer's, and Brain-Score's
channel_x/channel_y order documented but never checked against their code.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import copy_photos
from tests.test_docs import ROOT, all_blocks

# demo_root (the folder the README's first command leaves) is the fixture of tests/conftest.py.
PEER_BLOCKS = [b.text for b in all_blocks() if b.info == "python peers"]


@pytest.fixture(scope="module")
def peers_python() -> str:
    """The peers' venv's python (built on first use, cached in ~/.cache/savedeep: scripts/peer_env.sh)."""
    r = subprocess.run(["bash", str(ROOT / "scripts" / "peer_env.sh")], capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, f"scripts/peer_env.sh failed:\n{r.stderr[-4000:]}"
    return r.stdout.strip().splitlines()[-1]


def run_peer(python: str, script: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `script` in the peers' venv with this clone's savedeep on the path (as a user who installed it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(ROOT)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"  # thingsvision imports tensorflow: keep its start-up chatter out
    return subprocess.run([python, "-c", script, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def caffenet_run(caffenet_dir, photos, tmp_path_factory):
    """A savedeep run of CaffeNet over five photos (JPEG, gray JPEG, PNG) that saves its input blob."""
    import savedeep

    d = tmp_path_factory.mktemp("peers")
    images = copy_photos(
        photos, d / "images", ["cat.jpg", "cat_gray.jpg", "fish-bike.jpg", "chelsea.png", "coffee.png"]
    )
    savedeep.run(
        ROOT / "configs" / "demo.yaml",
        model=caffenet_dir,
        images=images,
        output=d / "out" / "acts.pk",
        blobs=["data", "fc6"],
        producers=1,
        writers=1,
        cpu_consumers=1,
        report=False,
    )
    return d, images, savedeep.load(d / "out" / "acts.pk")


@pytest.mark.slow  # a real run: seconds
def test_transform_is_the_input_a_run_fed(caffenet_run, caffenet_dir):
    """transform(model dir) and transform(converted file), from a path and from a PIL image, equal the
    ``data`` blob of the run bit for bit (CaffeNet's mean is a (3, 256, 256) image: its channel means
    travel through the converted file's JSON)."""
    from PIL import Image

    import savedeep

    d, images, df = caffenet_run
    py = savedeep.convert(caffenet_dir, "torch", d / "caffenet.py", overwrite=True)
    pt2 = savedeep.convert(caffenet_dir, "torch", d / "caffenet.pt2", blobs=["conv1"], overwrite=True)
    onnx = savedeep.convert(caffenet_dir, "onnx", d / "caffenet.onnx", blobs=["conv1"], overwrite=True)
    transforms = {
        "directory": savedeep.transform(caffenet_dir),
        "module": savedeep.transform(py),
        "weights file": savedeep.transform(py.with_suffix(".pt")),
        "pt2": savedeep.transform(pt2),
        "onnx": savedeep.transform(onnx),
    }
    for key, expected in zip(df["image"], df["data"]):
        for name, t in transforms.items():
            got = t(images / key)
            assert str(got.dtype) == "torch.float32" and tuple(got.shape) == (3, 227, 227)
            assert np.array_equal(got.numpy(), expected), (key, name)
        with Image.open(images / key) as im:
            assert np.array_equal(transforms["module"](im).numpy(), expected), (key, "PIL image")
        with Image.open(images / key) as im:  # what torchvision's and thingsvision's loaders hand over
            assert np.array_equal(transforms["module"](im.convert("RGB")).numpy(), expected), (key, "convert")
    with pytest.raises(TypeError, match="a path or a PIL image"):
        transforms["module"](np.zeros((3, 4, 4), np.uint8))


@pytest.mark.slow
def test_image_folder_takes_the_transform(caffenet_run, peers_python):
    """torchvision's ImageFolder with ``transform=savedeep.transform(...)``, in the peers' venv."""
    d, images, df = caffenet_run
    folder = d / "folder"
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    for key in df["image"]:
        target = folder / "photos" / key
        if not target.exists():
            target.symlink_to(images / key)
    script = (
        "import sys, numpy as np, torchvision, savedeep\n"
        "ds = torchvision.datasets.ImageFolder(sys.argv[1], transform=savedeep.transform(sys.argv[2]))\n"
        "np.savez(sys.argv[3], x=np.stack([ds[i][0].numpy() for i in range(len(ds))]),\n"
        "         names=np.array([p.rsplit('/', 1)[1] for p, _ in ds.samples]))\n"
    )
    r = run_peer(peers_python, script, d, str(folder), str(d / "caffenet.py"), str(d / "folder.npz"))
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(d / "folder.npz") as z:
        got = dict(zip(z["names"], z["x"]))
    assert sorted(got) == sorted(df["image"])
    for key, expected in zip(df["image"], df["data"]):
        assert np.array_equal(got[key], expected), key


def test_docs_have_the_peer_recipes():
    text = "\n".join(PEER_BLOCKS)
    assert len(PEER_BLOCKS) == 4
    for call in (
        "create_feature_extractor",
        "get_extractor_from_model",
        "extract_features",
        "torchlens.trace",
        "PytorchWrapper",
        "NeuroidAssembly",
        "savedeep.transform",
    ):
        assert call in text, call


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(PEER_BLOCKS)))
def test_peer_recipe_runs_as_written(demo_root, peers_python, index):
    """The docs' recipe, in the peers' venv, from the folder the README's first command ran in; the
    recipes run in order (the first writes nsfw.py)."""
    for i in range(index + 1):  # a recipe may rely on the files of those before it, as a reader's session does
        if i < index and (demo_root / f".peer_recipe_{i}.ok").exists():
            continue
        r = run_peer(peers_python, PEER_BLOCKS[i], demo_root)
        assert r.returncode == 0, f"docs python peers block {i}:\n{PEER_BLOCKS[i]}\n{r.stderr[-4000:]}"
        (demo_root / f".peer_recipe_{i}.ok").touch()


def test_transform_of_a_grayscale_net(photos, tmp_path):
    """A (1, H, W) net: the converted file's transform subtracts the luminance's mean (values_gray, not
    values_bgr) and equals the producer's input, as the model directory's does."""
    import savedeep
    from savedeep.caffe.model import load_model, load_net
    from savedeep.data.preprocess import Preprocessor, PreprocessSpec, load_mean
    from savedeep.caffe.synthetic import random_weights, write_caffemodel
    from tests.nets import layer, write_net

    d = tmp_path / "gray"
    net = load_net(
        write_net(
            d,
            "gray",
            layer("c", "Convolution", "data", "c", "convolution_param", num_output=2, kernel_size=3),
            (1, 1, 9, 11),
        )
    )
    write_caffemodel(d / "weights.caffemodel", net, random_weights(net, seed=0))
    np.save(d / "mean.npy", np.array([0.3], np.float32))
    py = savedeep.convert(d, "torch", tmp_path / "gray.py")
    model = load_model(d)
    producer = Preprocessor(PreprocessSpec(), load_mean(model.mean_path), (1, 9, 11))
    for photo in photos[:3]:
        expected = producer.load(photo)
        assert np.array_equal(savedeep.transform(py)(photo).numpy(), expected), photo.name
        assert np.array_equal(savedeep.transform(d)(photo).numpy(), expected), photo.name
