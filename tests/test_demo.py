"""The built-in default: pycaffe runs the real open_nsfw model on a real photo; the demo config runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import savedeep
from savedeep.demo import prepare

ROOT = Path(__file__).resolve().parents[1]


def test_pycaffe_runs_open_nsfw_on_a_real_photo(pycaffe, nsfw_dir, testdata):
    from savedeep.data.preprocess import PreprocessSpec, Preprocessor, load_mean

    net = pycaffe.Net(str(nsfw_dir / "deploy.prototxt"), pycaffe.TEST, weights=str(nsfw_dir / "weights.caffemodel"))
    assert net.blobs["data"].data.shape == (1, 3, 224, 224)
    x = Preprocessor(PreprocessSpec(), load_mean(nsfw_dir / "mean.npy"), (3, 224, 224)).load(
        testdata / "images" / "cat.jpg"
    )
    net.blobs["data"].data[...] = x[None]
    prob = net.forward()["prob"][0].copy()
    assert prob.shape == (2,) and abs(prob.sum() - 1) < 1e-5
    assert prob[0] > 0.9  # a cat photo is safe for work, with confidence


@pytest.mark.slow
def test_demo_config_runs(tmp_path):
    demo = prepare(tmp_path / "demo")  # what scripts/setup.sh lays out in demo/
    res = savedeep.run(
        ROOT / "configs" / "demo.yaml",
        model=demo / "model",
        images=demo / "images",
        output=tmp_path / "out" / "acts.pk",
        gpus="cpu",
    )
    assert res.rows == len(list((demo / "images").iterdir())) and res.failures == 0
    df = savedeep.load(tmp_path / "out" / "acts.pk")
    assert list(df.columns) == ["image", "pool", "fc_nsfw", "prob", "eltwise_stage3_block2"]
    assert df["eltwise_stage3_block2"].iloc[0].shape == (1024, 2, 2)
    np.testing.assert_allclose(np.stack(df["prob"]).sum(axis=1), 1.0, rtol=1e-5)
