"""Tests for savedeep.config: loading, validation messages, path rules, overrides, fingerprints."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pickle
import re
from pathlib import Path

import pytest

from savedeep.config import (
    BlobSpec,
    Config,
    PreprocessSpec,
    RESULT_KEYS,
    load_config,
    parse_size,
    schema_markdown,
)
from savedeep.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory with a model dir, an image dir and an image list, as a config refers to them."""
    (tmp_path / "model").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "list.csv").write_text("path\nimages/a.jpg\n")
    # Config paths are resolved (symlinks followed); compare against the same form.
    return tmp_path.resolve()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def flags(project: Path, **extra: object) -> dict[str, object]:
    """The original script's four flags (-m -b -i -o), as absolute paths."""
    return {
        "model": str(project / "model"),
        "images": str(project / "images"),
        "output": str(project / "out" / "acts.pk"),
        "blobs": "fc7",
        **extra,
    }


def problem_keys(excinfo: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [key for key, _ in excinfo.value.problems]


# --------------------------------------------------------------------------- loading and defaults


def test_flags_alone_are_enough_and_defaults_are_filled(project: Path) -> None:
    config = load_config(None, flags(project))
    assert config.model == project / "model"
    assert config.images == project / "images"
    assert config.output == project / "out" / "acts.pk"
    assert config.blobs == ("fc7",)
    assert config.blob_specs == (BlobSpec("fc7", "float32", None),)
    assert config.engine == "torch" and config.gpus == "all" and config.require_gpu is False
    assert config.cpu_consumers == "auto" and config.producers == "auto" and config.batch_size == 32
    assert config.dtype == "float32" and config.compression == "zstd" and config.compression_level is None
    assert config.shard_size == 1024 and config.pickle is True and config.max_pickle_bytes == 4 * 2**30
    assert config.on_error == "skip" and config.ring_slots is None
    assert config.preprocess == PreprocessSpec(
        resize="warp",
        resize_to=256,
        mean_mode="channel",
        input_scale=None,
        raw_scale=255.0,
        jpeg_draft=False,
        max_pixels=100_000_000,
        exif_transpose=False,
    )
    # The log goes next to the output, named after it; the shards beside it.
    assert config.log_file == project / "out" / "acts.log"
    assert config.parquet_dir == project / "out" / "acts.parquet"


def test_every_setting_from_a_file(project: Path) -> None:
    path = write(
        project / "run.yaml",
        """
model: model
images: list.csv
output: out/run.pk
blobs:
  - fc6
  - {name: conv1, dtype: float16, reduce: {pool: max, grid: 2}}
  - {name: conv3, reduce: {project: 128, seed: 9}}
  - {name: conv2, reduce: {pool: mean}}
engine: caffe
gpus: [1, 0]
require_gpu: true
cpu_consumers: 2
producers: 3
batch_size: 8
dtype: float16
compression: lz4
compression_level: 9
shard_size: 100
pickle: false
max_pickle_bytes: 500MB
on_error: fail
preprocess:
  resize: short-side-crop
  resize_to: 256
  mean_mode: image-crop
  input_scale: 0.5
  raw_scale: 1
  jpeg_draft: true
  max_pixels: 1000
ring_slots: 6
log_file: logs/run.log
""",
    )
    config = load_config(path, {})
    assert config.images == project / "list.csv"
    assert config.blob_specs == (
        BlobSpec("fc6", "float16", None),
        BlobSpec("conv1", "float16", {"pool": "max", "grid": 2}),
        BlobSpec("conv3", "float16", {"project": 128, "seed": 9}),
        BlobSpec("conv2", "float16", {"pool": "mean", "grid": None}),
    )
    assert (config.engine, config.gpus, config.require_gpu) == ("caffe", (1, 0), True)
    assert (config.cpu_consumers, config.producers, config.batch_size) == (2, 3, 8)
    assert (config.compression, config.compression_level, config.shard_size) == ("lz4", 9, 100)
    assert (config.pickle, config.max_pickle_bytes, config.on_error) == (False, 500_000_000, "fail")
    assert config.preprocess == PreprocessSpec("short-side-crop", 256, "image-crop", 0.5, 1.0, True, 1000)
    assert isinstance(config.preprocess.raw_scale, float)
    assert config.ring_slots == 6
    assert config.log_file == project / "logs" / "run.log"


def test_empty_file_with_flags(project: Path) -> None:
    path = write(project / "empty.yaml", "")
    assert load_config(path, flags(project)).blobs == ("fc7",)


def test_config_is_frozen_hashable_and_picklable(project: Path) -> None:
    blobs = [{"name": "conv1", "reduce": {"pool": "max", "grid": 2}}]
    config = load_config(None, flags(project, blobs=blobs))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.blob_specs[0].name = "x"  # type: ignore[misc]
    assert hash(config) == hash(load_config(None, flags(project, blobs=blobs)))
    # Consumers receive it through spawn.
    clone = pickle.loads(pickle.dumps(config))
    assert clone == config and clone.fingerprint() == config.fingerprint()


# --------------------------------------------------------------------------- paths and overrides


def test_relative_paths_in_a_file_follow_the_file(
    project: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        project / "configs" / "run.yaml",
        "model: ../model\nimages: ../images\noutput: ../out/a.pk\nblobs: [fc7]\nlog_file: run.log\n",
    )
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    config = load_config(Path(path), {})
    assert config.model == project / "model"
    assert config.output == project / "out" / "a.pk"
    assert config.log_file == project / "configs" / "run.log"
    # A relative config path itself is taken from the current directory.
    monkeypatch.chdir(project)
    assert load_config(Path("configs/run.yaml"), {}).model == project / "model"


def test_relative_paths_in_flags_follow_the_current_directory(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        project / "configs" / "run.yaml", "model: ../model\nimages: ../images\noutput: ../out/a.pk\nblobs: [fc7]\n"
    )
    monkeypatch.chdir(project / "images")
    (project / "images" / "sub").mkdir()
    config = load_config(path, {"images": "sub", "output": "here.pk"})
    assert config.images == project / "images" / "sub"
    assert config.output == project / "images" / "here.pk"
    assert config.model == project / "model"
    # The explicit cwd argument does the same without changing directory.
    config = load_config(path, {"images": "images"}, cwd=project)
    assert config.images == project / "images"


def test_home_is_expanded(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(project))
    config = load_config(None, flags(project, model="~/model"))
    assert config.model == project / "model"


def test_flags_override_the_file(project: Path) -> None:
    path = write(
        project / "run.yaml",
        """
model: model
images: images
output: out/a.pk
blobs: [fc6, fc7]
batch_size: 16
gpus: [0]
preprocess: {resize: resize-crop, resize_to: 256}
""",
    )
    config = load_config(
        path,
        {
            "batch_size": 64,
            "blobs": "conv5",
            "gpus": "cpu",
            "preprocess.resize": "warp",
            "engine": None,
            "output": None,
        },
    )
    assert config.batch_size == 64
    assert config.blobs == ("conv5",)
    assert config.gpus == "cpu"
    # A dotted flag changes one preprocess key and keeps the file's others.
    assert config.preprocess.resize == "warp" and config.preprocess.resize_to == 256
    # None means "flag not given": the file (or the default) stays.
    assert config.engine == "torch"
    assert config.output == project / "out" / "a.pk"
    # A mapping override merges too.
    assert load_config(path, {"preprocess": {"jpeg_draft": "yes"}}).preprocess == PreprocessSpec(
        resize="resize-crop", resize_to=256, jpeg_draft=True
    )


@pytest.mark.parametrize(
    "value, expected",
    [
        ("0,1", (0, 1)),
        ("0, 1", (0, 1)),
        ([0, 1], (0, 1)),
        (["2"], (2,)),
        (3, (3,)),
        ("3", (3,)),
        ("cpu", "cpu"),
        ("CPU", "cpu"),
        ("all", "all"),
    ],
)
def test_gpu_forms(project: Path, value: object, expected: object) -> None:
    assert load_config(None, flags(project, gpus=value)).gpus == expected


def test_gpus_from_yaml_string_and_list(project: Path) -> None:
    text = "model: model\nimages: images\noutput: o.pk\nblobs: fc7\n"
    assert load_config(write(project / "a.yaml", text + "gpus: 0,1\n"), {}).gpus == (0, 1)
    assert load_config(write(project / "b.yaml", text + "gpus: [0, 1]\n"), {}).gpus == (0, 1)


@pytest.mark.parametrize(
    "value, expected",
    [
        (1024, 1024),
        ("1024", 1024),
        ("4GiB", 4 * 2**30),
        ("500MB", 500 * 10**6),
        ("1.5 GB", 1_500_000_000),
        ("2kib", 2048),
        ("10 B", 10),
        ("0.5MiB", 2**19),
    ],
)
def test_sizes(project: Path, value: object, expected: int) -> None:
    assert parse_size(value) == expected
    assert load_config(None, flags(project, max_pickle_bytes=value)).max_pickle_bytes == expected


# --------------------------------------------------------------------------- blobs


def test_blob_strings_and_lists(project: Path) -> None:
    assert load_config(None, flags(project, blobs="fc6,fc7")).blobs == ("fc6", "fc7")
    assert load_config(None, flags(project, blobs=" fc6 , fc7 ,")).blobs == ("fc6", "fc7")
    assert load_config(None, flags(project, blobs=["fc6", "fc7,prob"])).blobs == ("fc6", "fc7", "prob")
    # GoogLeNet-style names with slashes are ordinary names.
    assert load_config(None, flags(project, blobs="inception_3a/1x1")).blobs == ("inception_3a/1x1",)


def test_duplicate_blobs_keep_the_first_with_a_warning(project: Path, caplog: pytest.LogCaptureFixture) -> None:
    blobs = ["fc6", {"name": "fc7", "dtype": "float16"}, "fc6", "fc7"]
    with caplog.at_level(logging.WARNING, logger="savedeep.config"):
        config = load_config(None, flags(project, blobs=blobs))
    assert config.blob_specs == (BlobSpec("fc6", "float32"), BlobSpec("fc7", "float16"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "'fc6'" in warnings[0] and "first occurrence" in warnings[0]
    assert "'fc7'" in warnings[1] and "differs" in warnings[1]
    # replace() revalidates without repeating the warnings for the collapsed list.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="savedeep.config"):
        assert config.replace(batch_size=2).blob_specs == config.blob_specs
    assert not caplog.records


# --------------------------------------------------------------------------- validation errors


def test_unknown_keys_get_a_suggestion(project: Path) -> None:
    path = write(
        project / "run.yaml",
        "model: model\nimages: images\noutput: o.pk\nblobs: [fc7]\nbatchsize: 3\npreprocess: {resise: warp}\n",
    )
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, {})
    message = str(excinfo.value)
    assert str(path) in message
    assert "batchsize: unknown key; did you mean 'batch_size'?" in message
    assert "preprocess.resise: unknown key; did you mean 'resize'?" in message
    assert problem_keys(excinfo) == ["batchsize", "preprocess.resise"]


def test_unknown_flag_key_and_blob_item_key(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"ouput: unknown key; did you mean 'output'\?"):
        load_config(None, {**flags(project), "ouput": "x.pk"})
    with pytest.raises(ConfigError, match=r"blobs\[0\]\.dtyp: unknown key; did you mean 'dtype'\?"):
        load_config(None, flags(project, blobs=[{"name": "fc7", "dtyp": "float16"}]))
    with pytest.raises(ConfigError, match=r"blobs\[0\]\.reduce\.gird: unknown key; did you mean 'grid'\?"):
        load_config(None, flags(project, blobs=[{"name": "c", "reduce": {"pool": "max", "gird": 2}}]))


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("batch_size", "abc", "batch_size: expected a whole number >= 1, got 'abc' (str)"),
        ("batch_size", 2.5, "batch_size: expected a whole number >= 1, got 2.5 (float)"),
        ("batch_size", True, "batch_size: expected a whole number >= 1, got True (bool)"),
        ("batch_size", -4, "batch_size: must be >= 1, got -4"),
        ("batch_size", 0, "batch_size: must be >= 1, got 0"),
        ("shard_size", -1, "shard_size: must be >= 1"),
        ("cpu_consumers", 0, 'cpu_consumers: expected "auto" or a whole number >= 1, got 0'),
        ("ring_slots", "many", "ring_slots: expected a whole number >= 1"),
        ("producers", "lots", 'producers: expected "auto" or a whole number >= 1'),
        ("producers", 0, 'producers: expected "auto" or a whole number >= 1, got 0'),
        ("pickle", "maybe", "pickle: expected true or false, got 'maybe' (str)"),
        ("require_gpu", 2, "require_gpu: expected true or false"),
        ("engine", "cafe", "engine: must be one of caffe, torch; got 'cafe' (str); did you mean 'caffe'?"),
        ("dtype", "flaot16", "dtype: must be one of float32, float16; got 'flaot16' (str); did you mean 'float16'?"),
        ("dtype", 16, "dtype: must be one of float32, float16; got 16 (int)"),
        ("compression", "gzip", "compression: must be one of zstd, lz4, snappy, none"),
        ("storage", "tensors", "storage: must be one of tensor, binary; got 'tensors' (str); did you mean 'tensor'?"),
        ("on_error", "ignore", "on_error: must be one of skip, fail"),
        ("gpus", "gpu", 'gpus: expected "cpu", "all", a list of GPU ids'),
        ("gpus", "0,0", "gpus: GPU [0] listed twice"),
        (
            "gpus",
            [0, -1],
            'gpus: expected "cpu", "all", a list of GPU ids such as [0, 1], or the string "0,1"; '
            "item must be >= 0, got -1",
        ),
        ("gpus", [], 'gpus: expected "cpu", "all"'),
        ("max_pickle_bytes", "4XB", "max_pickle_bytes: unknown size unit 'XB' in '4XB'; use B, KB, MB, GB, TB"),
        ("max_pickle_bytes", "lots", "max_pickle_bytes: expected a size such as 4GiB or 500MB, got 'lots' (str)"),
        ("max_pickle_bytes", "-5MB", "max_pickle_bytes: expected a size such as 4GiB or 500MB"),
        ("max_pickle_bytes", 0, "max_pickle_bytes: must be at least 1 byte"),
        ("preprocess", "warp", "preprocess: expected a mapping such as {resize: warp}, got 'warp' (str)"),
        (
            "preprocess.resize",
            "wrap",
            "preprocess.resize: must be one of warp, short-side-crop, resize-crop, caffe-io; "
            "got 'wrap' (str); did you mean 'warp'?",
        ),
        ("preprocess.mean_mode", "pixel", "preprocess.mean_mode: must be one of channel, image-crop, image-resize"),
        ("preprocess.resize_to", 0, "preprocess.resize_to: must be >= 1, got 0"),
        ("preprocess.input_scale", -1, "preprocess.input_scale: expected a finite number > 0, got -1 (int)"),
        ("preprocess.raw_scale", "x", "preprocess.raw_scale: expected a number > 0"),
        ("preprocess.jpeg_draft", 3, "preprocess.jpeg_draft: expected true or false"),
        ("preprocess.max_pixels", "big", "preprocess.max_pixels: expected a whole number >= 1"),
        ("log_file", 5, "log_file: expected a path, got 5 (int)"),
        ("blobs", 7, 'blobs: expected a list of blob names or the string "fc6,fc7", got 7 (int)'),
        ("blobs", [], "blobs: is empty; list at least one blob name"),
        ("blobs", ",", "blobs: is empty; list at least one blob name"),
        ("blobs", [3], "blobs[0]: expected a blob name or a mapping"),
        ("blobs", [{"dtype": "float16"}], "blobs[0].name: required"),
        ("blobs", [{"name": "fc7", "dtype": "half"}], "blobs[0].dtype: must be one of float32, float16"),
        (
            "blobs",
            [{"name": "c", "reduce": "mean"}],
            "blobs[0].reduce: expected a mapping; use {pool: mean|max, grid: k|null} or {project: D, seed: S}",
        ),
        ("blobs", [{"name": "c", "reduce": {"pool": "avg"}}], "blobs[0].reduce.pool: must be one of mean, max"),
        ("blobs", [{"name": "c", "reduce": {"pool": "max", "grid": 0}}], "blobs[0].reduce.grid: must be >= 1, got 0"),
        ("blobs", [{"name": "c", "reduce": {"grid": 2}}], "blobs[0].reduce.pool: required with grid"),
        ("blobs", [{"name": "c", "reduce": {"project": 0}}], "blobs[0].reduce.project: must be >= 1"),
        ("blobs", [{"name": "c", "reduce": {"seed": 1}}], "blobs[0].reduce.project: required with seed"),
        ("blobs", [{"name": "c", "reduce": {"project": 8, "seed": -1}}], "blobs[0].reduce.seed: must be >= 0"),
        (
            "blobs",
            [{"name": "c", "reduce": {"pool": "max", "project": 8}}],
            "blobs[0].reduce: mixes pooling and projection; choose one",
        ),
        ("blobs", [{"name": "c", "reduce": {}}], "blobs[0].reduce: is empty"),
    ],
)
def test_each_invalid_value_names_the_key_and_the_fix(project: Path, key: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, flags(project, **{key: value}))
    assert fragment in str(excinfo.value)
    assert problem_keys(excinfo)[0].startswith(key.split(".")[0])
    assert excinfo.value.exit_code == 2


