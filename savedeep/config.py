"""Load a run configuration from YAML and command-line flags into one frozen, validated object.

``load_config(path, overrides)`` reads the YAML file (if any) with ``yaml.safe_load``,
applies the command-line overrides on top, checks every key once and returns a
:class:`Config`. Every problem is a :class:`~savedeep.errors.ConfigError` whose
message names the key (dotted, ``preprocess.resize``, ``blobs[2].reduce.pool``)
and the fix; all problems of one config are reported together.

NOTE [config path resolution]
    A relative path written in a config FILE is resolved against the directory
    that holds the file, so a config and its model can travel together. A
    relative path given as an override (a command-line flag, or
    ``Config.replace``) is resolved against the current directory, as a shell
    user expects. ``~`` is expanded in both. Stored paths are absolute, so the
    canonical form and the fingerprint do not depend on where savedeep ran.

The schema lives in one table (``_TOP_KEYS`` and ``_PREPROCESS_KEYS``): it drives
validation, the "did you mean" suggestions and :func:`schema_markdown`, which
the docs site renders (docs/reference/config.md).

Size: the whole config schema in one place (one ``_Key`` per YAML key with its checker, the
loader and the frozen :class:`Config`); the docs' configuration reference is generated from it
(:func:`schema_markdown`), and a key's default, check and documentation must not drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from savedeep.errors import ConfigError

log = logging.getLogger(__name__)

ENGINES = ("caffe", "torch")
DTYPES = ("float32", "float16")
COMPRESSIONS = ("zstd", "lz4", "snappy", "none")
STORAGES = ("tensor", "binary")  # how blob columns are stored, see savedeep/data/output.py
ON_ERROR = ("skip", "fail")
# The preprocessing's modes, checked here with the rest of PreprocessSpec (savedeep/data/preprocess.py runs them).
RESIZE_MODES = ("warp", "short-side-crop", "resize-crop", "caffe-io")
MEAN_MODES = ("channel", "image-crop", "image-resize")
DEFAULT_MAX_PIXELS = 100_000_000
POOL_MODES = ("mean", "max")
IMAGE_LIST_SUFFIXES = (".txt", ".csv")

# The levels pyarrow's Parquet writer accepts (pyarrow.Codec.minimum/maximum_compression_level);
# snappy and none take no level at all.
COMPRESSION_LEVELS = {"zstd": (-131072, 22), "lz4": (1, 12)}

# The flags of the original save-deep script, named in "required" errors so the
# user knows how to supply a missing key without a config file.
_FLAGS = {"model": "-m/--model", "blobs": "-b/--blobs", "images": "-i/--images", "output": "-o/--output"}

# Keys that decide the content and layout of the output rows; a run may be
# resumed under a config whose result_fingerprint() matches (producers, GPUs,
# batch size, logging and compression do not change any row).
RESULT_KEYS = ("model", "images", "blobs", "engine", "preprocess", "shard_size", "storage")

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


class _Invalid(Exception):
    """A value failed a check; carries the sentence that completes 'KEY: ...'."""


# --------------------------------------------------------------------------- the frozen objects


@dataclass(frozen=True)
class BlobSpec:
    """One requested blob: its name, its storage dtype and an optional reduction (see savedeep.data.reduce)."""

    name: str
    dtype: str = "float32"
    # {"pool": "mean"|"max", "grid": int|None} or {"project": int, "seed": int}; None keeps the blob whole.
    # A plain dict (not a mapping proxy) so the spec pickles into spawned consumers; never mutate it.
    reduce: dict[str, Any] | None = None

    def __hash__(self) -> int:
        frozen_reduce = None if self.reduce is None else tuple(sorted(self.reduce.items()))
        return hash((self.name, self.dtype, frozen_reduce))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form, as written in the canonical config and the manifest."""
        return {"name": self.name, "dtype": self.dtype, "reduce": None if self.reduce is None else dict(self.reduce)}


