"""Resume keeps what was finished and refuses what would mix two kinds of rows.

Bugs these are for:
- a resume that recomputes every shard instead of keeping the finished ones
  (the output would still be right, so comparing outputs cannot see it);
- a result key dropped from the fingerprint (``preprocess``, say): a resume
  after changing it would silently mix rows of two preprocessings;
- a changed model file not noticed;
- a refused resume that changes the output anyway.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import savedeep
from savedeep.config import RESULT_KEYS
from savedeep.errors import OutputError, WorkerError

from conftest import copy_photos

pytestmark = pytest.mark.slow

BLOBS = ["conv1", "fc7"]
NAMES = (
    "cat.jpg",
    "cat_gray.jpg",
    "fish-bike.jpg",
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "camera.png",
)


@pytest.fixture(scope="module")
def images(photos, tmp_path_factory) -> Path:
    return copy_photos(photos, tmp_path_factory.mktemp("resume_imgs"), NAMES)


def _config(model: Path, images: Path, out: Path, **kw):
    keys = dict(
        model=model, images=images, output=out, blobs=BLOBS, gpus="cpu", batch_size=2, shard_size=2, producers=1
    )
    keys.update(kw)
    return savedeep.load_config(None, **keys)


@pytest.fixture(scope="module")
def reference(caffenet_dir, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume_ref") / "acts.pk"
    savedeep.run(_config(caffenet_dir, images, out))
    return savedeep.load(out)


@pytest.fixture(scope="module")
def partial(caffenet_dir, images, tmp_path_factory) -> Path:
    """An output interrupted by a consumer failing at batch 2 of 4 (one batch per shard): the shards
    before it finished (normally 0 and 1: the writer may not have closed both when the run stopped)."""
    out = tmp_path_factory.mktemp("resume_partial") / "acts.pk"
    mp = pytest.MonkeyPatch()
    mp.setenv("SAVEDEEP_FAULT", "role=consumer,batch=2,action=raise")
    try:
        with pytest.raises(WorkerError):
            savedeep.run(_config(caffenet_dir, images, out))
    finally:
        mp.undo()
    manifest = json.loads((out.with_suffix(".parquet") / "_manifest.json").read_text())
    finished = [s["index"] for s in manifest["shards"] if s["complete"]]
    assert finished and finished == list(range(len(finished))) and len(finished) <= 2, finished
    return out


def _finished(out: Path) -> set[str]:
    manifest = json.loads((out.with_suffix(".parquet") / "_manifest.json").read_text())
    return {s["file"] for s in manifest["shards"] if s["complete"]}


def _copy_output(partial: Path, root: Path) -> Path:
    shutil.copytree(partial.with_suffix(".parquet"), root / "acts.parquet")
    return root / "acts.pk"


def _snapshot(directory: Path) -> dict[str, tuple[int, int, str]]:
    """name -> (inode, mtime_ns, sha256) of every file in the directory."""
    return {
        f.name: (f.stat().st_ino, f.stat().st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
        for f in sorted(directory.iterdir())
    }


def test_resume_keeps_finished_shards_untouched(caffenet_dir, images, partial, reference, tmp_path):
    out = _copy_output(partial, tmp_path)
    directory = out.with_suffix(".parquet")
    before = _snapshot(directory)
    finished = _finished(out)
    assert finished and finished <= set(before)

    result = savedeep.run(_config(caffenet_dir, images, out), resume=True)

    assert result.shards_kept == len(finished)
    after = _snapshot(directory)
    for name in finished:
        assert after[name] == before[name], f"{name} was rewritten by the resume"
    df = savedeep.load(out)
    assert list(df["image"]) == list(reference["image"]) == sorted(NAMES)
    for b in BLOBS:
        assert np.array_equal(np.stack(df[b]), np.stack(reference[b])), b


# One change per result key (and per model file): each must be refused, naming what changed.
CHANGES = {
    "blobs": dict(blobs=["fc7"]),
    "engine": dict(engine="caffe"),
    "preprocess.resize": dict(preprocess={"resize": "short-side-crop"}),
    "preprocess.mean_mode": dict(preprocess={"mean_mode": "image-crop"}),
    "preprocess.raw_scale": dict(preprocess={"raw_scale": 1.0}),
    "shard_size": dict(shard_size=4),
    "storage": dict(storage="binary"),
}


def test_every_result_key_has_a_change_case():
    covered = {k.split(".")[0] for k in CHANGES} | {"model", "images"}
    assert covered == set(RESULT_KEYS)


@pytest.mark.parametrize(
    "what", sorted(CHANGES) + ["model", "images", "weights.caffemodel", "mean.npy", "deploy.prototxt"]
)
def test_resume_refuses_a_change_naming_it(what, caffenet_dir, images, partial, tmp_path):
    out = _copy_output(partial, tmp_path)
    model, imgs, keys = caffenet_dir, images, CHANGES.get(what, {})
    if what == "model":  # the same files in another directory: another model path
        model = tmp_path / "model_copy"
        shutil.copytree(caffenet_dir, model)
    elif what == "images":
        imgs = tmp_path / "images_copy"
        shutil.copytree(images, imgs)
    elif what in ("weights.caffemodel", "mean.npy", "deploy.prototxt"):
        # The model path of the run, its file changed in place. The caffenet fixture is shared, so
        # the interrupted run's model hashes are replaced by another model's in the copied manifest.
        manifest_path = out.with_suffix(".parquet") / "_manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["model"]["sha256"][what] = "0" * 64
        manifest_path.write_text(json.dumps(manifest))
    before = _snapshot(out.with_suffix(".parquet"))

    with pytest.raises(OutputError) as exc:
        savedeep.run(_config(model, imgs, out, **keys), resume=True)

    message = str(exc.value)
    assert "cannot resume" in message and "--overwrite" in message
    named = what.split(".")[0] if what in CHANGES or what in ("model", "images") else what
    # exactly what changed is named, and nothing that did not change
    if what in ("weights.caffemodel", "mean.npy", "deploy.prototxt"):
        assert f"these changed: model files {named}. " in message, message
    else:
        assert f"these changed: config keys {named}. " in message, message
    assert _snapshot(out.with_suffix(".parquet")) == before, "a refused resume changed the output"
    assert not out.exists()
