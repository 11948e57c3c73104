"""The distribution: ``python -m build`` makes an sdist and a wheel (built from that sdist) that ``twine check``
passes; the wheel holds the whole package, ``py.typed`` and no top-level package but ``savedeep`` (in particular
no generic ``workers``); installed into a fresh virtual environment outside the repository, it runs:
``savedeep --help``, ``savedeep inspect`` and a run whose spawned workers can only import from the wheel.

The fresh environment gets the wheel alone (``--no-deps``) and sees the dependencies of the project's
environment through a ``.pth`` line naming its site-packages: a plain path, so the ``.pth`` files there (the
editable install's finder, which maps ``savedeep`` to this checkout) are not run, and ``savedeep`` can only
come from the wheel. The wheel's requirements must be met by what it sees.

One build and install, about 20 s on 2 cores (the build's isolated environment fetches setuptools, from pip's
cache after the first time): marked slow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _checkout_copy(dest: Path) -> Path:
    """The files git would commit (tracked, and new ones not ignored), links kept as links: a build from the
    working tree without its .venv, demo/ or build leftovers, and without writing into it."""
    names = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, names):
        src, dst = ROOT / name, dest / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree, not yet in the index
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    return dest


def _clean_env() -> dict[str, str]:
    """The environment without anything that would put this checkout on sys.path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    src = _checkout_copy(tmp_path_factory.mktemp("src") / "savedeep")
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_clean_env(),
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def _one(dist: Path, pattern: str) -> Path:
    found = sorted(dist.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def test_twine_check_passes_on_the_wheel_and_the_sdist(dist):
    files = [_one(dist, "*.whl"), _one(dist, "*.tar.gz")]
    r = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and r.stdout.count("PASSED") == 2, r.stdout + r.stderr


def _package_modules() -> set[str]:
    """Every module file of the package as the wheel must hold it (workers/ as savedeep/_workers/)."""
    out = {p.relative_to(ROOT).as_posix() for p in (ROOT / "savedeep").rglob("*.py")}
    out |= {"savedeep/_workers/" + p.relative_to(ROOT / "workers").as_posix() for p in (ROOT / "workers").rglob("*.py")}
    return out


def test_the_wheel_holds_the_package_py_typed_and_no_top_level_workers(dist):
    with zipfile.ZipFile(_one(dist, "*.whl")) as z:
        names = set(z.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        top_level = z.read(f"{info}/top_level.txt").decode().split()
        metadata = z.read(f"{info}/METADATA").decode()
    assert {n.split("/")[0] for n in names} == {"savedeep", info}  # no workers/, tests/, benchmarks/ ...
    assert top_level == ["savedeep"]
    assert "savedeep/py.typed" in names
    missing = _package_modules() - names
    assert not missing, f"modules left out of the wheel: {sorted(missing)}"
    assert "savedeep/_workers/consumer.py" in names
    # What an index page shows: the project's URLs (none until a public address exists), classifiers, keywords
    # and README.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert all(f"Project-URL: {k}, {v}" in metadata for k, v in project.get("urls", {}).items())
    assert all(f"Classifier: {c}" in metadata for c in project["classifiers"])
    assert "Keywords: caffe," in metadata and "Description-Content-Type: text/markdown" in metadata


def test_the_classifiers_are_pypis(dist):
    # twine check does not look at classifiers; PyPI refuses an upload with one it does not know.
    trove = pytest.importorskip("trove_classifiers")
    classifiers = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["classifiers"]
    assert [c for c in classifiers if c not in trove.classifiers] == []


def test_the_sdist_holds_the_workers_inside_the_package(dist):
    # The wheel above was built from this sdist (build's default); the link is stored as the files it points to.
    with tarfile.open(_one(dist, "*.tar.gz")) as t:
        members = {m.name.split("/", 1)[1]: m for m in t.getmembers() if "/" in m.name}
    assert members["savedeep/_workers/consumer.py"].isfile()
    assert "savedeep/py.typed" in members and "pyproject.toml" in members


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory) -> Path:
    """A fresh virtual environment outside the repository with the wheel installed; returns its bin/."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "project-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            str(_one(dist, "*.whl")),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_clean_env(),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return venv / "bin"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, env=_clean_env())


def test_the_installed_wheel_is_the_savedeep_imported_and_its_requirements_are_met(installed, tmp_path):
    code = (
        "import importlib.util, savedeep, savedeep._workers.consumer as c\n"
        "print(savedeep.__file__); print(c.__file__); print(importlib.util.find_spec('workers'))\n"
    )
    r = _run([str(installed / "python"), "-c", code], tmp_path)
    assert r.returncode == 0, r.stderr
    package, consumer, workers = r.stdout.split()
    venv = installed.parent
    assert Path(package).is_relative_to(venv) and Path(consumer).is_relative_to(venv), r.stdout
    assert workers == "None"  # the checkout's workers/ folder is not on the path, and nothing installs one
    # The wheel's own requirements (not its extras), met by what the fresh environment sees. Not pip check: it
    # also weighs the project environment's packages against the fresh one's own pip and setuptools.
    code = (
        "from importlib.metadata import PackageNotFoundError, requires, version\n"
        "from packaging.requirements import Requirement\n"
        "bad = []\n"
        "for req in map(Requirement, requires('savedeep')):\n"
        "    if req.marker is None or req.marker.evaluate({'extra': ''}):\n"
        "        try:\n"
        "            have = version(req.name)\n"
        "        except PackageNotFoundError:\n"
        "            have = None\n"
        "        if have is None or not req.specifier.contains(have, prereleases=True):\n"
        "            bad.append(f'{req} (have {have})')\n"
        "print(len(requires('savedeep')), bad)\n"
    )
    r = _run([str(installed / "python"), "-c", code], tmp_path)
    assert r.returncode == 0 and r.stdout.split(" ", 1)[1].strip() == "[]", r.stdout + r.stderr


def test_the_installed_command_runs_help_and_inspect(installed, tmp_path):
    r = _run([str(installed / "savedeep"), "--help"], tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("usage: savedeep"), r.stdout + r.stderr
    r = _run([str(installed / "savedeep"), "inspect", str(ROOT / "tests/data/models/caffenet")], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()[2:] if line.strip()}
    assert (rows["data"], rows["conv1"], rows["fc7"], rows["prob"]) == ("3x227x227", "96x55x55", "4096", "1000")


def test_the_installed_wheel_runs_a_model_in_spawned_workers(installed, caffenet_dir, testdata, tmp_path):
    # Producer, consumer and writer processes are spawned and import savedeep._workers by name: only the
    # wheel's copy is there to import.
    out = tmp_path / "out" / "acts.pk"
    r = _run(
        [
            str(installed / "savedeep"),
            "run",
            "-m",
            str(caffenet_dir),
            "-b",
            "fc7,prob",
            "-i",
            str(testdata / "images"),
            "-o",
            str(out),
            "--gpus",
            "cpu",
            "--engine",
            "torch",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    import savedeep

    df = savedeep.load(out)
    assert sorted(df["image"]) == ["cat.jpg", "cat_gray.jpg", "fish-bike.jpg"]
    assert df.loc[0, "fc7"].shape == (4096,) and df.loc[0, "prob"].shape == (1000,)
