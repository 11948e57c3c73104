"""Shared fixtures, and a leak check that runs after every test."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTDATA = ROOT / "tests" / "data"  # carried in the repo: see tests/data/README.md
SHM_PREFIX = "savedeep_"  # see savedeep/runner/shm.py: every segment we create starts with it

os.environ.setdefault("GLOG_minloglevel", "2")


@pytest.fixture(scope="session")
def testdata() -> Path:
    """tests/data: the BVLC deploy definitions, the ILSVRC-2012 mean and three photos."""
    return TESTDATA


def setup_record() -> dict | None:
    """What scripts/setup.sh was told to install into this environment (None: not set up by it)."""
    import json
    import sys

    try:
        return json.loads((Path(sys.prefix) / "savedeep-setup.json").read_text())
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="session")
def pycaffe():
    """The pycaffe module. Its absence is a failure, except where the set-up was told to leave it out."""
    try:
        import caffe
    except ImportError as exc:  # pragma: no cover - depends on the machine
        record = setup_record()
        if record is not None and record.get("caffe") is False:
            pytest.skip("pycaffe left out by the set-up (scripts/setup.sh --no-caffe)")
        pytest.fail(
            f"pycaffe does not import ({exc}); scripts/setup.sh builds it (or run it with --no-caffe "
            "to test without pycaffe)"
        )
    caffe.set_mode_cpu()
    return caffe


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say in the closing lines when pycaffe's tests were skipped because the set-up left it out."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "left out by the set-up" in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(
            f"pycaffe: left out by the set-up (--no-caffe): {len(skipped)} tests skipped", yellow=True
        )


@pytest.fixture(scope="session")
def nsfw_dir(tmp_path_factory) -> Path:
    """A savedeep model directory holding the real open_nsfw model."""
    from savedeep.demo import prepare_model

    return prepare_model(tmp_path_factory.mktemp("nsfw") / "model")


# The photos every test draws from, by name and in this order: tests take `photos[:N]` or pick
# by name, and get the same images on every machine (the three in tests/data, then
# scikit-image's, in savedeep.demo.DEMO_PHOTOS's order).
CARRIED_PHOTOS = ("cat.jpg", "cat_gray.jpg", "fish-bike.jpg")


@pytest.fixture(scope="session")
def photos(testdata, tmp_path_factory) -> list[Path]:
    """Real photos, fixed and named: tests/data's three and scikit-image's (savedeep.demo.DEMO_PHOTOS)."""
    from savedeep.demo import DEMO_PHOTOS, prepare_images

    skimage_dir = tmp_path_factory.mktemp("photos")
    prepare_images(skimage_dir)
    named = [testdata / "images" / n for n in CARRIED_PHOTOS] + [skimage_dir / n for n in DEMO_PHOTOS]
    missing = [p.name for p in named if not p.is_file()]
    assert not missing, f"test photos missing: {missing} (tests/data/images, or scikit-image's data folder)"
    return named


def _is_resource_tracker(p: psutil.Process) -> bool:
    # multiprocessing's resource tracker is started once per interpreter and
    # outlives runs by design (it unlinks segments if their owner dies).
    try:
        return any("resource_tracker" in part for part in p.cmdline())
    except psutil.Error:
        return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's live process
        return True
    return True


def _all_shm() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(SHM_PREFIX)}
    except FileNotFoundError:  # pragma: no cover
        return set()


def _leaked_shm(before: set[str]) -> set[str]:
    """Every savedeep_* segment made during the test, by whoever made it, that is still there.

    Segments are named ``savedeep_<creating pid>_...``. One whose creator is still alive and
    is not this process belongs to another run on the machine (a benchmark, another test
    session) and is left to it; one made by this process, or by any process that has
    ended (a worker of this test creating a segment and never unlinking it), is a leak.
    """
    leaked = set()
    for name in _all_shm() - before:
        pid = name[len(SHM_PREFIX) :].split("_", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or not _pid_alive(int(pid)):
            leaked.add(name)
    return leaked


def _fixture_daemons() -> set[int]:
    """The daemons a module fixture started and stops itself (tests/slurm_cluster.py), and their descendants
    (the jobs they run: each test waits for its own jobs to end)."""
    import sys

    mod = sys.modules.get("slurm_cluster")
    pids: set[int] = set()
    for pid in getattr(mod, "RUNNING", ()) if mod else ():
        try:
            pids |= {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
        except psutil.Error:
            pass
    return pids


def _assert_no_leaks(before: set[str], what: str) -> None:
    me = psutil.Process()
    deadline = time.monotonic() + 5.0
    while True:
        daemons = _fixture_daemons()
        children = [
            c
            for c in me.children(recursive=True)
            if c.is_running()
            and c.status() != psutil.STATUS_ZOMBIE
            and not _is_resource_tracker(c)
            and c.pid not in daemons
        ]
        leaked_shm = _leaked_shm(before)
        if (not children and not leaked_shm) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for c in children:
        c.kill()
    assert not children, f"{what}: child processes left behind: {[(c.pid, c.name()) for c in children]}"
    assert not leaked_shm, f"{what}: shared-memory segments left behind: {sorted(leaked_shm)}"


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves a child process or a shared-memory segment behind."""
    before = _all_shm()
    yield
    _assert_no_leaks(before, "this test")


