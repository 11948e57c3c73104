"""Real runs for the report's tests: the demo model (open_nsfw) on real photos listed in a CSV with a
category column, and the same run interrupted (a partial output)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import savedeep
from savedeep.errors import WorkerError

from conftest import copy_photos, make_bad_images

# Real photos (tests/conftest.py's `photos`) and the category each belongs to.
CATEGORIES = {
    "cat.jpg": "animal",
    "cat_gray.jpg": "animal",
    "chelsea.png": "animal",
    "astronaut.png": "person",
    "camera.png": "person",
    "fish-bike.jpg": "vehicle",
    "motorcycle_left.png": "vehicle",
    "motorcycle_right.png": "vehicle",
    "rocket.jpg": "vehicle",
    "brick.png": "texture",
    "grass.png": "texture",
    "gravel.png": "texture",
    "hubble_deep_field.jpg": "space",
    "moon.png": "space",
    "coffee.png": "object",
    "coins.png": "object",
}
BLOBS = ["pool", "prob", {"name": "eltwise_stage3_block2", "dtype": "float16", "reduce": {"pool": "mean", "grid": 2}}]
BLOB_NAMES = ["pool", "prob", "eltwise_stage3_block2"]


def make_image_list(photos: list[Path], root: Path) -> Path:
    """images/ with the photos and two broken files, and list.csv (path, category) naming all of them."""
    images = copy_photos(photos, root / "images", CATEGORIES)
    rows = [(f"images/{name}", category) for name, category in CATEGORIES.items()]
    bad = make_bad_images(images, images / "cat.jpg")
    rows += [(f"images/{name}", "broken") for name in sorted(bad)[:2]]
    listing = root / "list.csv"
    with open(listing, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "category"])
        w.writerows(rows)
    return listing


def run_categories(nsfw_dir: Path, photos: list[Path], root: Path, **overrides) -> Path:
    listing = make_image_list(photos, root)
    cfg = savedeep.load_config(
        None,
        model=nsfw_dir,
        images=listing,
        output=root / "out" / "acts.pk",
        gpus="cpu",
        batch_size=4,
        shard_size=4,
        blobs=BLOBS,
        **overrides,
    )
    result = savedeep.run(cfg)
    assert result.rows == len(CATEGORIES) and result.failures == 2
    return root / "out" / "acts.pk"


def run_partial(nsfw_dir: Path, photos: list[Path], root: Path) -> Path:
    """The same run stopped by a consumer failing at batch 2 (one batch per shard): shards 0-1 at most."""
    listing = make_image_list(photos, root)
    cfg = savedeep.load_config(
        None,
        model=nsfw_dir,
        images=listing,
        output=root / "out" / "acts.pk",
        gpus="cpu",
        batch_size=4,
        shard_size=4,
        blobs=BLOBS,
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("SAVEDEEP_FAULT", "role=consumer,batch=2,action=raise")
    try:
        with pytest.raises(WorkerError):
            savedeep.run(cfg)
    finally:
        mp.undo()
    return root / "out" / "acts.pk"
