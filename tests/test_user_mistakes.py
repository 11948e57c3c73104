"""Every user mistake is one clear error before any work starts (issue #21).

One table, ``MISTAKES``: each row builds one mistake in a fresh folder (the
config file and its keys and flags, the model directory's three files, the
image source and its entries, the output path, --resume/--overwrite against
what is on disk, the environment), runs the real CLI on it and checks that

- the exit code is the documented one (2 config, 3 model, 4 images, 5 output);
- stderr holds exactly one error line, which names the file or key and the fix;
- there is no traceback and no "internal error";
- no worker process started (each worker leaves a file in
  ``$SAVEDEEP_RECORD_STARTS`` as the first thing it does, see savedeep/runner/faults.py),
  except for the one mistake only decoding can find;
- the folder holds exactly what it held before: nothing that looks like output,
  nothing of the user's deleted;
- ``savedeep validate`` with the same flags gives the same exit code and the same line.

Most rows call ``savedeep.cli.main`` in this process (fast); the rows marked
``subprocess`` (those of the issue, and those that need a private mount
namespace) run ``python -m savedeep`` so that exit codes and stderr are those of
a real command. docs/how-to/troubleshooting.md shows these messages.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from savedeep.cli import main

ROOT = Path(__file__).resolve().parents[1]
ERROR_LINE = re.compile(r"^savedeep(?: (?:run|validate))?: error: ")


@dataclass
class Case:
    """The folder of one mistake, with a good model, good images and an output path inside it."""

    dir: Path
    good_model: Path
    good_images: Path
    testdata: Path
    finished: Path  # a finished output (its .pk), to copy for the rows about existing outputs
    monkeypatch: pytest.MonkeyPatch
    env: dict[str, str] = field(default_factory=dict)
    wrap: Callable[[list[str]], list[str]] | None = None

    @property
    def out(self) -> Path:
        return self.dir / "out" / "acts.pk"

    def model(self, **files: bytes | str | None) -> Path:
        """A model directory: the good one's files (linked), with ``files`` replaced (None: missing)."""
        d = self.dir / "model"
        d.mkdir(exist_ok=True)
        for name in ("deploy.prototxt", "weights.caffemodel", "mean.npy"):
            key = name.replace(".", "_")
            if key not in files:
                os.symlink(self.good_model / name, d / name)
            elif isinstance(files[key], bytes):
                (d / name).write_bytes(files[key])
            elif isinstance(files[key], str):
                (d / name).write_text(files[key])
        return d

    def prototxt(self) -> str:
        return (self.good_model / "deploy.prototxt").read_text()

    def weights(self) -> bytes:
        return (self.good_model / "weights.caffemodel").read_bytes()

    def listing(self, name: str, text: str | bytes) -> Path:
        p = self.dir / name
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return p

    def config(self, extra: str = "", **keys) -> str:
        """A config file with good values for the required keys, ``keys`` changed and ``extra`` YAML appended."""
        values = {
            "model": str(self.good_model),
            "images": str(self.good_images),
            "output": str(self.out),
            "blobs": ["fc7"],
            "gpus": "cpu",
        }
        values.update(keys)
        values = {k: v for k, v in values.items() if v is not None}
        p = self.dir / "run.yaml"
        p.write_text(yaml.safe_dump(values, sort_keys=False) + extra)
        return str(p)

    def copy_finished(self) -> None:
        self.out.parent.mkdir(parents=True)
        for p in self.finished.parent.iterdir():
            (shutil.copytree if p.is_dir() else shutil.copyfile)(p, self.out.parent / p.name)

    def flags(
        self, model: Path | None = None, images: Path | None = None, output: Path | None = None, blobs: str = "fc7"
    ) -> list[str]:
        """The four flags of the original script, good unless given."""
        return [
            "-m",
            str(model or self.good_model),
            "-b",
            blobs,
            "-i",
            str(images or self.good_images),
            "-o",
            str(output or self.out),
            "--gpus",
            "cpu",
        ]


@dataclass(frozen=True)
class Mistake:
    id: str
    code: int
    build: Callable[[Case], list[str]]  # makes the mistake; returns the arguments after `savedeep run`
    needles: tuple[str, ...]  # in the error line: the file or key, what is wrong, the fix
    workers: bool = False  # only a worker can find it (it decodes the images)
    subprocess: bool = False


