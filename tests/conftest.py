"""Shared fixtures, and a leak check that runs after every test."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHM_PREFIX = "savedeep_"  # see savedeep/shm.py: every segment we create starts with it

os.environ.setdefault("GLOG_minloglevel", "2")


def _in_ci() -> bool:
    return bool(os.environ.get("CI"))


@pytest.fixture(scope="session")
def shared() -> Path:
    """The read-only ../shared folder beside the clone (models, images)."""
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the tests need the shared models and photos beside the clone")
    return SHARED


@pytest.fixture(scope="session")
def pycaffe():
    """The pycaffe module; locally a skip when it is not built, in CI a failure."""
    try:
        import caffe
    except ImportError as exc:  # pragma: no cover - depends on the machine
        if _in_ci():
            pytest.fail(f"pycaffe must be importable in CI (scripts/setup.sh builds it): {exc}")
        pytest.skip(f"pycaffe not built here: {exc}")
    caffe.set_mode_cpu()
    return caffe


@pytest.fixture(scope="session")
def nsfw_dir(tmp_path_factory) -> Path:
    """A savedeep model directory holding the real open_nsfw model."""
    from savedeep.demo import prepare_model

    return prepare_model(tmp_path_factory.mktemp("nsfw") / "model")


@pytest.fixture(scope="session")
def photos(shared, tmp_path_factory) -> list[Path]:
    """Real photos: the shared ones and scikit-image's."""
    from savedeep.demo import prepare_images

    skimage_photos = prepare_images(tmp_path_factory.mktemp("photos"))
    return sorted((shared / "images").glob("*.jpg")) + skimage_photos


def _our_shm() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(SHM_PREFIX)}
    except FileNotFoundError:  # pragma: no cover
        return set()


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves a child process or a shared-memory segment of ours behind."""
    before = _our_shm()
    yield
    me = psutil.Process()
    deadline = time.monotonic() + 5.0
    while True:
        children = [c for c in me.children(recursive=True) if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        leaked_shm = _our_shm() - before
        if (not children and not leaked_shm) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for c in children:
        c.kill()
    assert not children, f"child processes left behind: {[(c.pid, c.name()) for c in children]}"
    assert not leaked_shm, f"shared-memory segments left behind: {sorted(leaked_shm)}"
