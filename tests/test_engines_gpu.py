"""On a CUDA GPU: cuDNN convolutions, LRN, pooling, whole nets and a pipeline run on cuda:0 against the CPU.

Every test here is marked ``gpu`` and skips without a CUDA GPU (``pytest -m gpu``
runs them; benchmarks/gpu_check.sh runs them on a lent GPU machine). pycaffe is
not needed: weights are savedeep's own seeded random caffemodels.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.nets import LAYER_CASES, rel_err, write_net

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TOLERANCE = 1e-4
GPU_CASES = [c for c in LAYER_CASES if c.startswith(("conv", "deconv", "pool", "lrn", "ip"))]


def _model_dir(tmp_path: Path, name: str, body: str, shape: tuple[int, ...], seed: int = 7) -> Path:
    from savedeep.caffe.synthetic import random_weights, write_caffemodel
    from savedeep.caffe.model import load_net

    d = tmp_path / name
    prototxt = write_net(d, name, body, shape)
    net = load_net(prototxt)
    write_caffemodel(d / "weights.caffemodel", net, random_weights(net, seed=seed))
    np.save(d / "mean.npy", np.zeros(shape[1], np.float32))
    return d


def _both(model_dir: Path, x: np.ndarray, blobs=None) -> tuple[dict, dict]:
    from savedeep.engines import create_engine
    from savedeep.caffe.model import load_model

    model = load_model(model_dir)
    blobs = list(blobs or model.net.blobs)
    cpu = create_engine("torch", model, "cpu", x.shape[0])
    gpu = create_engine("torch", model, "cuda:0", x.shape[0])
    try:
        return cpu.forward(x, blobs), gpu.forward(x, blobs)
    finally:
        cpu.close()
        gpu.close()


@pytest.mark.parametrize("case", GPU_CASES)
def test_layer_on_cuda_matches_cpu(case, tmp_path):
    """cuDNN convolutions (grouped, dilated, transposed), pooling with Caffe's rounding, LRN, inner products."""
    shape, body = LAYER_CASES[case]
    d = _model_dir(tmp_path, case, body, shape)
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    cpu, gpu = _both(d, x)
    errors = {b: rel_err(gpu[b], cpu[b]) for b in cpu}
    assert max(errors.values()) <= TOLERANCE, errors


def test_tf32_is_off_in_a_cuda_engine():
    from savedeep.engines.torch_engine import use_exact_fp32_on_cuda

    use_exact_fp32_on_cuda()
    assert torch.backends.fp32_precision == "ieee"
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"


def test_caffenet_every_blob_on_cuda_matches_cpu(caffenet_dir):
    x = np.random.default_rng(5).normal(scale=50, size=(4, 3, 227, 227)).astype(np.float32)
    cpu, gpu = _both(caffenet_dir, x)
    errors = {b: rel_err(gpu[b], cpu[b]) for b in cpu}
    assert max(errors.values()) <= TOLERANCE, errors


def test_pipeline_on_cuda_matches_the_cpu_run(caffenet_dir, photos, tmp_path):
    import savedeep
    from savedeep.config import load_config

    images = tmp_path / "imgs"
    images.mkdir()
    for p in photos[:6]:
        shutil.copyfile(p, images / p.name)
    blobs = ["fc7", {"name": "conv1", "dtype": "float16"}, {"name": "conv5", "reduce": {"pool": "mean", "grid": 2}}]
    runs = {}
    for gpus in ("cpu", (0,)):
        tag = "cpu" if gpus == "cpu" else "gpu"
        cfg = load_config(
            None,
            {
                "model": caffenet_dir,
                "images": images,
                "output": tmp_path / tag / "a.pk",
                "blobs": blobs,
                "gpus": gpus,
                "require_gpu": gpus != "cpu",
                "batch_size": 4,
                "pickle": False,
            },
        )
        runs[tag] = savedeep.run(cfg)
    res = runs["gpu"]
    assert res.devices == ["cuda:0"] and "devices: cuda:0" in res.summary()
    manifest = json.loads((tmp_path / "gpu" / "a.parquet" / "_manifest.json").read_text())
    (dev,) = manifest["devices"]
    assert dev["device"] == "cuda:0" and dev["local_device"] == "cuda:0"
    assert dev["name"] and dev["uuid"].startswith(("GPU-", "MIG-")) and dev["cuda_runtime"] and dev["driver_cuda"]
    assert dev["CUDA_VISIBLE_DEVICES"] and "," not in dev["CUDA_VISIBLE_DEVICES"]
    for b in ("fc7", "conv1", "conv5"):
        g = savedeep.load_array(tmp_path / "gpu" / "a.parquet", b)
        c = savedeep.load_array(tmp_path / "cpu" / "a.parquet", b)
        assert g.dtype == c.dtype
        assert rel_err(g.astype(np.float32), c.astype(np.float32)) <= (1e-3 if b == "conv1" else TOLERANCE), b
