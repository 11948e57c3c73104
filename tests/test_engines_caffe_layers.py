"""The caffe engine's refusals, known before anything starts (NOTE [caffe engine refusals] in
savedeep/engines/caffe_layers.py): pycaffe's layer registry read in a subprocess, cached per install.

The refusals themselves, through the real CLI (exit 3, one line, no worker, nothing written, validate
agreeing), are rows of tests/test_user_mistakes.py (``caffe-engine-*``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from savedeep.caffe.model import load_net
from savedeep.cli import main
from savedeep.engines.caffe_layers import check_runnable, layer_registry, probe_registry, pycaffe_dir
from savedeep.errors import UnsupportedLayerError
from tests.nets import S, layer, write_net

# CaffeNet edited into a net the caffe engine of the pycaffe scripts/setup.sh builds cannot run (the
# weights stay valid): a layer type its registry lacks, or STOCHASTIC pooling on the CPU.
_RELU7 = 'layer {\n  name: "relu7"'
CAFFENET_EDITS = {
    "clip": (
        _RELU7,
        'layer { name: "clip7" type: "Clip" bottom: "fc7" top: "fc7" clip_param { min: 0 max: 1 } }\n' + _RELU7,
    ),
    "swish": (_RELU7, 'layer { name: "swish7" type: "Swish" bottom: "fc7" top: "fc7" }\n' + _RELU7),
    "stochastic": ("pool: MAX", "pool: STOCHASTIC"),
}


@pytest.mark.caffe
def test_the_probe_reads_the_registry_of_the_pycaffe_this_python_imports(pycaffe):
    pkg = pycaffe_dir()
    assert pkg == Path(pycaffe.__file__).resolve().parent
    types, files = probe_registry(pkg)
    assert types == set(pycaffe.layer_type_list())
    assert {"Clip", "Swish"}.isdisjoint(types)  # what the caffe-engine rows of test_user_mistakes.py rely on
    # the libraries that hold the registry, for the cache's key: the extension and libcaffe
    names = {Path(f).name for f in files}
    assert any(n.startswith("_caffe") for n in names) and any(n.startswith("libcaffe") for n in names), files


@pytest.mark.caffe
def test_the_registry_is_cached_per_install_until_a_library_changes(pycaffe, tmp_path):
    real = set(pycaffe.layer_type_list())
    pkg = tmp_path / "site" / "caffe"  # a second install: a copy (its extension finds libcaffe by $ORIGIN)
    shutil.copytree(Path(pycaffe.__file__).resolve().parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "cache" / "savedeep" / "caffe-layers.json"

    def mark() -> None:  # a cached answer pycaffe would never give: seen only if the cache is used
        data = json.loads(cache.read_text())
        data["entries"][str(pkg)]["types"] = ["Marked"]
        cache.write_text(json.dumps(data))

    reg = layer_registry(pkg, cache)
    assert reg is not None and reg.types == real and reg.pycaffe == pkg
    stamp = json.loads(cache.read_text())["entries"][str(pkg)]["stamp"]
    lib = next(pkg.glob("libcaffe*"))
    assert str(lib) in stamp and str(next(pkg.glob("_caffe*"))) in stamp
    mark()
    assert layer_registry(pkg, cache).types == {"Marked"}  # type: ignore[union-attr]
    # another install has its own entry, and adding it keeps this one
    assert layer_registry(pycaffe_dir(), cache).types == real  # type: ignore[union-attr]
    assert layer_registry(pkg, cache).types == {"Marked"}  # type: ignore[union-attr]
    # a rebuilt libcaffe (a new mtime): asked again
    st = lib.stat()
    os.utime(lib, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert layer_registry(pkg, cache).types == real  # type: ignore[union-attr]
    # a library added to the package: asked again
    mark()
    (pkg / "libextra.so").write_bytes(b"")
    assert layer_registry(pkg, cache).types == real  # type: ignore[union-attr]


def test_a_pycaffe_that_does_not_load_is_a_warning_and_left_to_the_consumer(tmp_path, caplog):
    pkg = tmp_path / "caffe"  # no _caffe extension: the probe imports the package, which fails
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('a broken build')\n")
    cache = tmp_path / "caffe-layers.json"
    with caplog.at_level(logging.WARNING, logger="savedeep.engines.caffe_layers"):
        assert layer_registry(pkg, cache) is None
    assert "a broken build" in caplog.text and "consumers check them" in caplog.text
    assert not cache.exists()  # a failure is not cached


def test_stochastic_pooling_is_refused_off_the_gpu_only(tmp_path):
    net = load_net(
        write_net(
            tmp_path, "net", layer("p", "Pooling", "data", "p", "pooling_param", pool="STOCHASTIC", kernel_size=2), S
        )
    )
    check_runnable(net, {"Input", "Pooling"}, True, "deploy.prototxt", "/opt/caffe")
    with pytest.raises(UnsupportedLayerError, match="layer 'p' \\(Pooling\\) pools STOCHASTIC.*only on a GPU"):
        check_runnable(net, {"Input", "Pooling"}, False, "deploy.prototxt", "/opt/caffe")
    with pytest.raises(UnsupportedLayerError, match="type 'Pooling', which this pycaffe \\(/opt/caffe\\) does not"):
        check_runnable(net, {"Input"}, True, "deploy.prototxt", "/opt/caffe")


@pytest.mark.caffe
@pytest.mark.parametrize("edit", sorted(CAFFENET_EDITS))
def test_the_torch_engine_passes_the_preflight_the_caffe_engine_fails(edit, pycaffe, caffenet_dir, testdata, tmp_path):
    """The caffe engine's refusals are the caffe engine's: the torch engine runs these nets."""
    model = tmp_path / "model"
    model.mkdir()
    for name in ("weights.caffemodel", "mean.npy"):
        os.symlink(caffenet_dir / name, model / name)
    old, new = CAFFENET_EDITS[edit]
    (model / "deploy.prototxt").write_text((caffenet_dir / "deploy.prototxt").read_text().replace(old, new, 1))
    args = ["-m", str(model), "-b", "fc7", "-i", str(testdata / "images"), "-o", str(tmp_path / "out" / "acts.pk")]
    args += ["--gpus", "cpu"]
    assert main(["validate", *args, "--engine", "torch"]) == 0
    assert main(["validate", *args, "--engine", "caffe"]) == 3
    assert not (tmp_path / "out").exists()


@pytest.mark.caffe
def test_the_parent_refuses_without_importing_pycaffe(pycaffe, caffenet_dir, testdata, tmp_path):
    """The preflight reads the registry in a subprocess: pycaffe's CUDA build would touch CUDA in the parent."""
    model = tmp_path / "model"
    model.mkdir()
    for name in ("weights.caffemodel", "mean.npy"):
        os.symlink(caffenet_dir / name, model / name)
    old, new = CAFFENET_EDITS["swish"]
    (model / "deploy.prototxt").write_text((caffenet_dir / "deploy.prototxt").read_text().replace(old, new, 1))
    args = ["validate", "-m", str(model), "-b", "fc7", "-i", str(testdata / "images"), "-o", str(tmp_path / "o.pk")]
    script = (
        "import sys; from savedeep.cli import main; rc = main(sys.argv[1:]); "
        "print('caffe imported' if 'caffe' in sys.modules else 'caffe not imported'); sys.exit(rc)"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(Path(__file__).parents[1])}
    r = subprocess.run(
        [sys.executable, "-c", script, *args, "--engine", "caffe", "--gpus", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 3 and "type 'Swish'" in r.stderr, r.stderr
    assert r.stdout.strip() == "caffe not imported"
