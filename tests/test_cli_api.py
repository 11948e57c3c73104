"""The command line, the Python API, and reading the output with other tools."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import savedeep
from savedeep.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(photos, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli_imgs")
    for p in photos[:5]:
        shutil.copyfile(p, d / p.name)
    return d


def test_help_imports_nothing_heavy():
    code = (
        "import sys, savedeep.cli as c\n"
        "try:\n    c.main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('numpy', 'pandas', 'pyarrow', 'torch', 'caffe', 'cv2') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "--resume" in r.stdout and "--no-pickle" in r.stdout and "exit codes" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow  # a real run: seconds
def test_original_four_flags_alone(caffenet_dir, images, tmp_path, capsys):
    out = tmp_path / "acts.pk"
    rc = main(
        [
            "run",
            "-m",
            str(caffenet_dir),
            "-b",
            "fc7,fc7,fc6",
            "-i",
            str(images),
            "-o",
            str(out),
            "--gpus",
            "cpu",
            "--no-progress",
        ]
    )
    assert rc == 0
    df = pd.read_pickle(out)
    assert list(df.columns) == ["image", "fc7", "fc6"]  # the duplicate collapsed
    assert len(df) == 5 and df["fc7"].iloc[0].shape == (4096,)
    # an existing output is refused with exit code 5 ...
    assert main(["run", "-m", str(caffenet_dir), "-b", "fc7", "-i", str(images), "-o", str(out), "--gpus", "cpu"]) == 5
    assert "--overwrite" in capsys.readouterr().err


def test_unknown_blob_stops_before_any_worker(caffenet_dir, images, tmp_path, capsys):
    out = tmp_path / "x" / "acts.pk"
    rc = main(["run", "-m", str(caffenet_dir), "-b", "fc7,fc9", "-i", str(images), "-o", str(out), "--gpus", "cpu"])
    assert rc == 3
    err = capsys.readouterr().err
    assert "fc9" in err and "fc8" in err  # lists the valid blobs
    assert not (tmp_path / "x").exists()  # nothing was started or written


def test_bad_config_key_exit_2(caffenet_dir, images, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {caffenet_dir}\nimages: {images}\noutput: {tmp_path}/a.pk\nblobs: [fc7]\nbatchsize: 4\n")
    assert main(["run", str(cfg)]) == 2
    assert "did you mean 'batch_size'" in capsys.readouterr().err


def test_validate_and_inspect(caffenet_dir, images, tmp_path, capsys):
    assert (
        main(["validate", "-m", str(caffenet_dir), "-b", "conv1,fc7", "-i", str(images), "-o", str(tmp_path / "a.pk")])
        == 0
    )
    text = capsys.readouterr().out
    assert "images: 5" in text and "blob conv1: (96, 55, 55)" in text and "5 of the first 5 images decode" in text
    assert not (tmp_path / "a.parquet").exists()
    assert main(["inspect", str(caffenet_dir), "--json", "--n-images", "10"]) == 0
    # the same object as savedeep.inspect.to_json: the rows and the totals (before: the rows alone)
    listing = json.loads(capsys.readouterr().out)
    fc7 = next(r for r in listing["blobs"] if r["blob"] == "fc7")
    assert fc7["shape"] == [4096] and fc7["total_float32"] == 10 * 4096 * 4
    assert listing["images"] == 10
    assert listing["total"]["total_float32"] == sum(r["total_float32"] for r in listing["blobs"]) > 10 * 4096 * 4


@pytest.mark.slow  # a real run: seconds
def test_reductions_csv_metadata_and_interop(caffenet_dir, images, tmp_path):
    import duckdb
    import rsatoolbox

    listing = tmp_path / "list.csv"
    names = sorted(p.name for p in images.iterdir())
    listing.write_text("path,condition\n" + "".join(f"{images / n},c{i % 2}\n" for i, n in enumerate(names)))
    cfg = savedeep.load_config(
        None,
        model=caffenet_dir,
        images=listing,
        output=tmp_path / "acts.pk",
        gpus="cpu",
        blobs=[
            {"name": "conv1", "dtype": "float16", "reduce": {"pool": "max", "grid": 2}},
            {"name": "conv3", "reduce": {"project": 64, "seed": 3}},
            "fc7",
        ],
    )
    savedeep.run(cfg)
    df = savedeep.load(tmp_path / "acts.pk")
    assert list(df["condition"]) == [f"c{i % 2}" for i in range(len(names))]  # metadata carried, list order kept
    assert df["conv1"].iloc[0].shape == (96, 2, 2) and df["conv1"].iloc[0].dtype == np.float16
    assert df["conv3"].iloc[0].shape == (64,)
    manifest = json.loads((tmp_path / "acts.parquet" / "_manifest.json").read_text())
    assert manifest["blobs"]["conv1"]["reduce"] and manifest["blobs"]["conv3"]["reduce"]

    # The reduced values, against numpy on the whole blobs of a run over the same images.
    whole_cfg = cfg.replace(output=tmp_path / "whole" / "acts.pk", blobs=["conv1", "conv3"])
    savedeep.run(whole_cfg)
    whole = savedeep.load(tmp_path / "whole" / "acts.pk")
    assert list(whole["image"]) == list(df["image"])
    conv1 = np.stack(whole["conv1"])  # (n, 96, 55, 55): adaptive 2x2 bins are rows/cols [0, 28) and [27, 55)
    bins = [(0, 28), (27, 55)]
    pooled = np.stack(
        [np.stack([conv1[:, :, a:b, c:d].max(axis=(2, 3)) for c, d in bins], axis=-1) for a, b in bins], axis=-2
    )
    assert np.array_equal(np.stack(df["conv1"]), pooled.astype(np.float16))
    conv3 = np.stack(whole["conv3"]).reshape(len(whole), -1)  # (n, 384 * 13 * 13)
    matrix = np.random.default_rng(3).standard_normal((conv3.shape[1], 64), dtype=np.float32) * np.float32(
        1 / np.sqrt(64)
    )  # the recipe the README and the manifest state
    np.testing.assert_allclose(
        np.stack(df["conv3"]), conv3 @ matrix, rtol=1e-4, atol=1e-4 * np.abs(conv3 @ matrix).max()
    )

    # pandas and pyarrow read the shards directly
    t = pq.read_table(tmp_path / "acts.parquet" / "part-00000.parquet")
    fc7 = t.column("fc7").combine_chunks().to_numpy_ndarray()
    assert np.array_equal(fc7, np.stack(df["fc7"]))
    pdf = pd.read_parquet(tmp_path / "acts.parquet" / "part-00000.parquet")
    assert list(pdf["image"]) == list(df["image"])
    # DuckDB sees the tensor as a fixed-size array
    got = duckdb.sql(
        f"SELECT image, fc7[1] AS v FROM '{tmp_path}/acts.parquet/part-*.parquet' ORDER BY image"
    ).fetchall()
    assert [g[0] for g in got] == sorted(df["image"])
    assert np.isclose(got[0][1], df.set_index("image").loc[got[0][0], "fc7"][0])
    # rsatoolbox: the README's few lines
    X = savedeep.load_array(tmp_path / "acts.pk", "fc7").reshape(len(df), -1)
    ds = rsatoolbox.data.Dataset(X, obs_descriptors={"image": list(df["image"])})
    rdm = rsatoolbox.rdm.calc_rdm(ds, method="correlation")
    assert rdm.n_cond == len(df)


@pytest.mark.slow  # a real run: seconds
def test_load_partial_output(caffenet_dir, images, tmp_path, monkeypatch, caplog):
    out = tmp_path / "acts.pk"
    cmd = [
        sys.executable,
        "-m",
        "savedeep",
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
        "--batch-size",
        "1",
        "--shard-size",
        "1",
        "--no-progress",
    ]
    env = dict(__import__("os").environ, SAVEDEEP_FAULT="role=consumer,batch=3,action=raise")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 6, r.stderr
    df = savedeep.load(out)
    assert df.attrs["savedeep"]["partial"] is True
    assert 0 < len(df) < 5 and "partial output" in caplog.text
    arr = savedeep.load_array(out, "fc7")
    assert arr.shape == (len(df), 4096)


def test_on_error_fail_stops_naming_the_file(caffenet_dir, images, tmp_path, capsys):
    bad = tmp_path / "imgs"
    shutil.copytree(images, bad)
    (bad / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    rc = main(
        [
            "run",
            "-m",
            str(caffenet_dir),
            "-b",
            "fc7",
            "-i",
            str(bad),
            "-o",
            str(tmp_path / "a.pk"),
            "--gpus",
            "cpu",
            "--on-error",
            "fail",
            "--no-progress",
        ]
    )
    assert rc == 4
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "on_error: skip" in err


@pytest.mark.slow  # a real run: seconds
def test_overwrite_next_to_a_foreign_file_refuses_and_the_file_survives(caffenet_dir, images, tmp_path, capsys):
    data = tmp_path / "data"  # `-o ~/data/acts.pk`: ~/data must survive an --overwrite
    data.mkdir()
    (data / "stimuli.csv").write_text("path\n")
    out = data / "acts.pk"
    args = [
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
    assert main(args) == 0
    first = savedeep.load(out)
    notes = data / "acts.parquet" / "notes.txt"
    notes.write_text("my notes")
    capsys.readouterr()
    assert main(args + ["--overwrite"]) == 5
    err = capsys.readouterr().err
    assert f"savedeep did not write {notes}" in err and "nothing was deleted" in err and "Traceback" not in err
    assert notes.read_text() == "my notes"
    assert np.array_equal(np.stack(savedeep.load(out)["fc7"]), np.stack(first["fc7"]))  # the output is intact
    notes.unlink()
    assert main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in data.iterdir()) == [
        "acts.failures.parquet",
        "acts.log",
        "acts.parquet",
        "acts.pk",
        "stimuli.csv",
    ]  # and no lock left behind


@pytest.mark.slow  # a real run: seconds
def test_break_lock_takes_the_lock_of_a_run_on_another_host(caffenet_dir, images, tmp_path, capsys):
    out = tmp_path / "acts.pk"
    lock = tmp_path / ".acts.lock"  # left by a run whose node crashed
    lock.write_text(json.dumps({"host": "node-9.cluster", "pid": 5150, "since": "2026-01-02 03:04:05 UTC"}))
    args = [
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
    assert main(args) == 5
    err = capsys.readouterr().err
    assert "pid 5150 on host node-9.cluster, since 2026-01-02 03:04:05 UTC" in err and "--break-lock" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".acts.lock"]  # refused: nothing else was written
    assert main(args + ["--break-lock"]) == 0
    assert len(savedeep.load(out)) == 5 and not lock.exists()


# The subcommands that are one public function each: every option of the subcommand is a parameter of
# the function, so nothing is reachable from the command line and not from Python. The positional
# OUTPUT/MODEL is the function's first parameter; -q only sets the console's log level.
_SUBCOMMAND_FUNCTIONS = {"export": "export", "report": "report", "merge": "merge", "convert": "convert"}
_FIRST_PARAMETER = {"output", "model"}


@pytest.mark.parametrize("command", sorted(_SUBCOMMAND_FUNCTIONS))
def test_each_subcommands_options_are_parameters_of_its_public_function(command):
    """Before: savedeep.export had no compression_level and savedeep.report no thumbnails."""
    import argparse
    import inspect

    from savedeep.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    dests = {a.dest for a in sub._actions if a.dest not in ("help", "quiet")}
    params = list(inspect.signature(getattr(savedeep, _SUBCOMMAND_FUNCTIONS[command])).parameters)
    missing = {d for d in dests - set(params) if d not in _FIRST_PARAMETER}
    assert not missing, f"savedeep {command}: options {sorted(missing)} are not parameters of savedeep.{command}"
    assert dests & _FIRST_PARAMETER, command  # the positional argument is there, as the first parameter


def test_the_public_functions_stay_functions_after_every_submodule_is_imported():
    """``savedeep.report(path)`` after a run: the run imported the module savedeep.report, which replaced the
    function of the same name on the package ("'module' object is not callable"). No submodule may be
    named like a public function (the report's module is savedeep.analysis.report)."""
    import importlib
    import pkgutil
    import types

    for info in pkgutil.walk_packages(savedeep.__path__, "savedeep."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
    for name in savedeep.__all__:
        value = getattr(savedeep, name)
        assert not isinstance(value, types.ModuleType), f"savedeep.{name} is the module {value.__name__}"


def test_run_returns_the_report_it_wrote_and_a_task_writes_none(caffenet_dir, images, tmp_path):
    """One run sequence (savedeep.run), which the CLI calls: the report's path is on the result, and a task
    (a share of the rows) writes no report. Before, the CLI had its own copy of the sequence and the API's
    result did not say where the report went."""
    out = tmp_path / "whole" / "acts.pk"
    result = savedeep.run(None, model=caffenet_dir, images=images, output=out, blobs=["fc7"], report=True)
    assert result.report is not None and result.report.is_file() and result.report.suffix == ".html"
    part = savedeep.run(
        None,
        model=caffenet_dir,
        images=images,
        output=tmp_path / "tasks" / "acts.pk",
        blobs=["fc7"],
        report=True,
        task="0/2",
    )
    assert part.report is None and not list((tmp_path / "tasks").glob("*.html"))


# --------------------------------------------------------------------------- option names and exit codes

_WRITES = (
    "what this command writes (run: the output's pickle, its Parquet shards beside it; export, report, "
    "convert: the file or folder they write)"
)
_IMAGES = "the image directory or list file (.txt/.csv)"
# What each option name means, in every subcommand that has it; kind is what its value is. Issue 34: `--images`
# was a path in run and a count in inspect, and `--time` a flag in validate and a time limit in slurm.
OPTIONS = {
    "-o": ("path", _WRITES),
    "--out": ("path", _WRITES),
    "--output": ("path", "run's -o, named as the config key"),
    "-i": ("path", _IMAGES),
    "--images": ("path", _IMAGES),
    "--imgs": ("path", _IMAGES),
    "-m": ("path", "the model directory"),
    "--model": ("path", "the model directory"),
    "MODEL": ("path", "the model directory (inspect: or its deploy.prototxt)"),
    "OUTPUT": ("path", "a run's output, out/acts.pk or out/acts.parquet (what run -o wrote)"),
    "CONFIG": ("path", "a YAML config file"),
    "-b": ("names", "blob names, comma-separated"),
    "--blobs": ("names", "blob names, comma-separated"),
    "--overwrite": ("flag", "replace what this command writes"),
    "--resume": ("flag", "complete an interrupted run"),
    "--break-lock": ("flag", "take a lock whose run is gone"),
    "--no-pickle": ("flag", "write no DataFrame pickle"),
    "-q": ("flag", "warnings and errors only"),
    "--quiet": ("flag", "warnings and errors only"),
    "--json": ("flag", "print JSON for scripts"),
    "--to": ("choice", "the format to write"),
    "--task": ("text", "K/N: this task's share"),
    "--tasks": ("int", "the number of tasks of the array"),
    "--n-images": ("int", "a number of images"),
    "--max-images": ("int", "at most this many images"),
    "--estimate-time": ("flag", "forward a batch, estimate"),
    "--time": ("text", "a time limit (Slurm's --time)"),
    "--batch-size": ("int", "images per forward pass"),
    "--batch": ("text", "a converted model's batch size or 'dynamic'"),
    "--gpus": ("text", "0,1 | all | cpu"),
    "--require-gpu": ("flag", "no CPU fallback"),
    "--engine": ("choice", "caffe or torch"),
    "--producers": ("text", "decoding processes"),
    "--cpu-consumers": ("text", "forward processes on the CPU"),
    "--writers": ("text", "Parquet-writing processes"),
    "--dtype": ("choice", "storage dtype"),
    "--storage": ("choice", "tensor or binary columns"),
    "--shard-size": ("int", "images per shard"),
    "--on-error": ("choice", "what a bad image does"),
    "--no-space-check": ("flag", "skip the free-space check"),
    "--report": ("flag", "write the report after"),
    "--no-progress": ("flag", "no progress bar"),
    "--compression-level": ("int", "netCDF gzip level"),
    "--group-by": ("text", "a metadata column"),
    "--seed": ("int", "a random seed"),
    "--no-thumbnails": ("flag", "read no images for thumbnails"),
    "--gpus-per-task": ("int", "Slurm"),
    "--partition": ("text", "Slurm"),
    "--mem": ("text", "Slurm"),
    "--cpus-per-task": ("int", "Slurm"),
    "--array-limit": ("int", "Slurm"),
    "--sbatch-arg": ("text", "Slurm"),
    "--setup": ("text", "Slurm"),
    "--savedeep": ("text", "the savedeep executable"),
    "--dir": ("path", "where the scripts go"),
    "--submit": ("flag", "submit with sbatch"),
}
# Old spellings kept one release (they work, with one warning line): (subcommand, old) -> new.
DEPRECATED = {("inspect", "--images"): "--n-images", ("validate", "--time"): "--estimate-time"}


def _subcommands() -> dict:
    import argparse

    from savedeep.cli import build_parser

    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _kind(action) -> str:
    from savedeep.cli import _blobs

    if action.nargs == 0:
        return "flag"
    if action.choices:
        return "choice"
    return {Path: "path", int: "int", _blobs: "names", None: "text"}[action.type]


def test_an_option_name_means_one_thing_in_every_subcommand():
    import argparse

    for command, sub in _subcommands().items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings or [action.dest.upper()]:
                if action.help == argparse.SUPPRESS:
                    assert (command, option) in DEPRECATED, f"savedeep {command} {option}: a hidden option"
                    continue
                assert option in OPTIONS, f"savedeep {command} {option}: new name, add it to OPTIONS"
                kind, meaning = OPTIONS[option]
                assert _kind(action) == kind, (
                    f"savedeep {command} {option} takes a {_kind(action)}; elsewhere {option} is {kind}: {meaning}"
                )


@pytest.mark.parametrize("command, old", sorted(DEPRECATED))
def test_an_old_spelling_still_works_and_says_once_what_replaces_it(command, old, capsys):
    from savedeep.cli import build_parser

    new = DEPRECATED[(command, old)]
    sub = _subcommands()[command]
    action = next(a for a in sub._actions if new in a.option_strings)
    value = [] if action.nargs == 0 else ["7"]
    first = "MODEL" if command == "inspect" else "c.yaml"
    by_new = build_parser().parse_args([command, first, new, *value])
    assert capsys.readouterr().err == ""
    by_old = build_parser().parse_args([command, first, old, *value])
    err = capsys.readouterr().err
    assert vars(by_old) == vars(by_new)
    assert err.count("\n") == 1 and "deprecated" in err and f"use {new}" in err and old in err


def test_inspect_by_the_old_spelling_prints_what_the_new_one_prints(caffenet_dir, capsys):
    assert main(["inspect", str(caffenet_dir), "--json", "--n-images", "3"]) == 0
    new = capsys.readouterr()
    assert main(["inspect", str(caffenet_dir), "--json", "--images", "3"]) == 0
    old = capsys.readouterr()
    assert old.out == new.out and json.loads(old.out)["images"] == 3
    assert "--images is deprecated" in old.err and new.err == ""


def test_every_exit_code_the_cli_can_return_is_in_the_table():
    """One table of exit codes (savedeep.errors.EXIT_CODES) that the error classes, the CLI and its --help use;
    before, the codes were prose in errors.py, the CLI's epilog and the README, tied by nothing."""
    import ast
    import importlib
    import pkgutil

    from savedeep.cli import EPILOG, build_parser
    from savedeep.errors import EXIT_CODES, SavedeepError, exit_code

    table = {entry.code for entry in EXIT_CODES}
    for info in pkgutil.walk_packages(savedeep.__path__, "savedeep."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)  # every module that may define an error class
    classes, todo = set(), [SavedeepError]
    while todo:
        cls = todo.pop()
        classes.add(cls)
        todo += cls.__subclasses__()
    raised = {cls.exit_code for cls in classes}  # main returns exc.exit_code
    tree = ast.parse((ROOT / "savedeep" / "cli.py").read_text())
    literal = {
        node.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, int)
    }
    named = {
        exit_code(node.args[0].value)
        for node in ast.walk(tree)  # KeyError: a name not in the table
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "exit_code"
    }
    with pytest.raises(SystemExit) as usage:
        build_parser().parse_args(["run", "--no-such-flag"])
    returned = raised | literal | named | {usage.value.code}
    assert returned - table == set(), "codes the CLI returns that the table does not list"
    assert table - returned == set(), "table entries nothing returns"
    for entry in EXIT_CODES:
        assert f"{entry.code} {entry.short}" in " ".join(EPILOG.split())
    assert main([]) in table


def test_the_run_sequence_is_savedeep_run_alone():
    """The report pre-check, the task handling and the after-run steps live in savedeep.run; the CLI's run only
    builds the config and calls it (before 41b04b9 the CLI had its own copy of the sequence, and the --task
    string was parsed by both)."""
    import ast

    tree = ast.parse((ROOT / "savedeep" / "cli.py").read_text())
    imported = {
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    sequence = {
        "savedeep.runner.pipeline.run",
        "savedeep.analysis.report.after_run",
        "savedeep.analysis.report.require_matplotlib",
        "savedeep.runner.tasks.parse_task",
    }
    assert imported & sequence == set()
    assert "savedeep.run" in imported


@pytest.mark.parametrize("command", ["run", "validate", "slurm"])
def test_each_run_flag_is_a_config_key_or_a_parameter_of_savedeep_run(command):
    """savedeep run's flags reach savedeep.run: a config key (forwarded by cli._RUN_KEYS: a flag missing there
    would be parsed and dropped) or one of run's own parameters."""
    import inspect

    from savedeep.cli import _RUN_KEYS
    from savedeep.config import _TOP_NAMES

    dests = {a.dest for a in _subcommands()[command]._actions if a.dest != "help"}
    keys = dests & set(_TOP_NAMES)
    assert set(_RUN_KEYS) == keys
    own = {
        "run": set(inspect.signature(savedeep.run).parameters) | {"tasks", "quiet"},  # --tasks N: task K/N
        "validate": {"config", "resume", "overwrite", "task", "tasks", "time_it", "json"},
        "slurm": {
            "config",
            "tasks",
            "gpus_per_task",
            "partition",
            "time",
            "mem",
            "cpus_per_task",
            "array_limit",
            "sbatch_args",
            "setup",
            "savedeep",
            "dir",
            "submit",
        },
    }[command]
    assert dests - keys - own == set()


def test_the_documented_exit_code_tables_are_the_code_table():
    """Each exit-code table of the README and docs/ (a Markdown table headed | code | meaning |) is
    savedeep.errors.exit_codes_markdown() verbatim, and the docs' exit-code page is generated from it
    (docs/hooks.py renders its marker): the docs cannot drift from the codes the CLI returns."""
    import importlib.util
    import re

    from savedeep.errors import exit_codes_markdown

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    tables = [
        (page, match.group(0))
        for page in pages
        if page.is_file()
        for match in re.finditer(r"^\| code \| meaning \|\n(?:\|.*\|\n)+", page.read_text(), re.M)
    ]
    for page, table in tables:
        assert table == exit_codes_markdown(), (
            f"{page.relative_to(ROOT)}: the exit-code table differs from savedeep.errors.exit_codes_markdown()"
        )
    assert "<!-- savedeep:exit-codes -->" in (ROOT / "docs" / "reference" / "exit-codes.md").read_text()
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert hooks.exit_codes().startswith(exit_codes_markdown())