def _setenv(c: Case, name: str, value: str) -> None:
    c.env[name] = value
    c.monkeypatch.setenv(name, value)


def _private_mount(c: Case, mount: str) -> None:
    """Run the command in a private mount namespace after ``mount`` (a tmpfs of a container, a read-only disk)."""
    c.wrap = lambda cmd: ["unshare", "--mount", "sh", "-c", f"{mount} && exec {shlex.join(cmd)}"]


def _no_pycaffe(c: Case) -> list[str]:
    # How Python spells "this module cannot be imported here": import caffe raises ModuleNotFoundError.
    c.monkeypatch.setitem(sys.modules, "caffe", None)
    return c.flags() + ["--engine", "caffe"]


def _caffe_engine(c: Case, old: str, new: str) -> list[str]:
    """The good CaffeNet with ``old`` replaced by ``new`` in its prototxt (same weights), on the caffe engine."""
    prototxt = c.prototxt()
    assert old in prototxt
    return c.flags(model=c.model(deploy_prototxt=prototxt.replace(old, new, 1))) + ["--engine", "caffe"]


# A layer of BVLC Caffe master that the fork scripts/setup.sh builds lacks (its registry has no Clip or Swish).
_CLIP7 = 'layer {\n  name: "clip7"\n  type: "Clip"\n  bottom: "fc7"\n  top: "fc7"\n  clip_param { min: 0 max: 1 }\n}\n'
_SWISH7 = 'layer {\n  name: "swish7"\n  type: "Swish"\n  bottom: "fc7"\n  top: "fc7"\n}\n'
_FC7_RELU = 'layer {\n  name: "relu7"'


def _resume_changed(c: Case) -> list[str]:
    c.copy_finished()
    return c.flags(blobs="fc6") + ["--resume"]


def _resume_no_manifest(c: Case) -> list[str]:
    c.copy_finished()
    (c.out.with_suffix(".parquet") / "_manifest.json").unlink()
    return c.flags() + ["--resume"]


def _resume_bad_manifest(c: Case) -> list[str]:
    c.copy_finished()
    (c.out.with_suffix(".parquet") / "_manifest.json").write_text('{"format": "savedeep/1", "shards": [')
    return c.flags() + ["--resume"]


def _resume_foreign_manifest(c: Case) -> list[str]:
    c.copy_finished()
    (c.out.with_suffix(".parquet") / "_manifest.json").write_text(json.dumps({"rows": 3}))
    return c.flags() + ["--resume"]


def _overwrite_foreign_dir(c: Case) -> list[str]:
    d = c.out.with_suffix(".parquet")
    d.mkdir(parents=True)
    (d / "thesis_data.parquet").write_bytes(b"the user's own data")
    return c.flags() + ["--overwrite"]


def _parquet_is_a_file(c: Case) -> list[str]:
    c.out.parent.mkdir()
    c.out.with_suffix(".parquet").write_text("not ours")
    return c.flags() + ["--overwrite"]


