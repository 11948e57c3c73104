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
    code = ("import sys, savedeep.cli as c\n"
            "try:\n    c.main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('numpy', 'pandas', 'pyarrow', 'torch', 'caffe', 'cv2') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "--resume" in r.stdout and "--no-pickle" in r.stdout and "exit codes" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow  # a real run: seconds
def test_original_four_flags_alone(caffenet_dir, images, tmp_path, capsys):
    out = tmp_path / "acts.pk"
    rc = main(["run", "-m", str(caffenet_dir), "-b", "fc7,fc7,fc6", "-i", str(images), "-o", str(out),
               "--gpus", "cpu", "--no-progress"])
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
    assert main(["validate", "-m", str(caffenet_dir), "-b", "conv1,fc7", "-i", str(images), "-o",
                 str(tmp_path / "a.pk")]) == 0
    text = capsys.readouterr().out
    assert "images: 5" in text and "blob conv1: (96, 55, 55)" in text and "5 of the first 5 images decode" in text
    assert not (tmp_path / "a.parquet").exists()
    assert main(["inspect", str(caffenet_dir), "--json", "--images", "10"]) == 0
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
    cfg = savedeep.load_config(None, model=caffenet_dir, images=listing, output=tmp_path / "acts.pk", gpus="cpu",
                               blobs=[{"name": "conv1", "dtype": "float16", "reduce": {"pool": "max", "grid": 2}},
                                      {"name": "conv3", "reduce": {"project": 64, "seed": 3}}, "fc7"])
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
    pooled = np.stack([np.stack([conv1[:, :, a:b, c:d].max(axis=(2, 3)) for c, d in bins], axis=-1)
                       for a, b in bins], axis=-2)
    assert np.array_equal(np.stack(df["conv1"]), pooled.astype(np.float16))
    conv3 = np.stack(whole["conv3"]).reshape(len(whole), -1)  # (n, 384 * 13 * 13)
    matrix = np.random.default_rng(3).standard_normal((conv3.shape[1], 64), dtype=np.float32) \
        * np.float32(1 / np.sqrt(64))  # the recipe the README and the manifest state
    np.testing.assert_allclose(np.stack(df["conv3"]), conv3 @ matrix, rtol=1e-4, atol=1e-4 * np.abs(conv3 @ matrix).max())

    # pandas and pyarrow read the shards directly
    t = pq.read_table(tmp_path / "acts.parquet" / "part-00000.parquet")
    fc7 = t.column("fc7").combine_chunks().to_numpy_ndarray()
    assert np.array_equal(fc7, np.stack(df["fc7"]))
    pdf = pd.read_parquet(tmp_path / "acts.parquet" / "part-00000.parquet")
    assert list(pdf["image"]) == list(df["image"])
    # DuckDB sees the tensor as a fixed-size array
    got = duckdb.sql(f"SELECT image, fc7[1] AS v FROM '{tmp_path}/acts.parquet/part-*.parquet' ORDER BY image").fetchall()
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
    cmd = [sys.executable, "-m", "savedeep", "run", "-m", str(caffenet_dir), "-b", "fc7", "-i", str(images),
           "-o", str(out), "--gpus", "cpu", "--batch-size", "1", "--shard-size", "1", "--no-progress"]
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
    rc = main(["run", "-m", str(caffenet_dir), "-b", "fc7", "-i", str(bad), "-o", str(tmp_path / "a.pk"),
               "--gpus", "cpu", "--on-error", "fail", "--no-progress"])
    assert rc == 4
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "on_error: skip" in err


@pytest.mark.slow  # a real run: seconds
def test_overwrite_next_to_a_foreign_file_refuses_and_the_file_survives(caffenet_dir, images, tmp_path, capsys):
    data = tmp_path / "data"  # `-o ~/data/acts.pk`: ~/data must survive an --overwrite
    data.mkdir()
    (data / "stimuli.csv").write_text("path\n")
    out = data / "acts.pk"
    args = ["run", "-m", str(caffenet_dir), "-b", "fc7", "-i", str(images), "-o", str(out), "--gpus", "cpu",
            "--no-progress", "-q"]
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
    assert sorted(p.name for p in data.iterdir()) == ["acts.failures.parquet", "acts.log", "acts.parquet", "acts.pk",
                                                      "stimuli.csv"]  # and no lock left behind


@pytest.mark.slow  # a real run: seconds
def test_break_lock_takes_the_lock_of_a_run_on_another_host(caffenet_dir, images, tmp_path, capsys):
    out = tmp_path / "acts.pk"
    lock = tmp_path / ".acts.lock"  # left by a run whose node crashed
    lock.write_text(json.dumps({"host": "node-9.cluster", "pid": 5150, "since": "2026-01-02 03:04:05 UTC"}))
    args = ["run", "-m", str(caffenet_dir), "-b", "fc7", "-i", str(images), "-o", str(out), "--gpus", "cpu",
            "--no-progress", "-q"]
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
    part = savedeep.run(None, model=caffenet_dir, images=images, output=tmp_path / "tasks" / "acts.pk",
                        blobs=["fc7"], report=True, task="0/2")
    assert part.report is None and not list((tmp_path / "tasks").glob("*.html"))
