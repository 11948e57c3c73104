"""A warning about the model is printed once per run, however many worker processes read the model.

The parent's preflight reads the model files and reports what it finds (e.g. a Silence layer
dropped from the TEST net); each consumer reads the same files again to build its engine, and
its log records travel to the parent's stderr, so without care every note came once per
consumer on top of the parent's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.nets import conv, layer, write_net

BODY = (
    conv("c", "data", "c", num_output=4, kernel_size=3, stride=2)
    + layer("sp", "Split", "c", ["c1", "c2"])
    + layer("s", "Silence", "c2", [])
    + layer("r", "ReLU", "c1", "r")
)


@pytest.fixture(scope="module")
def silence_model(tmp_path_factory) -> Path:
    """A small model directory whose prototxt has a Silence layer, with seeded weights and a mean."""
    from savedeep.caffe.model import load_net
    from savedeep.caffe.synthetic import random_weights, write_caffemodel

    d = tmp_path_factory.mktemp("silence") / "model"
    prototxt = write_net(d, "silence", BODY, (1, 3, 32, 32))
    net = load_net(prototxt)
    write_caffemodel(d / "weights.caffemodel", net, random_weights(net, seed=0))
    np.save(d / "mean.npy", np.array([104.0, 117.0, 123.0], np.float32))
    return d


@pytest.mark.parametrize("engine,consumers", [("torch", 2), ("caffe", 1)])
def test_a_model_warning_is_printed_once_per_run(silence_model, photos, tmp_path, engine, consumers, request):
    if engine == "caffe":
        request.getfixturevalue("pycaffe")
    images = tmp_path / "images"
    images.mkdir()
    for p in photos[:3]:
        shutil.copyfile(p, images / p.name)
    cmd = [
        sys.executable,
        "-m",
        "savedeep",
        "run",
        "-m",
        str(silence_model),
        "-b",
        "r",
        "-i",
        str(images),
        "-o",
        str(tmp_path / "acts.pk"),
        "--engine",
        engine,
        "--gpus",
        "cpu",
        "--cpu-consumers",
        str(consumers),
        "--batch-size",
        "1",
        "--no-progress",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "'s' (Silence)" in line]
    assert len(lines) == 1, r.stderr