@pytest.fixture(scope="module", autouse=True)
def no_leaks_in_module_fixtures():
    """The same check around each module: runs made by module-scoped fixtures happen before a
    test's own snapshot, so only this one sees what they leave."""
    before = _all_shm()
    yield
    _assert_no_leaks(before, "this module's fixtures")


@pytest.fixture(scope="session")
def caffenet_dir(testdata, tmp_path_factory) -> Path:
    """CaffeNet (tests/data's deploy.prototxt) with seeded random weights in a real .caffemodel,
    and the ILSVRC-2012 mean image (3, 256, 256) as its mean.npy."""

    from savedeep.caffe.synthetic import random_weights, write_caffemodel
    from savedeep.caffe.model import load_net

    d = tmp_path_factory.mktemp("caffenet") / "model"
    d.mkdir()
    shutil.copyfile(testdata / "models" / "caffenet" / "deploy.prototxt", d / "deploy.prototxt")
    shutil.copyfile(testdata / "models" / "ilsvrc_2012_mean.npy", d / "mean.npy")
    net = load_net(d / "deploy.prototxt")
    write_caffemodel(d / "weights.caffemodel", net, random_weights(net, seed=1))
    return d


def copy_photos(photos: list[Path], directory: Path, names) -> Path:
    """Copy the named photos of the ``photos`` fixture into ``directory`` (made if needed); returns it."""
    by_name = {p.name: p for p in photos}
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(by_name[name], directory / name)
    return directory


def make_bad_images(directory: Path, photo: Path) -> dict[str, str]:
    """Write broken image files next to real ones; returns {file name: what is wrong}."""
    data = photo.read_bytes()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bad_truncated.jpg").write_bytes(data[: len(data) // 3])
    (directory / "bad_empty.jpg").write_bytes(b"")
    (directory / "bad_text.jpg").write_text("this is not an image\n")
    return {"bad_truncated.jpg": "truncated", "bad_empty.jpg": "zero-byte", "bad_text.jpg": "not an image"}


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A folder laid out as the README's first command leaves the clone: demo/ prepared and the demo run.
    The docs' examples (tests/test_docs.py) and the peer recipes (tests/test_engines_peers.py) run here."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("readme")
    (root / "configs").mkdir()
    shutil.copyfile(ROOT / "configs" / "demo.yaml", root / "configs" / "demo.yaml")
    subprocess.run(
        [sys.executable, "-m", "savedeep.demo", str(root / "demo")], check=True, timeout=300, capture_output=True
    )
    # The second half of the README's first command, as written (the set-up is what the test session has).
    script = Path(sys.executable).parent / "savedeep"
    savedeep = [str(script)] if script.exists() else [sys.executable, "-m", "savedeep"]
    cmd = "savedeep run configs/demo.yaml --overwrite".split()[1:]
    r = subprocess.run([*savedeep, *cmd, "--no-progress"], cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (root / "demo" / "out" / "acts.pk").exists()
    return root