def _bad_image_on_error_fail(c: Case) -> list[str]:
    d = c.dir / "imgs"
    shutil.copytree(c.good_images, d)
    data = next(d.glob("*.jpg")).read_bytes()
    (d / "bad_truncated.jpg").write_bytes(data[: len(data) // 3])
    return c.flags(images=d) + ["--on-error", "fail"]


def _empty_dir(c: Case) -> Path:
    d = c.dir / "imgs"
    d.mkdir()
    return d


def _only_documents(c: Case) -> Path:
    d = _empty_dir(c)
    (d / "notes.txt").write_text("stimuli list\n")
    (d / "paper.pdf").write_bytes(b"%PDF-1.4")
    return d


def _photos_named(c: Case) -> list[str]:
    return sorted(p.name for p in c.good_images.iterdir())


MISTAKES: list[Mistake] = [
    # --- the config file, its keys, and the flags (exit 2)
    Mistake(
        "config-file-missing",
        2,
        lambda c: [str(c.dir / "cofnig.yaml")],
        ("cofnig.yaml", "does not exist", "check the path"),
    ),
    Mistake(
        "config-not-yaml",
        2,
        lambda c: [c.config(extra="preprocess: {resize: warp\n")],
        ("run.yaml", "not valid YAML", "line", "fix the YAML"),
    ),
    Mistake(
        "config-a-list", 2, lambda c: [str(c.listing("run.yaml", "- fc6\n- fc7\n"))], ("run.yaml", "must be a mapping")
    ),
    Mistake(
        "config-key-typo", 2, lambda c: [c.config(extra="batchsize: 4\n")], ("batchsize", "did you mean 'batch_size'")
    ),
    Mistake("config-key-twice", 2, lambda c: [c.config(extra="blobs: [fc6]\n")], ("'blobs' appears twice", "keep one")),
    Mistake("required-key-missing", 2, lambda c: [c.config(blobs=None)], ("blobs", "required", "-b/--blobs")),
    Mistake("batch-size-zero", 2, lambda c: c.flags() + ["--batch-size", "0"], ("batch_size", ">= 1")),
    Mistake(
        "producers-not-a-number",
        2,
        lambda c: c.flags() + ["--producers", "many"],
        ("producers", '"auto" or a whole number'),
    ),
    Mistake("gpus-malformed", 2, lambda c: c.flags() + ["--gpus", "gpu0"], ("gpus", '"0,1"')),
    Mistake("blobs-empty", 2, lambda c: c.flags(blobs=","), ("blobs", "is empty", "blobs: [fc7]")),
    Mistake(
        "resume-and-overwrite",
        2,
        lambda c: c.flags() + ["--resume", "--overwrite"],
        ("--overwrite", "not allowed with argument --resume"),
    ),
    Mistake("unknown-flag", 2, lambda c: c.flags() + ["--batchsize", "4"], ("unrecognized arguments", "--batchsize")),
    Mistake(
        "resize-mode-unknown",
        2,
        lambda c: [c.config(preprocess={"resize": "crop"})],
        ("preprocess.resize", "must be one of", "warp"),
    ),
    Mistake(
        "resize-to-below-input",
        2,
        lambda c: [c.config(preprocess={"resize": "resize-crop", "resize_to": 200})],
        ("preprocess.resize_to", "200", "use resize_to >= 227"),
    ),
    Mistake(
        "compression-level-out-of-range",
        2,
        lambda c: [c.config(compression_level=30)],
        ("compression_level", "-131072..22", "30"),
    ),
    Mistake(
        "reduce-pool-and-project",
        2,
        lambda c: [c.config(blobs=[{"name": "conv1", "reduce": {"pool": "mean", "project": 8}}])],
        ("blobs[0].reduce", "choose one"),
    ),
    Mistake(
        "reduce-grid-too-big",
        2,
        lambda c: [c.config(blobs=[{"name": "conv5", "reduce": {"pool": "max", "grid": 20}}])],
        ("grid", "20", "conv5"),
    ),
    Mistake(
        "pickle-size-unit",
        2,
        lambda c: [c.config(max_pickle_bytes="4 gigs")],
        ("max_pickle_bytes", "unknown size unit", "GiB"),
    ),
    Mistake("output-is-a-directory", 2, lambda c: c.flags(output=c.dir), ("output", "is a directory", "acts.pk")),
    Mistake(
        "output-is-the-parquet-dir",
        2,
        lambda c: c.flags(output=c.dir / "out" / "acts.parquet"),
        ("output", "ends in .parquet", "acts.pk"),
    ),
    Mistake("model-dir-missing", 2, lambda c: c.flags(model=c.dir / "mdoel"), ("model", "mdoel", "does not exist")),
    Mistake(
        "model-is-the-prototxt",
        2,
        lambda c: c.flags(model=c.good_model / "deploy.prototxt"),
        ("model", "is not a directory", "weights.caffemodel"),
    ),
    Mistake("images-missing", 2, lambda c: c.flags(images=c.dir / "stimuli"), ("images", "stimuli", "does not exist")),
    Mistake(
        "images-is-one-jpeg",
        2,
        lambda c: c.flags(images=next(c.good_images.glob("*.jpg"))),
        ("images", "not a list file", "directory of images"),
    ),
    Mistake(
        "csv-column-named-like-a-blob",
        2,
        lambda c: c.flags(
            images=c.listing("list.csv", "path,fc7\n" + "".join(f"{c.good_images / n},x\n" for n in _photos_named(c)))
        ),
        ("blobs", "fc7", "rename the CSV column"),
    ),
    Mistake("log-file-is-a-directory", 2, lambda c: [c.config(log_file=str(c.dir))], ("log_file", "is a directory")),
    Mistake(
        "require-gpu-without-gpu",
        2,
        lambda c: (_setenv(c, "CUDA_VISIBLE_DEVICES", ""), [*c.flags()[:-2], "--gpus", "all", "--require-gpu"])[1],
        ("sees none", "CUDA_VISIBLE_DEVICES", "drop --require-gpu"),
    ),
    Mistake("engine-caffe-without-pycaffe", 2, _no_pycaffe, ("engine: caffe", "'caffe'", "scripts/setup.sh")),
    Mistake(
        "pickle-above-max-pickle-bytes",
        5,
        lambda c: [c.config(max_pickle_bytes="10KB")],
        ("max_pickle_bytes", "48.0 KiB of activations", "9.77 KiB", "pickle: false", "reduce"),
    ),
    Mistake(
        "dev-shm-too-small",
        2,
        lambda c: (_private_mount(c, "mount -t tmpfs -o size=8m tmpfs /dev/shm"), c.flags())[1],
        ("/dev/shm has", "batch_size", "--shm-size"),
        subprocess=True,
    ),
    # --- the model directory's three files (exit 3)
    Mistake(
        "prototxt-missing",
        3,
        lambda c: c.flags(model=c.model(deploy_prototxt=None)),
        ("deploy.prototxt", "missing", "must contain"),
    ),
    Mistake(
        "weights-missing",
        3,
        lambda c: c.flags(model=c.model(weights_caffemodel=None)),
        ("weights.caffemodel", "missing", "must contain"),
    ),
    Mistake(
        "mean-missing", 3, lambda c: c.flags(model=c.model(mean_npy=None)), ("mean.npy", "missing", "must contain")
    ),
    Mistake(
        "prototxt-syntax",
        3,
        lambda c: c.flags(model=c.model(deploy_prototxt=c.prototxt().replace('top: "conv1"', 'top "conv1"', 1))),
        ("deploy.prototxt",),
    ),
    Mistake(
        "prototxt-for-training",
        3,
        lambda c: c.flags(
            model=c.model(
                deploy_prototxt=c.prototxt().replace(
                    "layer {", 'layer {\n  name: "data_db"\n  type: "Data"\n  top: "x"\n  top: "label"\n}\nlayer {', 1
                )
            )
        ),
        ("deploy.prototxt", "Data layer", "replace it with an Input layer"),
    ),
    Mistake(
        "weights-truncated",
        3,
        lambda c: c.flags(model=c.model(weights_caffemodel=c.weights()[:5_000_000])),
        ("weights.caffemodel", "truncated", "download or copy the trained weights again"),
        subprocess=True,
    ),
    Mistake(
        "weights-empty",
        3,
        lambda c: c.flags(model=c.model(weights_caffemodel=b"")),
        ("weights.caffemodel", "empty", "download or copy the trained weights again"),
        subprocess=True,
    ),
    Mistake(
        "weights-of-another-net",
        3,
        lambda c: c.flags(
            model=c.model(deploy_prototxt=(c.testdata / "models/googlenet/deploy.prototxt").read_text()), blobs="prob"
        ),
        ("weights.caffemodel", "has no weights for layer", "trained for this prototxt"),
    ),
    Mistake(
        "prototxt-edited",
        3,
        lambda c: c.flags(model=c.model(deploy_prototxt=c.prototxt().replace("num_output: 4096", "num_output: 2048"))),
        ("weights.caffemodel", "do not match", "(4096,"),
    ),
    Mistake(
        "caffe-engine-layer-pycaffe-lacks",
        3,
        lambda c: _caffe_engine(c, _FC7_RELU, _CLIP7 + _FC7_RELU),
        ("deploy.prototxt", "layer 'clip7'", "type 'Clip'", "this pycaffe", "engine: torch", "build a pycaffe"),
        subprocess=True,
    ),
    Mistake(
        "caffe-engine-swish",
        3,
        lambda c: _caffe_engine(c, _FC7_RELU, _SWISH7 + _FC7_RELU),
        ("deploy.prototxt", "layer 'swish7'", "type 'Swish'", "engine: torch", "build a pycaffe"),
    ),
    Mistake(
        "caffe-engine-stochastic-pooling-on-cpu",
        3,
        lambda c: _caffe_engine(c, "pool: MAX", "pool: STOCHASTIC"),
        ("deploy.prototxt", "layer 'pool1'", "STOCHASTIC", "only on a GPU", "engine: torch"),
    ),
    Mistake(
        "caffe-engine-made-up-layer-type",
        3,
        lambda c: _caffe_engine(c, 'type: "LRN"', 'type: "Frobnicate"'),
        ("deploy.prototxt", "layer 'norm1'", "type 'Frobnicate'", "supported types"),
    ),
    Mistake(
        "weights-is-a-prototxt",
        3,
        lambda c: c.flags(model=c.model(weights_caffemodel=c.prototxt())),
        ("weights.caffemodel", "looks like a text prototxt", "trained weights file"),
    ),
    Mistake(
        "mean-wrong-layout",
        3,
        lambda c: c.flags(model=c.model(mean_npy=_npy(np.zeros((256, 256, 3), np.float32)))),
        ("mean.npy", "(256, 256, 3)", "(3, H, W)"),
    ),
    Mistake(
        "mean-not-npy",
        3,
        lambda c: c.flags(model=c.model(mean_npy="104 117 123\n")),
        ("mean.npy", "not a .npy file", "numpy.save"),
    ),
    Mistake("blob-typo", 3, lambda c: c.flags(blobs="fc7,fc77"), ("fc77", "did you mean", "valid blobs")),
    # --- the image source and its entries (exit 4)
    Mistake("image-dir-empty", 4, lambda c: c.flags(images=_empty_dir(c)), ("imgs", "no images found", "extensions")),
    Mistake(
        "image-dir-without-images",
        4,
        lambda c: c.flags(images=_only_documents(c)),
        ("imgs", "no images found", ".pdf x1"),
    ),
    Mistake(
        "list-empty",
        4,
        lambda c: c.flags(images=c.listing("list.txt", "# my stimuli\n\n")),
        ("list.txt", "no images found"),
    ),
    Mistake(
        "csv-without-path-column",
        4,
        lambda c: c.flags(
            images=c.listing("list.csv", "file,cond\n" + "".join(f"{c.good_images / n},a\n" for n in _photos_named(c)))
        ),
        ("list.csv", "no 'path' column", "add a header row"),
    ),
    Mistake(
        "csv-empty-path",
        4,
        lambda c: c.flags(images=c.listing("list.csv", f"path,cond\n{c.good_images / _photos_named(c)[0]},a\n,b\n")),
        ("list.csv", "row 3", "fill it or delete the row"),
    ),
    Mistake(
        "list-duplicates",
        4,
        lambda c: c.flags(
            images=c.listing("list.txt", "".join(f"{c.good_images / n}\n" for n in _photos_named(c) * 2))
        ),
        ("list.txt", "duplicate image keys", "remove the repeated lines"),
    ),
    Mistake(
        "list-paths-relative-to-elsewhere",
        4,
        lambda c: c.flags(images=c.listing("list.txt", "".join(f"photos/{n}\n" for n in _photos_named(c)))),
        ("list.txt", "none of its", "relative to the list file's folder"),
    ),
    Mistake(
        "list-path-missing-on-error-fail",
        4,
        lambda c: (
            c.flags(
                images=c.listing(
                    "list.txt",
                    "".join(f"{c.good_images / n}\n" for n in _photos_named(c)) + f"{c.good_images / 'gone.jpg'}\n",
                )
            )
            + ["--on-error", "fail"]
        ),
        ("list.txt", "gone.jpg", "use on_error: skip"),
    ),
    Mistake(
        "list-not-utf8",
        4,
        lambda c: c.flags(images=c.listing("list.txt", "caf\xe9.jpg\n".encode("latin-1"))),
        ("list.txt", "not UTF-8", "save the list as UTF-8"),
    ),
    Mistake(
        "bad-image-on-error-fail",
        4,
        _bad_image_on_error_fail,
        ("bad_truncated.jpg", "truncated", "use on_error: skip"),
        workers=True,
    ),
    # --- the output path, and what is on disk (exit 5)
    Mistake(
        "output-under-a-file",
        5,
        lambda c: (c.listing("somefile", "x"), c.flags(output=c.dir / "somefile" / "acts.pk"))[1],
        ("output", "somefile is a file, not a directory", "choose an output path"),
        subprocess=True,
    ),
    Mistake(
        "output-unwritable",
        5,
        lambda c: c.flags(output=Path("/proc/x/acts.pk")),
        ("output", "/proc/x", "writable disk"),
        subprocess=True,
    ),
    Mistake(
        "output-read-only-disk",
        5,
        lambda c: (
            (c.dir / "ro").mkdir(),
            _private_mount(c, f"mount -t tmpfs -o ro,size=1m tmpfs {c.dir}/ro"),
            c.flags(output=c.dir / "ro" / "acts.pk"),
        )[2],
        ("output", "Read-only file system", "writable disk"),
        subprocess=True,
    ),
    Mistake(
        "log-file-unwritable",
        5,
        lambda c: [c.config(log_file="/proc/y/acts.log")],
        ("log_file", "/proc/y", "writable disk"),
    ),
    Mistake(
        "output-exists", 5, lambda c: (c.copy_finished(), c.flags())[1], ("acts.pk exists", "--overwrite", "--resume")
    ),
    Mistake("resume-with-other-settings", 5, _resume_changed, ("cannot resume", "config keys blobs", "--overwrite")),
    Mistake("resume-without-manifest", 5, _resume_no_manifest, ("cannot resume", "no manifest", "--overwrite")),
    Mistake("resume-corrupt-manifest", 5, _resume_bad_manifest, ("_manifest.json", "not valid JSON", "--overwrite")),
    Mistake(
        "resume-foreign-manifest",
        5,
        _resume_foreign_manifest,
        ("_manifest.json", "not a savedeep/1 manifest", "--overwrite"),
    ),
    Mistake(
        "overwrite-someone-elses-dir",
        5,
        _overwrite_foreign_dir,
        ("thesis_data.parquet", "savedeep did not write", "move those away"),
    ),
    Mistake("parquet-dir-is-a-file", 5, _parquet_is_a_file, ("acts.parquet", "is a file", "move it away")),
]


def _npy(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# --------------------------------------------------------------------------- running and checking


@pytest.fixture(scope="module")
def images(photos, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("mistake_imgs")
    for p in photos[:3]:
        shutil.copyfile(p, d / p.name)
    return d


@pytest.fixture(scope="module")
def finished(caffenet_dir, images, tmp_path_factory) -> Path:
    """A finished output (fc7 of three photos), copied by the rows about existing outputs."""
    out = tmp_path_factory.mktemp("finished") / "acts.pk"
    assert (
        main(
            [
                "run",
                "-m",
                str(caffenet_dir),
                "-b",
                "fc7",
                "-i",
                str(images),
                "-o",
                str(out),
                "--gpus",
                "cpu",
                "--no-progress",
                "-q",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def can_unshare() -> bool:
    r = subprocess.run(
        ["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"], capture_output=True, text=True
    )
    return r.returncode == 0


def _snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            # a folder's mtime is left out: the preflight's probe (created and removed at once) touches it
            out[str(p.relative_to(root))] = (st.st_mode, None if p.is_dir() else (st.st_size, st.st_mtime_ns))
    return out


def _invoke(c: Case, command: str, args: list[str], subprocess_: bool, capsys) -> tuple[int, str]:
    if command == "run":
        args = [*args, "--no-progress"]
    if subprocess_:
        cmd = [sys.executable, "-m", "savedeep", command, *args]
        if c.wrap is not None:
            cmd = c.wrap(cmd)
        env = {**os.environ, **c.env, "PYTHONPATH": str(ROOT)}
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=c.dir, timeout=300)
        return r.returncode, r.stderr
    capsys.readouterr()
    try:
        rc = main([command, *args])
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    return rc, capsys.readouterr().err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if ERROR_LINE.match(line)]
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{err}"
    others = [
        line
        for line in err.splitlines()
        if line.strip()
        and not ERROR_LINE.match(line)
        and not line.startswith(("savedeep: INFO:", "savedeep: WARNING:", "usage:", " "))
    ]
    assert not others, f"unexpected lines besides the error:\n{err}"
    return ERROR_LINE.sub("", lines[0])


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.id for m in MISTAKES])
def test_a_user_mistake_is_one_clear_error(
    mistake: Mistake, caffenet_dir, images, finished, testdata, tmp_path, monkeypatch, capsys, can_unshare
):
    c = Case(tmp_path / "case", caffenet_dir, images, testdata, finished, monkeypatch)
    c.dir.mkdir()
    starts = tmp_path / "starts"
    starts.mkdir()
    _setenv(c, "SAVEDEEP_RECORD_STARTS", str(starts))
    args = mistake.build(c)
    if c.wrap is not None and not can_unshare:
        pytest.skip("needs a private mount namespace (root and unshare)")
    sub = mistake.subprocess or c.wrap is not None
    before = _snapshot(c.dir)

    # savedeep validate first, with the same flags (its own checks follow the run's below)
    vrc, verr = _invoke(c, "validate", args, sub, capsys)
    assert "Traceback" not in verr, verr
    vline = _error_line(verr)
    assert not list(starts.iterdir()), "validate started a worker"
    assert _snapshot(c.dir) == before, "validate changed the folder"

    rc, err = _invoke(c, "run", args, sub, capsys)
    assert rc == mistake.code, err
    assert "Traceback" not in err and "internal error" not in err, err
    line = _error_line(err)
    if os.environ.get("SAVEDEEP_SHOW_MISTAKES"):  # to write the table of docs/how-to/troubleshooting.md
        print(f"\n@@ {mistake.id} | {mistake.code} | {line}")
    for needle in mistake.needles:
        assert needle in line, f"{needle!r} not in the error line: {line}"
    started = sorted(p.name for p in starts.iterdir())
    if mistake.workers:
        assert started, "this mistake needs a decoding worker to find it"
        assert not c.out.exists()
        manifest = json.loads((c.out.with_suffix(".parquet") / "_manifest.json").read_text())
        assert manifest["complete"] is False  # kept for --resume, and says it is not complete
    else:
        assert not started, f"workers started for a mistake the parent can find: {started}"
        assert _snapshot(c.dir) == before, "the run changed the folder"

    # validate agrees: the same exit code and, where the parent finds the mistake, the same line
    assert vrc == rc, verr
    if mistake.workers:  # the run's worker found it in the image it decoded; validate in its sample
        for needle in mistake.needles:
            assert needle in vline, f"{needle!r} not in validate's error line: {vline}"
    else:
        assert vline == line


def test_the_table_covers_every_input():
    assert len(MISTAKES) >= 30 and len({m.id for m in MISTAKES}) == len(MISTAKES)
    assert {m.code for m in MISTAKES} == {2, 3, 4, 5}


@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_real_bug_still_says_internal_error_with_the_traceback(command, caffenet_dir, images, tmp_path):
    # An exception that is not a savedeep error (here injected at the start of the preflight) is a bug.
    out = tmp_path / "out" / "acts.pk"
    cmd = [
        sys.executable,
        "-m",
        "savedeep",
        command,
        "-m",
        str(caffenet_dir),
        "-b",
        "fc7",
        "-i",
        str(images),
        "-o",
        str(out),
        "--gpus",
        "cpu",
    ]
    env = {**os.environ, "SAVEDEEP_FAULT": "role=preflight,batch=0", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "Traceback (most recent call last)" in r.stderr and "InjectedFault" in r.stderr
    assert (
        r.stderr.strip().splitlines()[-1]
        == "savedeep: internal error (a bug); please report it with the traceback above"
    )
    assert not out.parent.exists()