@dataclass(frozen=True)
class PreprocessSpec:
    """How images become input blobs: the config's ``preprocess:`` section and the Python API's spec, one class.

    The steps these options select are specified once, in :mod:`savedeep.data.preprocess`'s docstring.
    Each field's default is the one default (the config table :func:`schema_markdown` reads it from
    here), and construction runs the config file's own checks (``_PREPROCESS_KEYS``): ``PreprocessSpec(
    resize="Warp")``, ``transform(model, {"resize": "Warp"})`` and ``preprocess: {resize: Warp}`` give the
    same spec, and the same mistake gives the same message. ``None`` for a field whose default is not
    ``None`` means that default, as ``null`` does in a config file. The class lives here, not beside the
    preprocessor, because the config (a lower layer, see pyproject's import-linter contracts) holds one.
    """

    resize: str = "warp"
    resize_to: int = 256
    mean_mode: str = "channel"
    input_scale: float | None = None
    raw_scale: float = 255.0
    jpeg_draft: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    exif_transpose: bool = False

    def __post_init__(self) -> None:
        values, problems = _check_preprocess({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        if problems:
            _raise_problems("PreprocessSpec", problems)
        for name, value in values.items():
            object.__setattr__(self, name, value)  # the normalised value ("Warp" -> "warp", 255 -> 255.0)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None, source: str = "preprocess") -> PreprocessSpec:
        """The spec of a ``preprocess:`` mapping (a config section, ``savedeep.transform``'s ``preprocess=``):
        unknown keys are errors with a suggestion, every problem is reported at once."""
        if mapping is None:
            return cls()
        if not isinstance(mapping, Mapping):
            _raise_problems(
                source, [("preprocess", f"expected a mapping such as {{resize: warp}}, got {_show(mapping)}")]
            )
        values, problems = _check_preprocess(mapping)
        if problems:
            _raise_problems(source, problems)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain values (the canonical config, the manifest, a converted model's metadata)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Config:
    """A validated savedeep run configuration; build it with load_config, change it with replace."""

    model: Path
    images: Path
    output: Path
    blob_specs: tuple[BlobSpec, ...]
    engine: str = "torch"
    gpus: str | tuple[int, ...] = "all"
    require_gpu: bool = False
    cpu_consumers: int | str = "auto"
    producers: int | str = "auto"
    writers: int | str = "auto"
    consumer_threads: int | str = "auto"
    batch_size: int = 32
    dtype: str = "float32"
    compression: str = "zstd"
    compression_level: int | None = None
    storage: str = "tensor"
    shard_size: int = 1024
    pickle: bool = True
    max_pickle_bytes: int = 4 * 2**30
    space_check: bool = True
    on_error: str = "skip"
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    ring_slots: int | None = None
    log_file: Path | None = None
    report: bool = False
    # The merged, path-resolved input this config was validated from. replace()
    # starts from it so that keys left at their default (log_file, a blob's
    # dtype) keep following the keys they derive from.
    _raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    @property
    def blobs(self) -> tuple[str, ...]:
        """The requested blob names, in the order given, without duplicates."""
        return tuple(spec.name for spec in self.blob_specs)

    @property
    def parquet_dir(self) -> Path:
        """The directory of Parquet shards and the manifest: ``out/acts.pk`` -> ``out/acts.parquet``."""
        from savedeep.files import parquet_dir

        return parquet_dir(self.output)

    def canonical(self) -> dict[str, Any]:
        """JSON-serialisable form with every default filled in and absolute paths; keys sorted."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            if f.name == "blob_specs":
                out["blobs"] = [spec.to_dict() for spec in value]
            elif isinstance(value, PreprocessSpec):
                out[f.name] = dict(sorted(value.to_dict().items()))
            elif isinstance(value, Path):
                out[f.name] = str(value)
            elif isinstance(value, tuple):
                out[f.name] = list(value)
            else:
                out[f.name] = value
        return dict(sorted(out.items()))

    def fingerprint(self) -> str:
        """sha256 hex digest of the canonical JSON: equal configs hash equal, whatever the key order."""
        return _sha256_json(self.canonical())

    def result_fingerprint(self) -> str:
        """sha256 of only the RESULT_KEYS: what must match for a run to resume into existing output."""
        return result_fingerprint_of(self.canonical())

    def replace(self, **changes: Any) -> Config:
        """A new Config with ``changes`` (schema keys, values as in YAML) applied and validated again.

        Relative paths in ``changes`` are resolved against the current directory;
        ``preprocess`` may be a partial mapping that is merged into the current one.
        """
        raw = dict(self._raw) if self._raw else self._raw_from_fields()
        return _build(raw, changes, source="Config.replace", cwd=Path.cwd(), drop_none=False)

    def _raw_from_fields(self) -> dict[str, Any]:
        # Only used for a Config constructed directly, without load_config.
        raw = self.canonical()
        raw.pop("log_file")
        return raw


def result_fingerprint_of(canonical: Mapping[str, Any]) -> str:
    """The result fingerprint of a canonical config, as ``Config.canonical()`` gives it today or as an earlier
    savedeep recorded it in a manifest or a task's record (``record["config"]``).

    A recorded config is first brought to today's form, so that an output written before a key was added
    can still be resumed: savedeep 0.1.0's ``preprocess`` had ``resize_to: null`` where it meant 256 (the
    crop modes' size then and now) and no ``exif_transpose`` (false: it was not a config key).
    """
    current = dict(canonical)
    pre = current.get("preprocess")
    if isinstance(pre, Mapping):
        pre = dict(pre)
        if "resize_to" in pre and pre["resize_to"] is None:
            pre["resize_to"] = 256
        pre.setdefault("exif_transpose", False)
        current["preprocess"] = pre
    return _sha256_json({key: current.get(key) for key in RESULT_KEYS})


def recorded_result_fingerprint(record: Mapping[str, Any]) -> Any:
    """The result fingerprint of a manifest or task record in today's form (see result_fingerprint_of);
    the stored one where the record holds no config."""
    config = record.get("config")
    return result_fingerprint_of(config) if isinstance(config, Mapping) else record.get("result_fingerprint")


def _sha256_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- value checkers
# Each takes the raw value and returns the normalised one or raises _Invalid
# with the rest of the message ("expected ..., got ...").


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _closest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _unknown(key: Any, valid: tuple[str, ...]) -> str:
    return f"unknown key{_closest(str(key), valid)} (valid keys: {', '.join(valid)})"


def _as_int(value: Any, minimum: int | None = None, what: str = "an integer") -> int:
    if isinstance(value, bool):
        raise _Invalid(f"expected {what}, got {_show(value)}")
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9][0-9_]*\s*", value):
        value = int(value.replace("_", ""))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise _Invalid(f"expected {what}, got {_show(value)}")
    if minimum is not None and value < minimum:
        raise _Invalid(f"must be >= {minimum}, got {value}")
    return value


def _positive_int(value: Any) -> int:
    return _as_int(value, minimum=1, what="a whole number >= 1")


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def checker(value: Any) -> Any:
        return None if value is None else check(value)

    return checker


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    # Flags and environment variables arrive as strings.
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.strip().lower() in ("true", "yes", "on", "1")
    raise _Invalid(f"expected true or false, got {_show(value)}")


def _positive_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _Invalid(f"expected a number > 0, got {_show(value)}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _Invalid(f"expected a number > 0, got {_show(value)}") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise _Invalid(f"expected a finite number > 0, got {_show(value)}")
    return float(value)


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def checker(value: Any) -> str:
        if not isinstance(value, str) or value.strip().lower() not in choices:
            hint = _closest(value.strip().lower(), choices) if isinstance(value, str) else ""
            raise _Invalid(f"must be one of {', '.join(choices)}; got {_show(value)}{hint}")
        return value.strip().lower()

    return checker


def parse_size(value: Any) -> int:
    """Bytes from an int or a human size: "4GiB", "500MB", "1.5 GB", "1024" (MB = 10**6, MiB = 2**20)."""
    if isinstance(value, bool):
        raise _Invalid(f"expected a size such as 4GiB or 500MB, got {_show(value)}")
    if isinstance(value, int):
        number: float = value
    elif isinstance(value, str) and (match := _SIZE_RE.match(value)):
        unit = match.group(2).lower()
        if unit not in _SIZE_UNITS:
            raise _Invalid(
                f"unknown size unit {match.group(2)!r} in {value!r}; use B, KB, MB, GB, TB (powers of 1000) "
                f"or KiB, MiB, GiB, TiB (powers of 1024), e.g. 4GiB"
            )
        number = float(match.group(1)) * _SIZE_UNITS[unit]
    else:
        raise _Invalid(f"expected a size such as 4GiB or 500MB, got {_show(value)}")
    if number < 1:
        raise _Invalid(f"must be at least 1 byte, got {_show(value)}")
    return int(number)


def _auto_or_positive(value: Any) -> int | str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return _positive_int(value)
    except _Invalid:
        raise _Invalid(f'expected "auto" or a whole number >= 1, got {_show(value)}') from None


def _gpus(value: Any) -> str | tuple[int, ...]:
    usage = 'expected "cpu", "all", a list of GPU ids such as [0, 1], or the string "0,1"'
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("cpu", "all"):
            return text
        parts = [part.strip() for part in text.split(",")]
        if not all(re.fullmatch(r"[0-9]+", part) for part in parts):
            raise _Invalid(f"{usage}; got {_show(value)}{_closest(text, ('cpu', 'all'))}")
        ids = [int(part) for part in parts]
    elif isinstance(value, int) and not isinstance(value, bool):
        ids = [value]
    elif isinstance(value, (list, tuple)) and value:
        ids = []
        for item in value:
            try:
                ids.append(_as_int(item, minimum=0, what="a GPU id >= 0"))
            except _Invalid as exc:
                raise _Invalid(f"{usage}; item {exc}") from None
    else:
        raise _Invalid(f"{usage}; got {_show(value)}")
    if any(i < 0 for i in ids):
        raise _Invalid(f"GPU ids are >= 0; got {ids}")
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise _Invalid(f"GPU {duplicates} listed twice; list each GPU once (one consumer runs per GPU)")
    return tuple(ids)


def _path_value(value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"expected a path, got {_show(value)}")
    return value


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class _Key:
    """One schema entry: how to check a key and how to describe it in the docs' reference table."""

    name: str
    type: str
    default: Any
    doc: str
    check: Callable[[Any], Any] | None = None
    required: bool = False
    is_path: bool = False


_REQUIRED = object()

# The one default of each preprocess key is PreprocessSpec's; the table adds its check and its documentation.
_SPEC_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PreprocessSpec)}

_PREPROCESS_KEYS: tuple[_Key, ...] = (
    _Key(
        "resize",
        " \\| ".join(RESIZE_MODES),
        _SPEC_DEFAULTS["resize"],
        "How an image becomes the net's input size: warp (squash to H x W), short-side-crop "
        "(short side to resize_to, centre crop), resize-crop (resize to resize_to square, centre crop), "
        "caffe-io (as caffe.io / caffe.Classifier)",
        _choice(RESIZE_MODES),
    ),
    _Key(
        "resize_to",
        "int",
        _SPEC_DEFAULTS["resize_to"],
        "Intermediate size for the crop modes (at least the net's input size; unused by warp and caffe-io)",
        _positive_int,
    ),
    _Key(
        "mean_mode",
        " \\| ".join(MEAN_MODES),
        _SPEC_DEFAULTS["mean_mode"],
        "How mean.npy is subtracted: per-channel mean, or the mean image cropped or resized to the input",
        _choice(MEAN_MODES),
    ),
    _Key(
        "input_scale",
        "float \\| null",
        _SPEC_DEFAULTS["input_scale"],
        "Multiply the mean-subtracted input by this (null: no scaling)",
        _optional(_positive_float),
    ),
    _Key(
        "raw_scale",
        "float",
        _SPEC_DEFAULTS["raw_scale"],
        "Pixel range of the input before mean subtraction (Caffe's raw_scale)",
        _positive_float,
    ),
    _Key(
        "jpeg_draft",
        "bool",
        _SPEC_DEFAULTS["jpeg_draft"],
        "Let the JPEG decoder downscale while decoding (faster, slightly different pixels)",
        _as_bool,
    ),
    _Key(
        "max_pixels",
        "int",
        _SPEC_DEFAULTS["max_pixels"],
        "Refuse images with more pixels (decompression bombs)",
        _positive_int,
    ),
    _Key(
        "exif_transpose",
        "bool",
        _SPEC_DEFAULTS["exif_transpose"],
        "Turn photos upright by their EXIF orientation tag (false: ignore it, as Caffe's loaders do)",
        _as_bool,
    ),
)

_TOP_KEYS: tuple[_Key, ...] = (
    _Key(
        "model",
        "path",
        _REQUIRED,
        "Model directory with deploy.prototxt, weights.caffemodel and mean.npy",
        required=True,
        is_path=True,
    ),
    _Key(
        "images",
        "path",
        _REQUIRED,
        "Image directory (searched recursively) or a list file (.txt, or .csv with a `path` column)",
        required=True,
        is_path=True,
    ),
    _Key(
        "output",
        "path",
        _REQUIRED,
        "Final pickle, e.g. out/acts.pk; the Parquet shards and manifest go to out/acts.parquet/",
        required=True,
        is_path=True,
    ),
    _Key(
        "blobs",
        "list",
        _REQUIRED,
        'Blob names ("fc6,fc7", [fc6, fc7]) or items {name, dtype, reduce}; '
        "reduce is {pool: mean\\|max, grid: k\\|null} or {project: D, seed: S}",
        required=True,
    ),
    _Key(
        "engine",
        " \\| ".join(ENGINES),
        "torch",
        "Forward pass by pycaffe or by PyTorch from the same files",
        _choice(ENGINES),
    ),
    _Key(
        "gpus",
        '"cpu" \\| "all" \\| list of int',
        "all",
        'GPUs to run on, one consumer each: [0, 1] or "0,1" (positions within CUDA_VISIBLE_DEVICES; unset: '
        'nvidia-smi\'s numbers); "all": every GPU, or the CPU if there is none',
        _gpus,
    ),
    _Key("require_gpu", "bool", False, "Fail instead of falling back to the CPU when no GPU is usable", _as_bool),
    _Key(
        "cpu_consumers",
        'int >= 1 \\| "auto"',
        "auto",
        "Consumer processes when running on the CPU (auto: from the cores, the engine, the net and the blobs' "
        "sizes, capped by the memory available; see the docs' performance page)",
        _auto_or_positive,
    ),
    _Key("producers", 'int >= 1 \\| "auto"', "auto", "Image-decoding processes", _auto_or_positive),
    _Key(
        "consumer_threads",
        'int >= 1 \\| "auto"',
        "auto",
        "Threads of each consumer's forward pass (auto: the usable CPUs shared among the CPU consumers; beside GPUs, "
        "what producers and writers leave)",
        _auto_or_positive,
    ),
    _Key(
        "writers",
        'int >= 1 \\| "auto"',
        "auto",
        "Parquet-writing processes, each writing whole shards (auto: 1 on the CPU, more beside several GPUs)",
        _auto_or_positive,
    ),
    _Key("batch_size", "int >= 1", 32, "Images per forward pass", _positive_int),
    _Key(
        "dtype",
        " \\| ".join(DTYPES),
        "float32",
        "Storage dtype of every blob that does not set its own",
        _choice(DTYPES),
    ),
    _Key("compression", " \\| ".join(COMPRESSIONS), "zstd", "Parquet compression codec", None),
    _Key(
        "compression_level",
        "int \\| null",
        None,
        "Codec level (zstd -131072..22, lz4 1..12; null: codec default)",
        None,
    ),
    _Key(
        "storage",
        " \\| ".join(STORAGES),
        "tensor",
        "Blob columns as Arrow fixed-shape tensors (pandas, DuckDB, Spark read lists) or fixed-size binary "
        "(faster to write: 2.2-2.5x for float16 + zstd; savedeep.load reads both)",
        _choice(STORAGES),
    ),
    _Key("shard_size", "int >= 1", 1024, "Images per Parquet shard", _positive_int),
    _Key("pickle", "bool", True, "Also write the final pandas DataFrame pickle", _as_bool),
    _Key(
        "max_pickle_bytes",
        "int \\| size",
        "4GiB",
        'Refuse, before the run starts, a pickle of more activations; "500MB", "4GiB" or bytes',
        parse_size,
    ),
    _Key(
        "space_check",
        "bool",
        True,
        "Refuse to start when the output's file system lacks the space the run is "
        "predicted to write (false: --no-space-check, for an estimate that is too high)",
        _as_bool,
    ),
    _Key(
        "on_error",
        " \\| ".join(ON_ERROR),
        "skip",
        "A bad image: record it as a failure and go on, or stop the run",
        _choice(ON_ERROR),
    ),
    _Key("preprocess", "mapping", "(below)", "Image preprocessing, keys below", None),
    _Key(
        "ring_slots",
        "int \\| null",
        None,
        "Shared-memory batch slots per ring (null: chosen by the pipeline)",
        _optional(_positive_int),
    ),
    _Key("log_file", "path \\| null", None, "Log file (null: next to the output, out/acts.log)", is_path=True),
    _Key(
        "report",
        "bool",
        False,
        "After the run, write the HTML report out/acts.report.html (savedeep report with "
        "its defaults; needs matplotlib)",
        _as_bool,
    ),
)

_TOP_NAMES = tuple(key.name for key in _TOP_KEYS)
_PREPROCESS_NAMES = tuple(key.name for key in _PREPROCESS_KEYS)
_PATH_KEYS = tuple(key.name for key in _TOP_KEYS if key.is_path)


def _check_preprocess(mapping: Mapping[Any, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The one validation of preprocess options, for a config file and for PreprocessSpec alike.

    Returns the normalised value of every key given (``null`` for a key whose default is not null: that
    default) and the problems as (dotted key, message), unknown keys included.
    """
    values: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for key in mapping:
        if key not in _PREPROCESS_NAMES:
            problems.append((f"preprocess.{key}", _unknown(key, _PREPROCESS_NAMES)))
    for spec in _PREPROCESS_KEYS:
        if spec.name not in mapping:
            continue
        value = mapping[spec.name]
        if value is None and spec.default is not None:
            values[spec.name] = spec.default
            continue
        try:
            values[spec.name] = value if spec.check is None else spec.check(value)
        except _Invalid as exc:
            problems.append((f"preprocess.{spec.name}", str(exc)))
    return values, problems


def _raise_problems(source: str, problems: list[tuple[str, str]]) -> None:
    """One ConfigError for every problem found (``.problems``: the (key, message) pairs)."""
    lines = [f"{key}: {message}" for key, message in problems]
    if len(lines) == 1:
        text = f"invalid config ({source}): {lines[0]}"
    else:
        text = "\n  ".join([f"invalid config ({source}), {len(lines)} problems:", *lines])
    error = ConfigError(text)
    error.problems = list(problems)  # type: ignore[attr-defined]
    raise error


def schema_markdown() -> str:
    """The config schema as a Markdown table (with path rules), for the docs site (docs/hooks.py)."""

    def default_text(key: _Key) -> str:
        if key.default is _REQUIRED:
            return "**required**"
        if key.default is None:
            return "null"
        if isinstance(key.default, bool):
            return "true" if key.default else "false"
        if isinstance(key.default, int) and key.default >= 10_000:
            return f"{key.default:_}"
        return str(key.default)

    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key in _TOP_KEYS:
        lines.append(f"| `{key.name}` | {key.type} | {default_text(key)} | {key.doc} |")
    for key in _PREPROCESS_KEYS:
        lines.append(f"| `preprocess.{key.name}` | {key.type} | {default_text(key)} | {key.doc} |")
    lines += [
        "",
        "Blob items: a name, or a mapping `{name: conv1, dtype: float16, reduce: {pool: max, grid: 2}}`. "
        "`reduce.pool` averages or maxes each channel over the spatial grid (`grid: null` gives one value per "
        "channel, `grid: k` a k x k grid with PyTorch's adaptive-pooling bins); `reduce.project: D` multiplies the "
        "flattened blob by a seeded Gaussian matrix with entries N(0, 1/D) (`seed`, default 0). Duplicate blob "
        "names keep their first occurrence, with a warning.",
        "",
        "Relative paths in a config file are resolved against the directory of that file; relative paths given "
        "on the command line are resolved against the current directory. Command-line flags override the file. "
        "Unknown keys are errors, with a suggestion. `null` for a key whose default is not null means its default.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- loading


class _SafeLoaderNoDuplicates(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error instead of last-one-wins."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, str) and key in seen:
            raise ConfigError(
                f"{loader.name}: key {key!r} appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                f"keep one of them"
            )
        if isinstance(key, str):
            seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_SafeLoaderNoDuplicates.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc}); give a readable UTF-8 YAML file") from None
    loader = _SafeLoaderNoDuplicates(text)
    loader.name = str(path)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        # One line: PyYAML's own text spreads the problem and its context over several.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(
            f"config file {path} is not valid YAML: {what}{where}; fix the YAML syntax there "
            "(indentation, brackets, quotes, a colon after each key)"
        ) from None
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: the top level must be a mapping of keys (model: ..., blobs: ...), "
            f"got {type(data).__name__}"
        )
    return data


def _resolve(value: Any, base: Path) -> Any:
    """Absolute path string for a path value, relative to base; anything else is returned for the checker."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        return value
    path = Path(value.strip()).expanduser()
    if not path.is_absolute():
        path = base / path
    return str(path.resolve())


def _absolutise(mapping: Mapping[str, Any], base: Path) -> dict[str, Any]:
    return {
        key: (_resolve(value, base) if key in _PATH_KEYS and value is not None else value)
        for key, value in mapping.items()
    }


def _split_dotted(overrides: Mapping[str, Any], drop_none: bool) -> dict[str, Any]:
    """Turn {"preprocess.resize": "warp"} into {"preprocess": {"resize": "warp"}}; maybe drop None values."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None and drop_none:
            continue
        if "." in key:
            head, _, tail = key.partition(".")
            section = out.setdefault(head, {})
            if isinstance(section, dict):
                section[tail] = value
                continue
        if key == "preprocess" and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None, *, cwd: Path | None = None) -> Config:
    """Load a config file (or none) and apply command-line overrides on top; returns the validated Config.

    ``overrides`` maps schema keys to values as a flag gives them ("0,1", "fc6,fc7", 64);
    None values are ignored (a flag that was not given), dotted keys reach into
    ``preprocess``. Relative paths: see NOTE [config path resolution].
    """
    cwd = Path.cwd() if cwd is None else Path(cwd)
    raw: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_absolute():
            path = cwd / path
        raw = _absolutise(_read_yaml(path), path.parent)
        source = str(path)
    return _build(raw, dict(overrides or {}), source=source, cwd=cwd, drop_none=True)


def _build(raw: Mapping[str, Any], overrides: Mapping[str, Any], *, source: str, cwd: Path, drop_none: bool) -> Config:
    """Merge overrides (relative to cwd) into raw (already absolute) and validate the result.

    drop_none: a None override means "flag not given" on the command line, but
    "back to the default" in Config.replace.
    """
    merged = dict(raw)
    for key, value in _absolutise(_split_dotted(overrides, drop_none), cwd).items():
        if key == "preprocess" and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return _Validator(source).run(merged)


class _Validator:
    """Checks a merged raw mapping key by key, collecting every problem before raising one ConfigError."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[tuple[str, str]] = []
        self.kept_blob_items: list[Any] = []

    def fail(self, key: str, message: str) -> None:
        self.problems.append((key, message))

    def check(self, key: str, value: Any, checker: Callable[[Any], Any], default: Any = None) -> Any:
        try:
            return checker(value)
        except _Invalid as exc:
            self.fail(key, str(exc))
            return default

    def run(self, raw: dict[str, Any]) -> Config:
        values: dict[str, Any] = {}
        for key in raw:
            if not isinstance(key, str) or key not in _TOP_NAMES:
                self.fail(str(key), _unknown(key, _TOP_NAMES))
        for spec in _TOP_KEYS:
            if spec.required and raw.get(spec.name) is None:
                self.fail(spec.name, f"required; set `{spec.name}:` in the config file or pass {_FLAGS[spec.name]}")
        for spec in _TOP_KEYS:
            if spec.check is not None and spec.name in raw:
                value = raw[spec.name]
                # null means "the default" for keys whose default is not null.
                if value is not None or spec.default is None:
                    values[spec.name] = self.check(spec.name, value, spec.check, spec.default)

        dtype = values.get("dtype", "float32")
        values["model"] = self.existing_path("model", raw.get("model"), want_dir=True)
        values["images"] = self.existing_path("images", raw.get("images"), want_dir=None)
        values["output"] = self.output_path(raw.get("output"))
        if raw.get("log_file") is not None:
            values["log_file"] = Path(self.check("log_file", raw["log_file"], _path_value, ""))
        elif values["output"] is not None:
            values["log_file"] = values["output"].parent / (values["output"].stem + ".log")
        values["blob_specs"] = self.blobs(raw.get("blobs"), dtype) if raw.get("blobs") is not None else ()
        if raw.get("blobs") is not None:
            # replace() revalidates from _raw; without the duplicates it warns only once.
            raw = {**raw, "blobs": self.kept_blob_items}
        values["compression"], values["compression_level"] = self.compression(
            raw.get("compression", "zstd"), raw.get("compression_level")
        )
        values["preprocess"] = self.preprocess(raw.get("preprocess"))
        if values.get("require_gpu") and values.get("gpus") == "cpu":
            self.fail(
                "require_gpu", 'is true but gpus is "cpu"; set gpus to "all" or a list of ids, or require_gpu to false'
            )

        if self.problems:
            self.raise_problems()
        return Config(**values, _raw=raw)

    def raise_problems(self) -> None:
        _raise_problems(self.source, self.problems)

    def existing_path(self, key: str, value: Any, want_dir: bool | None) -> Path | None:
        if value is None:
            return None
        text = self.check(key, value, _path_value)
        if text is None:
            return None
        path = Path(text)
        if not path.exists():
            self.fail(
                key,
                f"{path} does not exist; give an existing "
                f"{'model directory' if want_dir else 'image directory or list file'}",
            )
        elif want_dir and not path.is_dir():
            self.fail(
                key,
                f"{path} is not a directory; give the directory that holds deploy.prototxt, "
                "weights.caffemodel and mean.npy",
            )
        elif want_dir is None and path.is_file() and path.suffix.lower() not in IMAGE_LIST_SUFFIXES:
            self.fail(
                key,
                f"{path} is a file but not a list file; give a directory of images, "
                f"or a list file ending in {' or '.join(IMAGE_LIST_SUFFIXES)}",
            )
        return path

    def output_path(self, value: Any) -> Path | None:
        if value is None:
            return None
        text = self.check("output", value, _path_value)
        if text is None:
            return None
        path = Path(text)
        if path.is_dir():
            self.fail("output", f"{path} is a directory; give the path of the final pickle, e.g. {path / 'acts.pk'}")
        elif path.suffix.lower() == ".parquet":
            self.fail(
                "output",
                f"{path} ends in .parquet, the name of the shard directory; give the pickle path, "
                f"e.g. {path.with_suffix('.pk')}",
            )
        return path

    def compression(self, codec: Any, level: Any) -> tuple[str, int | None]:
        # YAML null means "no compression" here, as the word none does.
        name = "none" if codec is None else self.check("compression", codec, _choice(COMPRESSIONS), "zstd")
        if level is None:
            return name, None
        number = self.check("compression_level", level, _as_int)
        if number is None:
            return name, None
        if name not in COMPRESSION_LEVELS:
            self.fail("compression_level", f"{name} takes no level; remove compression_level or use zstd or lz4")
            return name, None
        low, high = COMPRESSION_LEVELS[name]
        if not low <= number <= high:
            self.fail("compression_level", f"{name} levels are {low}..{high}, got {number}")
        return name, number

    def preprocess(self, value: Any) -> PreprocessSpec:
        if value is None:
            return PreprocessSpec()
        if not isinstance(value, dict):
            self.fail("preprocess", f"expected a mapping such as {{resize: warp}}, got {_show(value)}")
            return PreprocessSpec()
        values, problems = _check_preprocess(value)
        self.problems.extend(problems)
        return PreprocessSpec() if problems else PreprocessSpec(**values)

    def blobs(self, value: Any, default_dtype: str) -> tuple[BlobSpec, ...]:
        items: list[tuple[str, Any]] = []  # (dotted key for errors, item)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            self.fail("blobs", f'expected a list of blob names or the string "fc6,fc7", got {_show(value)}')
            return ()
        for index, item in enumerate(value):
            key = f"blobs[{index}]"
            if isinstance(item, str):
                # "fc6,fc7" as one flag value or one list item.
                items.extend((key, name.strip()) for name in item.split(",") if name.strip())
            else:
                items.append((key, item))
        specs: list[BlobSpec] = []
        problems_before = len(self.problems)
        for key, item in items:
            spec = self.blob_item(key, item, default_dtype)
            if spec is None:
                continue
            first = next((s for s in specs if s.name == spec.name), None)
            if first is None:
                specs.append(spec)
                self.kept_blob_items.append(item)
            else:
                differs = "" if first == spec else f" (the later entry {spec.to_dict()} differs and is ignored)"
                log.warning("blob %r is listed more than once; keeping its first occurrence%s", spec.name, differs)
        if not specs and len(self.problems) == problems_before:
            self.fail("blobs", "is empty; list at least one blob name, e.g. blobs: [fc7]")
        return tuple(specs)

    def blob_item(self, key: str, item: Any, default_dtype: str) -> BlobSpec | None:
        if isinstance(item, str):
            return BlobSpec(item, default_dtype, None)
        if not isinstance(item, dict):
            self.fail(
                key, f"expected a blob name or a mapping {{name: fc7, dtype: float16, reduce: ...}}, got {_show(item)}"
            )
            return None
        allowed = ("name", "dtype", "reduce")
        for sub in item:
            if sub not in allowed:
                self.fail(f"{key}.{sub}", _unknown(sub, allowed))
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            self.fail(f"{key}.name", f"required: the blob's name as a non-empty string, got {_show(name)}")
            return None
        name = name.strip()
        dtype = default_dtype
        if item.get("dtype") is not None:
            dtype = self.check(f"{key}.dtype", item["dtype"], _choice(DTYPES), default_dtype)
        reduce = self.reduce(f"{key}.reduce", item.get("reduce"))
        return BlobSpec(name, dtype, reduce)

    def reduce(self, key: str, value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        usage = "use {pool: mean|max, grid: k|null} or {project: D, seed: S}"
        if not isinstance(value, dict):
            self.fail(key, f"expected a mapping; {usage}; got {_show(value)}")
            return None
        allowed = ("pool", "grid", "project", "seed")
        for sub in value:
            if sub not in allowed:
                self.fail(f"{key}.{sub}", f"unknown key{_closest(str(sub), allowed)}; {usage}")
        pooling = "pool" in value or "grid" in value
        projecting = "project" in value or "seed" in value
        if pooling and projecting:
            self.fail(key, f"mixes pooling and projection; choose one: {usage}")
            return None
        if pooling:
            if "pool" not in value:
                self.fail(f"{key}.pool", "required with grid; set pool: mean or pool: max")
                return None
            pool = self.check(f"{key}.pool", value["pool"], _choice(POOL_MODES))
            grid = self.check(f"{key}.grid", value.get("grid"), _optional(_positive_int))
            return {"pool": pool, "grid": grid}
        if projecting:
            if "project" not in value:
                self.fail(f"{key}.project", "required with seed; set project: D, the output dimension")
                return None
            dim = self.check(f"{key}.project", value["project"], _positive_int)
            seed = self.check(
                f"{key}.seed", value.get("seed", 0), lambda v: _as_int(v, minimum=0, what="a whole number >= 0")
            )
            return {"project": dim, "seed": seed}
        self.fail(key, f"is empty; {usage}, or remove reduce")
        return None
