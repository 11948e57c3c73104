"""savedeep report, savedeep.rdm and savedeep.blob_similarity: the numbers, on real runs.

The bugs these are for: an RDM that is not the correlation distance researchers
compute with rsatoolbox (a missing centring, a transposed matrix, rows in another
order than the keys returned); page figures that disagree with the data (a
histogram over a wrong range, zeros or dead units counted per chunk, a unit's top
images from the wrong rows); the run section recomputing instead of quoting the
manifest and the log; a report that breaks on an interrupted run; statistics whose
memory grows with the number of images.
"""

from __future__ import annotations

import json
from html import escape
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rsatoolbox

import savedeep
from savedeep.data.output import ColumnSpec, ShardWriter, write_manifest
from savedeep.analysis.report import build_report, write_report

from report_fixtures import BLOB_NAMES, CATEGORIES, run_categories, run_partial

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def output(nsfw_dir, photos, tmp_path_factory) -> Path:
    return run_categories(nsfw_dir, photos, tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def page(output) -> tuple[str, dict]:
    return build_report(output, group_by="category")


def _rsa(x: np.ndarray, method: str) -> np.ndarray:
    ds = rsatoolbox.data.Dataset(x.reshape(len(x), -1).astype(np.float64))
    return rsatoolbox.rdm.calc_rdm(ds, method=method).get_matrices()[0]


@pytest.mark.parametrize("blob", BLOB_NAMES)
def test_rdm_equals_rsatoolbox(output, blob):
    df = savedeep.load(output)
    x = savedeep.load_array(output, blob)
    m, keys = savedeep.rdm(output, blob)
    assert keys == list(df["image"])
    want = _rsa(x, "correlation")
    assert m.shape == (len(df), len(df)) and np.abs(m - want).max() < 1e-12
    e, _ = savedeep.rdm(output, blob, metric="euclidean")
    want_e = _rsa(x, "euclidean")
    assert np.abs(e - want_e).max() <= 1e-9 * np.abs(want_e).max()


def test_rdm_subsample_is_seeded_and_stated(output):
    df = savedeep.load(output)
    x = savedeep.load_array(output, "pool")
    m, keys = savedeep.rdm(output, "pool", max_images=7, seed=3)
    rows = np.sort(np.random.default_rng(3).choice(len(df), 7, replace=False))
    assert keys == [df["image"][i] for i in rows]
    assert np.abs(m - _rsa(x[rows], "correlation")).max() < 1e-12
    again, keys2 = savedeep.rdm(output, "pool", max_images=7, seed=3)
    assert keys2 == keys and np.array_equal(again, m)
    assert savedeep.rdm(output, "pool", max_images=7, seed=4)[1] != keys


def test_blob_similarity_is_the_correlation_of_rsatoolbox_rdms(output):
    sim = savedeep.blob_similarity(output, BLOB_NAMES)
    vecs = [
        rsatoolbox.rdm.calc_rdm(
            rsatoolbox.data.Dataset(savedeep.load_array(output, b).reshape(len(CATEGORIES), -1).astype(np.float64)),
            method="correlation",
        ).get_vectors()[0]
        for b in BLOB_NAMES
    ]
    assert list(sim.index) == BLOB_NAMES == list(sim.columns)
    # prob has 2 units: its 1 - r is 0 or 2 for every pair (0 here: every photo is 'sfw'), a constant RDM
    assert np.ptp(vecs[1]) < 1e-12 and np.isnan(sim.values[1]).all() and np.isnan(sim.values[:, 1]).all()
    keep = [0, 2]
    assert np.abs(sim.values[np.ix_(keep, keep)] - np.corrcoef([vecs[0], vecs[2]])).max() < 1e-10


def test_page_statistics_agree_with_numpy_on_load(output, page):
    html, data = page
    df = savedeep.load(output)
    for blob in BLOB_NAMES:
        x = np.stack(df[blob]).reshape(len(df), -1).astype(np.float64)
        d = data["blobs"][blob]
        assert d["images"] == len(df) and d["units"] == x.shape[1] and d["values"] == x.size
        assert d["zeros"] == int((x == 0).sum()) and d["zero_fraction"] == (x == 0).mean()
        assert d["dead_units"] == int((x.max(axis=0) <= 0).sum())
        assert d["min"] == x.min() and d["max"] == x.max() and np.isclose(d["mean"], x.mean(), rtol=1e-12)
        assert np.isclose(d["std"], x.std(), rtol=1e-9)
        assert d["hist_counts"] == np.histogram(x, bins=np.asarray(d["hist_edges"]))[0].tolist()
        assert sum(d["hist_counts"]) == x.size
        spread = d["unit_mean_spread"]
        um = x.mean(axis=0)
        assert np.isclose(spread["median"], np.median(um), rtol=1e-9) and np.isclose(spread["max"], um.max())
        # the most variable units, and the images that drive each of them most
        sd = x.std(axis=0)
        assert [t["unit"] for t in d["top_units"]] == np.argsort(-sd, kind="stable")[:3].tolist()
        for t in d["top_units"]:
            col = x[:, t["unit"]]
            want = sorted(range(len(col)), key=lambda r: (-col[r], r))[:5]
            assert [r for r, _ in t["rows"]] == want and [v for _, v in t["rows"]] == col[want].tolist()
        # the same numbers as the API
        api = savedeep.blob_stats(output, blob).to_dict()
        assert api == {k: v for k, v in d.items() if k in api}
        # and as the page prints them
        section = html.split(f'id="blob-{blob}"')[1].split("</section>")[0]
        assert f'<span class="zero-fraction">{d["zero_fraction"]:.2%}</span>' in section
        assert f'<span class="dead-units">{d["dead_units"]:,}</span>' in section


def test_page_geometry_is_ordered_by_group_and_agrees_with_the_api(output, page):
    html, data = page
    g = data["geometry"]
    df = savedeep.load(output)
    cat = dict(zip(df["image"], df["category"]))
    assert g["images"] == len(df) and g["group_by"] == "category"
    assert g["keys"] == sorted(df["image"], key=lambda k: (cat[k], k))
    assert g["groups"] == [cat[k] for k in g["keys"]]
    sim = savedeep.blob_similarity(output, BLOB_NAMES)
    got = np.asarray([[np.nan if v is None else v for v in row] for row in g["blob_similarity"]])
    assert np.array_equal(np.isnan(got), np.isnan(sim.values))
    assert np.nanmax(np.abs(got - sim.values)) < 1e-12
    for i in range(len(BLOB_NAMES)):
        for j in range(len(BLOB_NAMES)):
            if np.isfinite(sim.values[i, j]):
                assert f'<span class="num">{sim.values[i, j]:.3f}</span>' in html
    assert "n/a: the RDM of prob is constant" in html
    assert "over all 16 images" in html and "ordered by <code>category</code>" in html


def test_page_run_section_quotes_the_manifest_and_the_log(output, page):
    html, data = page
    manifest = json.loads((output.with_suffix(".parquet") / "_manifest.json").read_text())
    log = (output.with_suffix(".log")).read_text().splitlines()
    summary = json.loads([line for line in log if " savedeep.run INFO: summary: " in line][-1].split("summary: ", 1)[1])
    run = data["run"]
    assert run["complete"] and run["rows"] == 16 and run["failures"] == 2 and run["images"] == 18
    assert run["wall_s"] == summary["wall_s"] and run["busy"] == summary["busy"]
    assert run["images_per_s"] == summary["images_per_s"]
    assert run["model_sha256"] == manifest["model"]["sha256"]
    for digest in manifest["model"]["sha256"].values():
        assert digest in html
    failures = pd.read_parquet(output.with_name("acts.failures.parquet"))
    table = html.split('class="failures"')[1].split("</table>")[0]
    assert len(failures) == 2
    for image, reason in zip(failures["image"], failures["reason"]):
        assert f"<tr><td>{escape(image)}</td><td>{escape(reason)}</td></tr>" in table
    assert f"{summary['wall_s']:.1f} s" in html
    assert len(manifest["shards"]) == 5 and "Complete: all 5 shard(s) written, 16 rows" in html  # 18 images by 4


def test_group_by_an_unknown_column_is_one_line_exit_2(output, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "savedeep",
            "report",
            str(output),
            "--group-by",
            "categry",
            "-o",
            str(tmp_path / "r.html"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"savedeep: error: --group-by categry: {output.with_suffix('.parquet')} has no metadata column 'categry'; "
        "its columns: category"
    ]
    assert not (tmp_path / "r.html").exists()
    r = subprocess.run(
        [sys.executable, "-m", "savedeep", "report", str(output), "--max-images", "1", "-o", str(tmp_path / "r.html")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "at least 2 images" in r.stderr and not (tmp_path / "r.html").exists()
    r = subprocess.run(
        [sys.executable, "-m", "savedeep", "report", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 5 and "not a savedeep output" in r.stderr


def test_cli_writes_the_page_beside_the_output(output):
    r = subprocess.run(
        [sys.executable, "-m", "savedeep", "report", str(output), "--max-images", "6", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    page = output.with_name("acts.report.html")
    assert r.stdout.strip() == str(page) and page.is_file()
    text = page.read_text()
    assert "a random subsample of 6 of the 16 images (numpy.random.default_rng(0)" in text
    assert not [f for f in output.parent.iterdir() if f.name.startswith(".acts.report")]  # no temporary left
    # self-contained: every src and href is a data URI or a fragment
    refs = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), [r[:40] for r in refs if not r.startswith("data:")]
    assert "http://" not in text and "https://" not in text
    # --overwrite of this output deletes the page as savedeep's own (savedeep.data.output.output_files)
    from savedeep.data.output import output_files, parquet_dir

    ours, foreign = output_files(output.with_name("acts.pk"), parquet_dir(output), output.with_name("acts.log"))
    assert page in ours and not foreign


def test_thumbnails_are_skipped_with_a_note_when_the_images_are_gone(output, tmp_path):
    images = output.parent.parent / "images"
    moved = tmp_path / "elsewhere"
    images.rename(moved)
    try:
        html, _ = build_report(output, blobs=["prob"])
    finally:
        moved.rename(images)
    assert re.search(r"No thumbnails for \d+ image\(s\): they could not be read from", html)
    assert 'class="thumb"' not in html
    html, _ = build_report(output, blobs=["prob"])
    assert html.count('class="thumb"') == 2 * 5  # prob: 2 units, 5 images each


def test_report_of_a_partial_output(nsfw_dir, photos, tmp_path):
    out = run_partial(nsfw_dir, photos, tmp_path)
    manifest = json.loads((out.with_suffix(".parquet") / "_manifest.json").read_text())
    done = [s for s in manifest["shards"] if s["complete"]]
    assert not manifest["complete"] and done
    page = write_report(out, group_by="category")
    html = page.read_text()
    data = json.loads(html.split('id="savedeep-data">')[1].split("</script>")[0])
    rows = sum(s["rows"] for s in done)
    assert not data["run"]["complete"] and data["run"]["rows"] == rows == len(savedeep.load(out))
    assert f"{len(done)} of {len(manifest['shards'])} shard(s) are complete" in html and "--resume" in html
    assert "not recorded in the run log" in html  # no duration: the run did not finish
    assert "WorkerError" in html or "consumer" in html  # the log's error is shown
    for blob in BLOB_NAMES:
        x = savedeep.load_array(out, blob).reshape(rows, -1).astype(np.float64)
        assert data["blobs"][blob]["zeros"] == int((x == 0).sum())
        m, _ = savedeep.rdm(out, blob)
        assert np.abs(m - _rsa(x, "correlation")).max() < 1e-12


# --------------------------------------------------------------------------- memory


def _synthetic_output(directory: Path, n: int, units: int = 4096, per_shard: int = 500) -> Path:
    """An output of ``n`` rows of one (units,) float32 blob, written by savedeep's own shard writer."""
    directory.mkdir(parents=True)
    col = ColumnSpec("fc", (units,), "float32")
    rng = np.random.default_rng(0)
    shards = []
    for k, start in enumerate(range(0, n, per_shard)):
        stop = min(n, start + per_shard)
        w = ShardWriter(directory, k, [col])
        for b in range(start, stop, 100):
            e = min(stop, b + 100)
            w.write(
                [f"img{i:06d}.jpg" for i in range(b, e)],
                {},
                {"fc": np.maximum(rng.standard_normal((e - b, units), dtype=np.float32), 0)},
            )
        w.finish()
        shards.append(
            {
                "index": k,
                "file": f"part-{k:05d}.parquet",
                "complete": True,
                "rows": stop - start,
                "start": start,
                "stop": stop,
                "failures": [],
            }
        )
    write_manifest(
        directory,
        {
            "format": "savedeep/1",
            "complete": True,
            "blob_order": ["fc"],
            "blobs": {"fc": {"shape": [units], "dtype": "float32"}},
            "shards": shards,
            "metadata_columns": [],
        },
    )
    return directory


CHILD = """
import json, sys, tracemalloc
import numpy, pandas, pyarrow, pyarrow.parquet, savedeep.analysis.interop  # libraries: not the statistics' data
from savedeep.analysis import stats
pyarrow.set_cpu_count(1)  # one decoding thread: how many of Arrow's threads hold a row group at once is the
pyarrow.set_io_thread_count(1)  # scheduler's choice (7.5 or 11.4 MiB at peak), not the number of images
pool = pyarrow.default_memory_pool()
arrow_before = pool.bytes_allocated()
tracemalloc.start()  # Python's objects and numpy's arrays (numpy reports its buffers to tracemalloc)
if sys.argv[2] == "stats":
    stats.blob_stats(sys.argv[1], "fc")
else:
    stats.rdm(sys.argv[1], "fc", max_images=int(sys.argv[2]))
print(json.dumps({"python": tracemalloc.get_traced_memory()[1], "arrow": pool.max_memory() - arrow_before}))
"""


def _added(output: Path, what: str) -> dict[str, int]:
    """The peak bytes that computing ``what`` over ``output`` allocated in a fresh process: Python's and
    numpy's (tracemalloc), Arrow's (its memory pool)."""
    r = subprocess.run([sys.executable, "-c", CHILD, str(output), what], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_statistics_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """What the statistics (and an RDM of 200 images) allocate at peak is the same for 1,500 and 9,000 rows of a
    4,096-unit blob (23 and 141 MiB of activations); a copy of the data would add the difference, 117 MiB.

    Allocations, not the resident set: the resident set's peak above the imports counts what the allocators
    keep for reuse, and that depends on the scheduler. Whether Arrow's reader ran a second thread (which keeps
    its own allocator cache) moved it between 35 and 55 MiB for the same 1,500 rows on a loaded 2-core machine,
    past this test's margin. The bytes held are the same to a few KiB in every run: tracemalloc counts Python's
    objects and numpy's arrays, Arrow's pool the chunks still in Arrow's buffers, which tracemalloc
    does not see.
    """
    units = 4096
    small = _synthetic_output(tmp_path / "small.parquet", 1500, units)
    big = _synthetic_output(tmp_path / "big.parquet", 9000, units)
    grown = (9000 - 1500) * units * 4
    for what in ("stats", "200"):
        a, b = _added(small, what), _added(big, what)
        assert sum(b.values()) - sum(a.values()) < 16 * 2**20, (
            f"{what}: {a['python'] / 2**20:.1f} + {a['arrow'] / 2**20:.1f} MiB (Python and numpy + Arrow) at peak "
            f"for 1,500 rows, {b['python'] / 2**20:.1f} + {b['arrow'] / 2**20:.1f} MiB for 9,000 "
            f"(the data grew by {grown / 2**20:.0f} MiB)"
        )


def test_the_run_log_is_written_and_read_back_with_one_pattern(tmp_path):
    """The run log's lines (savedeep.runner.ui.run_log), the summary line the report appends and the report's
    reader share savedeep.data.output's RUN_LOG_FORMAT and RUN_LOG_LINE (three copies before), and --overwrite
    takes the log for savedeep's."""
    import logging
    from types import SimpleNamespace

    from savedeep.analysis.report import read_log, record_summary
    from savedeep.data.output import RUN_LOG_LINE, output_files
    from savedeep.runner.ui import run_log

    log_file = tmp_path / "acts.log"
    with run_log(log_file):
        logging.getLogger("savedeep.runner.pipeline").warning("rings: %d%% of /dev/shm", 50)
    result = SimpleNamespace(
        images=3,
        rows=2,
        failures=1,
        wall_s=1.5,
        images_per_s=2.0,
        busy={"consumer": 0.5},
        devices=["cpu"],
        producers=1,
        writers=1,
        shards_kept=0,
        steady_images_per_s=lambda: None,
    )
    record_summary(log_file, result)
    lines = log_file.read_text().splitlines()
    assert len(lines) == 2 and all(RUN_LOG_LINE.fullmatch(line) for line in lines)
    got = read_log(log_file)
    assert got["summary"]["rows"] == 2 and got["summary"]["busy"] == {"consumer": 0.5}
    assert [(p["level"], p["message"]) for p in got["problems"]] == [("WARNING", "rings: 50% of /dev/shm")]
    ours, foreign = output_files(tmp_path / "acts.pk", tmp_path / "acts.parquet", log_file)
    assert ours == [log_file] and foreign == []