@pytest.mark.parametrize(
    "codec, level, fragment",
    [
        ("snappy", 3, "compression_level: snappy takes no level; remove compression_level or use zstd or lz4"),
        ("none", 1, "compression_level: none takes no level"),
        ("zstd", 23, "compression_level: zstd levels are -131072..22, got 23"),
        ("lz4", 0, "compression_level: lz4 levels are 1..12, got 0"),
        ("zstd", "high", "compression_level: expected an integer, got 'high' (str)"),
    ],
)
def test_compression_levels(project: Path, codec: str, level: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(None, flags(project, compression=codec, compression_level=level))


def test_valid_compression_levels(project: Path) -> None:
    assert load_config(None, flags(project, compression_level=-5)).compression_level == -5
    assert load_config(None, flags(project, compression="lz4", compression_level="12")).compression_level == 12
    path = write(project / "c.yaml", "compression: null\n")
    assert load_config(path, flags(project)).compression == "none"


def test_missing_required_keys_name_the_flags(project: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, {})
    message = str(excinfo.value)
    assert problem_keys(excinfo) == ["model", "images", "output", "blobs"]
    for key, flag in [
        ("model", "-m/--model"),
        ("images", "-i/--images"),
        ("output", "-o/--output"),
        ("blobs", "-b/--blobs"),
    ]:
        assert f"{key}: required; set `{key}:` in the config file or pass {flag}" in message
    assert "invalid config (command line), 4 problems:" in message


def test_all_problems_are_reported_together(project: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, flags(project, batch_size=-1, dtype="half", gpus="0,0", extra=1))
    assert sorted(problem_keys(excinfo)) == ["batch_size", "dtype", "extra", "gpus"]


def test_paths_are_checked(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"model: .*nowhere does not exist; give an existing model directory"):
        load_config(None, flags(project, model=str(project / "nowhere")))
    write(project / "file.txt", "x")
    with pytest.raises(ConfigError, match=r"model: .*file.txt is not a directory"):
        load_config(None, flags(project, model=str(project / "file.txt")))
    write(project / "photo.jpg", "x")
    with pytest.raises(ConfigError, match=r"images: .*photo.jpg is a file but not a list file"):
        load_config(None, flags(project, images=str(project / "photo.jpg")))
    assert load_config(None, flags(project, images=str(project / "file.txt"))).images == project / "file.txt"
    with pytest.raises(ConfigError, match=r"output: .*images is a directory; give the path of the final pickle"):
        load_config(None, flags(project, output=str(project / "images")))
    with pytest.raises(ConfigError, match=r"output: .*acts.parquet ends in .parquet"):
        load_config(None, flags(project, output=str(project / "acts.parquet")))


def test_require_gpu_contradicts_cpu(project: Path) -> None:
    with pytest.raises(ConfigError, match='require_gpu: is true but gpus is "cpu"'):
        load_config(None, flags(project, gpus="cpu", require_gpu=True))
    assert load_config(None, flags(project, gpus="all", require_gpu="true")).require_gpu is True


def test_yaml_problems(project: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(project / "missing.yaml", {})
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(write(project / "bad.yaml", "model: [unclosed\n"), {})
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(write(project / "list.yaml", "- model\n- blobs\n"), {})
    with pytest.raises(ConfigError, match=r"key 'batch_size' appears twice \(lines 1 and 3\)"):
        load_config(write(project / "dup.yaml", "batch_size: 1\nmodel: model\nbatch_size: 2\n"), {})
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(write(project / "unsafe.yaml", "model: !!python/object/apply:os.getcwd []\n"), {})


# --------------------------------------------------------------------------- canonical form and fingerprint

FILE_A = """
model: model
images: images
output: out/a.pk
blobs: [fc6, {name: conv1, reduce: {pool: max, grid: 2}}]
batch_size: 16
preprocess: {resize: warp, raw_scale: 255}
"""

# The same settings, keys in another order, a default spelled out, flow style changed.
FILE_A_REORDERED = """
preprocess:
  raw_scale: 255.0
  resize: warp
batch_size: 16
blobs:
  - name: fc6
  - name: conv1
    reduce: {grid: 2, pool: max}
output: out/a.pk
engine: torch
images: images
model: model
"""


def test_canonical_form(project: Path) -> None:
    config = load_config(write(project / "a.yaml", FILE_A), {})
    canonical = config.canonical()
    assert list(canonical) == sorted(canonical)
    assert set(canonical) == {f.name for f in dataclasses.fields(Config) if not f.name.startswith("_")} - {
        "blob_specs"
    } | {"blobs"}
    assert canonical["model"] == str(project / "model") and Path(canonical["output"]).is_absolute()
    assert canonical["blobs"] == [
        {"name": "fc6", "dtype": "float32", "reduce": None},
        {"name": "conv1", "dtype": "float32", "reduce": {"pool": "max", "grid": 2}},
    ]
    assert canonical["preprocess"]["raw_scale"] == 255.0 and canonical["gpus"] == "all"
    assert canonical["log_file"] == str(project / "out" / "a.log")
    assert json.loads(json.dumps(canonical)) == canonical


def test_fingerprint_stability(project: Path) -> None:
    first = load_config(write(project / "a.yaml", FILE_A), {})
    again = load_config(write(project / "a.yaml", FILE_A), {})
    reordered = load_config(write(project / "b.yaml", FILE_A_REORDERED), {})
    assert len(first.fingerprint()) == 64 and int(first.fingerprint(), 16) >= 0
    assert first.fingerprint() == again.fingerprint()
    assert first.fingerprint() == reordered.fingerprint()
    assert first == reordered
    # The same settings given as flags only.
    by_flags = load_config(
        None,
        {
            "model": str(project / "model"),
            "images": str(project / "images"),
            "output": str(project / "out" / "a.pk"),
            "batch_size": "16",
            "blobs": ["fc6", {"name": "conv1", "reduce": {"pool": "max", "grid": 2}}],
        },
    )
    assert by_flags.fingerprint() == first.fingerprint()
    # Any changed value changes it.
    changed = {
        first.replace(batch_size=17).fingerprint(),
        first.replace(blobs="fc6").fingerprint(),
        first.replace(blobs=["fc6", {"name": "conv1", "reduce": {"pool": "max", "grid": 3}}]).fingerprint(),
        first.replace(blobs=["fc6", {"name": "conv1", "reduce": {"pool": "mean", "grid": 2}}]).fingerprint(),
        first.replace(preprocess={"jpeg_draft": True}).fingerprint(),
        first.replace(dtype="float16").fingerprint(),
        first.replace(output=str(project / "out" / "b.pk")).fingerprint(),
    }
    assert first.fingerprint() not in changed and len(changed) == 7


def test_result_fingerprint_ignores_how_the_run_is_executed(project: Path) -> None:
    config = load_config(write(project / "a.yaml", FILE_A), {})
    same_rows = config.replace(batch_size=3, producers=2, gpus="cpu", compression="lz4", log_file="x.log")
    assert same_rows.fingerprint() != config.fingerprint()
    assert same_rows.result_fingerprint() == config.result_fingerprint()
    assert config.replace(blobs="fc7").result_fingerprint() != config.result_fingerprint()
    assert config.replace(shard_size=10).result_fingerprint() != config.result_fingerprint()
    assert set(RESULT_KEYS) <= set(config.canonical())


# --------------------------------------------------------------------------- replace


def test_replace_revalidates_and_keeps_derived_defaults(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(None, flags(project, blobs=["fc6", {"name": "fc7", "dtype": "float32"}]))
    assert config.replace(batch_size=5).batch_size == 5
    assert config.batch_size == 32  # unchanged: a new object
    with pytest.raises(ConfigError, match="batch_size: must be >= 1"):
        config.replace(batch_size=0)
    with pytest.raises(ConfigError, match="batchsize: unknown key; did you mean 'batch_size'"):
        config.replace(batchsize=5)
    # Defaults that derive from another key follow it; explicit values stay.
    moved = config.replace(output="elsewhere/b.pk", dtype="float16")
    monkeypatch.chdir(project / "images")
    relative = config.replace(output="c.pk")
    assert relative.output == project / "images" / "c.pk"
    assert relative.log_file == project / "images" / "c.log"
    assert moved.blob_specs == (BlobSpec("fc6", "float16"), BlobSpec("fc7", "float32"))
    # None brings a key back to its default.
    assert config.replace(ring_slots=4).replace(ring_slots=None).ring_slots is None


def test_replace_on_a_directly_built_config(project: Path) -> None:
    config = Config(
        model=project / "model", images=project / "images", output=project / "o.pk", blob_specs=(BlobSpec("fc7"),)
    )
    assert config.replace(batch_size=2).batch_size == 2
    assert config.replace(batch_size=2).log_file == project / "o.log"


# --------------------------------------------------------------------------- schema and shipped configs


def test_schema_markdown_lists_every_key() -> None:
    table = schema_markdown()
    assert table.startswith("| key | type | default | meaning |")
    for f in dataclasses.fields(Config):
        if f.name.startswith("_"):
            continue
        name = "blobs" if f.name == "blob_specs" else f.name
        assert f"| `{name}` |" in table
    for f in dataclasses.fields(PreprocessSpec):
        assert f"| `preprocess.{f.name}` |" in table
    assert "current directory" in table and "directory of that file" in table


def test_fingerprint_is_canonical_json_sha256() -> None:
    """The fingerprint's exact definition: a resume compares it with one written by an earlier run, so its
    bytes must not change (sorted keys at every depth, no spaces, ASCII escapes)."""
    from savedeep.config import _sha256_json

    value = {"b": {"y": 1, "x": [2.5, None]}, "a": "é"}
    want = hashlib.sha256(b'{"a":"\\u00e9","b":{"x":[2.5,null],"y":1}}').hexdigest()
    assert _sha256_json(value) == want


def test_result_fingerprint_ignores_the_order_of_nested_keys(project: Path) -> None:
    keys = {"model": str(project / "model"), "images": str(project / "images"), "output": str(project / "o.pk")}
    a = load_config(
        None,
        {
            **keys,
            "blobs": [{"name": "fc7", "reduce": {"pool": "mean", "grid": 2}}],
            "preprocess": {"resize": "warp", "raw_scale": 255},
        },
    )
    b = load_config(
        None,
        {
            **keys,
            "blobs": [{"reduce": {"grid": 2, "pool": "mean"}, "name": "fc7"}],
            "preprocess": {"raw_scale": 255, "resize": "warp"},
        },
    )
    assert a.result_fingerprint() == b.result_fingerprint() and a.fingerprint() == b.fingerprint()


@pytest.mark.parametrize(
    "text, value",
    [
        ("true", True),
        ("Yes", True),
        ("on", True),
        ("ON", True),
        ("1", True),
        ("false", False),
        ("no", False),
        ("Off", False),
        ("0", False),
    ],
)
def test_boolean_strings(text: str, value: bool, project: Path) -> None:
    keys = {
        "model": str(project / "model"),
        "images": str(project / "images"),
        "output": str(project / "o.pk"),
        "blobs": "fc7",
    }
    assert load_config(None, {**keys, "pickle": text}).pickle is value


@pytest.mark.parametrize("name", ["caffenet_fc.yaml", "caffenet_conv_f16.yaml", "two_gpus.yaml"])
def test_shipped_configs_load(name: str, project: Path) -> None:
    path = CONFIGS / name
    config = load_config(path, {"model": str(project / "model"), "images": str(project / "images")})
    assert config.model == project / "model"
    # Output paths in the file stay relative to the configs directory.
    assert config.output.parent == (CONFIGS.parent / "out").resolve()
    assert len(config.fingerprint()) == 64


def test_shipped_config_contents(project: Path) -> None:
    over = {"model": str(project / "model"), "images": str(project / "images")}
    fc = load_config(CONFIGS / "caffenet_fc.yaml", over)
    assert fc.blobs == ("fc6", "fc7")
    conv = load_config(CONFIGS / "caffenet_conv_f16.yaml", over)
    assert conv.blobs == ("conv1", "conv2", "conv3", "conv4", "conv5")
    assert {spec.dtype for spec in conv.blob_specs} == {"float16"}
    assert conv.blob_specs[0].reduce == {"pool": "max", "grid": 2}
    assert conv.blob_specs[1].reduce == {"pool": "mean", "grid": 2}
    assert conv.blob_specs[2].reduce == {"project": 512, "seed": 0}
    two = load_config(CONFIGS / "two_gpus.yaml", over)
    assert (two.gpus, two.require_gpu) == ((0, 1), True)


def test_an_output_of_savedeep_0_1_0_can_still_be_resumed(project: Path, tmp_path: Path) -> None:
    """One preprocessing spec changed the canonical form: resize_to's default is 256 (0.1.0 wrote null for the
    same 256) and exif_transpose became a key. A manifest written by 0.1.0 must still match the same config,
    and only the same config."""
    from savedeep.config import _sha256_json, recorded_result_fingerprint
    from savedeep.runner.manifest import Manifest

    config = load_config(None, flags(project))
    old = config.canonical()
    old["preprocess"] = {k: v for k, v in old["preprocess"].items() if k != "exif_transpose"} | {"resize_to": None}
    old_record = {"result_fingerprint": _sha256_json({k: old[k] for k in RESULT_KEYS}), "config": old}
    assert old_record["result_fingerprint"] != config.result_fingerprint()  # the bytes did change
    assert recorded_result_fingerprint(old_record) == config.result_fingerprint()
    manifest = Manifest(
        tmp_path,
        json.loads(json.dumps({**old_record, "model": {"sha256": {}}, "images": {"keys_sha256": "k", "count": 0}})),
    )
    assert manifest.changes(config, dict, "k", 0) == []  # resumable
    # a real difference is still one
    other = config.replace(preprocess={"resize": "resize-crop", "resize_to": 300})
    assert manifest.changes(other, dict, "k", 0) == ["config keys preprocess"]
    assert (
        recorded_result_fingerprint(old_record)
        != config.replace(preprocess={"exif_transpose": True}).result_fingerprint()
    )
