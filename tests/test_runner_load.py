"""Load: thousands of small real-photo-derived images through 4 producers and 2 CPU consumers."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import savedeep
from tests.nets import TINY
from savedeep.caffe.synthetic import random_weights, write_caffemodel
from savedeep.caffe.model import load_net

pytestmark = pytest.mark.slow


def test_5000_images_all_accounted_for(photos, tmp_path):
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "deploy.prototxt").write_text(TINY)
    np.save(model / "mean.npy", np.array([104, 117, 123], np.float32))
    net = load_net(model / "deploy.prototxt")
    write_caffemodel(model / "weights.caffemodel", net, random_weights(net, seed=0))

    # 5,000 small crops of real photos, in 50 folders, 7 of them broken
    rng = np.random.default_rng(0)
    sources = [cv2.imread(str(p)) for p in photos]
    sources = [s for s in sources if s is not None and min(s.shape[:2]) >= 64]
    imgs = tmp_path / "imgs"
    broken = set(rng.choice(5000, size=7, replace=False).tolist())
    for i in range(5000):
        d = imgs / f"{i % 50:02d}"
        d.mkdir(parents=True, exist_ok=True)
        if i in broken:
            (d / f"{i:05d}.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
            continue
        s = sources[i % len(sources)]
        y, x = rng.integers(0, s.shape[0] - 48), rng.integers(0, s.shape[1] - 48)
        cv2.imwrite(str(d / f"{i:05d}.jpg"), s[y : y + 48, x : x + 48], [cv2.IMWRITE_JPEG_QUALITY, 85])

    out = tmp_path / "out" / "acts.pk"
    res = savedeep.run(
        savedeep.load_config(
            None,
            model=model,
            images=imgs,
            output=out,
            blobs=["pool1", "fc"],
            gpus="cpu",
            producers=4,
            cpu_consumers=2,
            batch_size=16,
            shard_size=700,
        )
    )
    assert res.images == 5000 and res.rows == 4993 and res.failures == 7
    df = savedeep.load(out)
    keys = list(df["image"])
    assert len(keys) == len(set(keys)) == 4993 and keys == sorted(keys)
    manifest = json.loads((out.parent / "acts.parquet" / "_manifest.json").read_text())
    failed = {f["image"] for f in manifest["failures"]}
    expected = {f"{i % 50:02d}/{i:05d}.jpg" for i in range(5000)}
    assert set(keys) | failed == expected and not set(keys) & failed
    assert {f"{i % 50:02d}/{i:05d}.jpg" for i in broken} == failed
    assert len(manifest["shards"]) == 8 and all(s["complete"] for s in manifest["shards"])
