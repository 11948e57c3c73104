"""Full pipeline runs on the CPU: real processes, shared memory, real models, real photos, real Parquet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import savedeep
from savedeep.config import load_config
from savedeep.errors import OutputError
from savedeep.runner.pipeline import make_plan, resolve_devices

from conftest import make_bad_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image_dir(photos, tmp_path_factory) -> Path:
    """Real photos in nested folders, plus broken files and a non-image file."""
    d = tmp_path_factory.mktemp("imgs")
    for i, p in enumerate(photos[:9]):
        sub = d / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        shutil.copyfile(p, sub / p.name)
    make_bad_images(d / "b", photos[0])
    (d / "notes.txt").write_text("not listed: skipped by extension\n")
    return d


def _run(model: Path, images: Path, out: Path, blobs, **kw):
    cfg = load_config(None, {"model": model, "images": images, "output": out, "blobs": blobs, "gpus": "cpu", **kw})
    return cfg, savedeep.run(cfg)


def _direct(engine: str, model_dir: Path, cfg, keys: list[str], blobs: list[str]) -> dict[str, np.ndarray]:
    """The same activations computed in this process, one image at a time, without the pipeline."""
    from savedeep.engines import create_engine
    from savedeep.caffe.model import load_model
    from savedeep.data.preprocess import Preprocessor, load_mean

    model = load_model(model_dir)
    eng = create_engine(engine, model, "cpu", 1)
    pre = Preprocessor(cfg.preprocess, load_mean(model.mean_path), tuple(model.net.input_shape[1:]))
    out = {b: [] for b in blobs}
    for k in keys:
        x = pre.load(cfg.images / k)[None]
        acts = eng.forward(x, blobs)
        for b in blobs:
            out[b].append(acts[b][0])
    eng.close()
    return {b: np.stack(v) for b, v in out.items()}


def test_plan_covers_every_image_once():
    plan = make_plan(23, shard_size=10, batch_size=4)
    assert [s[1:] for s in plan.shards] == [(0, 10), (10, 20), (20, 23)]
    covered = [i for _, _, a, z in plan.batches for i in range(a, z)]
    assert covered == list(range(23))
    # batches never straddle a shard
    assert all(plan.shards[k][1] <= a and z <= plan.shards[k][2] for _, k, a, z in plan.batches)
    resumed = make_plan(23, 10, 4, done={1})
    assert resumed.todo == [0, 2] and all(k != 1 for _, k, _, _ in resumed.batches)


def test_devices_fall_back_to_cpu_or_stop():
    assert resolve_devices("cpu", False, 2) == ["cpu", "cpu"]
    assert resolve_devices((0, 1), False, 1, available=0) == ["cpu"]
    assert resolve_devices((0, 1), False, 1, available=2) == ["cuda:0", "cuda:1"]
    assert resolve_devices("all", False, 1, available=3) == ["cuda:0", "cuda:1", "cuda:2"]
    with pytest.raises(savedeep.errors.ConfigError, match="require"):
        resolve_devices((0,), True, 1, available=0)
    with pytest.raises(savedeep.errors.ConfigError, match="does not exist"):
        resolve_devices((0, 4), False, 1, available=2)


def test_nsfw_two_producers_two_consumers(nsfw_dir, image_dir, tmp_path):
    blobs = ["conv_1", "pool", "prob"]
    cfg, res = _run(
        nsfw_dir,
        image_dir,
        tmp_path / "out" / "acts.pk",
        blobs,
        producers=2,
        cpu_consumers=2,
        batch_size=2,
        shard_size=4,
    )
    keys = sorted(p.relative_to(image_dir).as_posix() for p in image_dir.rglob("*.*") if p.suffix in (".jpg", ".png"))
    good = [k for k in keys if not k.split("/")[-1].startswith("bad_")]
    assert res.rows == len(good) and res.failures == 3 and res.images == len(keys)
    assert res.skipped_files == {".txt": 1}

    df = savedeep.load(tmp_path / "out" / "acts.pk")
    assert list(df["image"]) == good  # sorted, keyed by relative path, failures left out
    assert df["conv_1"].iloc[0].shape == (64, 112, 112)
    assert df["prob"].iloc[0].shape == (2,)
    np.testing.assert_allclose(np.stack(df["prob"]).sum(axis=1), 1.0, rtol=1e-5)

    # The pipeline's rows are exactly what the engine gives image by image in one process.
    ref = _direct("torch", nsfw_dir, cfg, good, blobs)
    for b in blobs:
        got = np.stack(df[b])
        err = np.abs(got - ref[b]).max() / np.abs(ref[b]).max()
        assert err < 1e-5, (b, err)

    # Failures: every listed image is a row or a failure with a reason.
    fails = pq.read_table(tmp_path / "out" / "acts.failures.parquet").to_pandas()
    assert sorted(fails["image"]) == ["b/bad_empty.jpg", "b/bad_text.jpg", "b/bad_truncated.jpg"]
    assert fails["reason"].str.len().min() > 0
    manifest = json.loads((tmp_path / "out" / "acts.parquet" / "_manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["failures_table"] == "acts.failures.parquet"
    assert sum(s["rows"] + len(s["failures"]) for s in manifest["shards"]) == len(keys)
    assert manifest["blobs"]["conv_1"]["shape"] == [64, 112, 112]
    assert set(manifest["model"]["sha256"]) == {"deploy.prototxt", "weights.caffemodel", "mean.npy"}
    # The preprocessing record, field by field, against what this run did: the default spec
    # (warp, raw_scale 255, no input_scale, no draft) and open_nsfw's (3,) BGR mean and 224x224 input.
    pre = manifest["preprocess"]
    assert pre["resize"]["mode"] == "warp" and "resize_to" not in pre["resize"] and "crop" not in pre["resize"]
    assert "INTER_LINEAR_EXACT" in pre["resize"]["interpolation"]
    assert pre["mean"] == {"mode": "channel", "values_bgr": [104.0, 117.0, 123.0]}
    assert pre["raw_scale"] == 255.0 and pre["input_scale"] is None
    assert pre["input_shape"] == [3, 224, 224]
    assert pre["channel_order"] == "BGR" and pre["layout"] == "CHW" and pre["to_float"] == "float32(v / 255)"
    assert pre["order"] == [
        "decode",
        "resize",
        "to_float",
        "transpose",
        "channel_swap",
        "raw_scale",
        "mean",
        "input_scale",
    ]
    assert pre["decoder"]["jpeg_draft"] is False and pre["decoder"]["max_pixels"] == 100_000_000
    assert pre["decoder"]["exif_orientation"].startswith("ignored")
    assert manifest["config"]["preprocess"]["resize"] == "warp"


def test_pickle_equals_parquet(nsfw_dir, image_dir, tmp_path):
    out = tmp_path / "acts.pk"
    _run(nsfw_dir, image_dir, out, ["pool", "fc_nsfw"], batch_size=3, shard_size=5, dtype="float16")
    pk = pd.read_pickle(out)
    pqdf = savedeep.load(tmp_path / "acts.parquet")
    assert list(pk["image"]) == list(pqdf["image"])
    for b in ("pool", "fc_nsfw"):
        a, c = np.stack(pk[b]), np.stack(pqdf[b])
        assert a.dtype == np.float16 and np.array_equal(a, c)
        assert np.array_equal(savedeep.load_array(out, b), a)
    # each shard is a real Parquet file with the fixed-shape tensor type
    t = pq.read_table(tmp_path / "acts.parquet" / "part-00000.parquet")
    assert str(t.schema.field("pool").type).startswith("extension<arrow.fixed_shape_tensor")


def test_binary_storage_holds_the_same_arrays(caffenet_dir, image_dir, tmp_path):
    blobs = ["conv1", {"name": "fc7", "dtype": "float16"}, {"name": "pool5", "reduce": {"pool": "max", "grid": 2}}]
    common = dict(producers=1, cpu_consumers=1, batch_size=4, shard_size=3)
    _run(caffenet_dir, image_dir, tmp_path / "t" / "a.pk", blobs, **common)
    _run(caffenet_dir, image_dir, tmp_path / "b" / "a.pk", blobs, storage="binary", **common)
    names = ["conv1", "fc7", "pool5"]
    for source in ("a.pk", "a.parquet"):
        t, b = savedeep.load(tmp_path / "t" / source), savedeep.load(tmp_path / "b" / source)
        assert list(t.columns) == list(b.columns) and list(t["image"]) == list(b["image"])
        for name in names:
            x, y = np.stack(t[name]), np.stack(b[name])
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), (source, name)
    for name in names:
        assert np.array_equal(
            savedeep.load_array(tmp_path / "b" / "a.pk", name), savedeep.load_array(tmp_path / "t" / "a.pk", name)
        )
    # What another reader sees: one fixed-size binary value per image, shape and dtype alongside
    shard = pq.read_table(tmp_path / "b" / "a.parquet" / "part-00000.parquet")
    field = shard.schema.field("fc7")
    assert str(field.type) == "fixed_size_binary[8192]"
    assert field.metadata == {b"savedeep.shape": b"[4096]", b"savedeep.dtype": b"float16"}
    first = np.frombuffer(shard.column("fc7")[0].as_py(), "<f2").reshape(4096)
    assert np.array_equal(first, savedeep.load_array(tmp_path / "t" / "a.pk", "fc7")[0])
    manifest = json.loads((tmp_path / "b" / "a.parquet" / "_manifest.json").read_text())
    assert manifest["blobs"]["pool5"] == {**manifest["blobs"]["pool5"], "storage": "binary", "shape": [256, 2, 2]}
    # a resume that would mix the two layouts is refused
    with pytest.raises(OutputError, match="config keys storage"):
        savedeep.run(
            load_config(
                None,
                {
                    "model": caffenet_dir,
                    "images": image_dir,
                    "output": tmp_path / "b" / "a.pk",
                    "blobs": blobs,
                    "gpus": "cpu",
                    **common,
                },
            ),
            resume=True,
        )


def test_same_rows_whatever_producers_consumers_batch(caffenet_dir, image_dir, tmp_path):
    blobs = ["conv1", "fc7"]
    runs = {}
    for name, kw in {
        "p1c2b4": dict(producers=1, cpu_consumers=2, batch_size=4),
        "p2c2b4": dict(producers=2, cpu_consumers=2, batch_size=4, writers=2),
        "p1c1b4": dict(producers=1, cpu_consumers=1, batch_size=4),
        "p2c1b1": dict(producers=2, cpu_consumers=1, batch_size=1),
    }.items():
        _run(caffenet_dir, image_dir, tmp_path / name / "a.pk", blobs, shard_size=3, **kw)
        runs[name] = savedeep.load(tmp_path / name / "a.pk")
    base = runs["p1c2b4"]
    for name, df in runs.items():
        assert list(df["image"]) == list(base["image"])
        for b in blobs:
            x, y = np.stack(df[b]), np.stack(base[b])
            if name == "p2c2b4":
                # Same engine, batch size and threads per consumer: bit for bit, whichever
                # producer decoded a batch, whichever consumer ran it, whichever writer wrote it.
                assert np.array_equal(x, y), (name, b)
            else:
                # One consumer gets both cores: a BLAS with another thread count sums in
                # another order, and another batch size takes other kernels.
                assert np.abs(x - y).max() <= 1e-5 * np.abs(y).max(), (name, b)


def test_caffe_engine_pipeline_matches_torch(pycaffe, caffenet_dir, image_dir, tmp_path):
    _run(
        caffenet_dir,
        image_dir,
        tmp_path / "c" / "a.pk",
        ["pool5", "fc8"],
        engine="caffe",
        cpu_consumers=2,
        batch_size=4,
    )
    _run(caffenet_dir, image_dir, tmp_path / "t" / "a.pk", ["pool5", "fc8"], engine="torch", batch_size=4)
    c, t = savedeep.load(tmp_path / "c" / "a.pk"), savedeep.load(tmp_path / "t" / "a.pk")
    assert list(c["image"]) == list(t["image"])
    for b in ("pool5", "fc8"):
        x, y = np.stack(c[b]), np.stack(t[b])
        assert np.abs(x - y).max() / np.abs(x).max() < 1e-4


def test_existing_output_refused_then_overwritten(nsfw_dir, image_dir, tmp_path):
    out = tmp_path / "acts.pk"
    cfg, _ = _run(nsfw_dir, image_dir, out, ["prob"], batch_size=8)
    with pytest.raises(OutputError, match="--overwrite"):
        savedeep.run(cfg)
    res = savedeep.run(cfg, overwrite=True)
    assert res.rows == len(savedeep.load(out))


def test_pickle_above_limit_is_refused_before_any_work(nsfw_dir, image_dir, tmp_path):
    # Refused by the preflight since issue 30 (the pickle's size is known from the shapes); it used to be
    # refused after the whole run. The refusal at the end, for a merge, is in tests/test_runner_sizes.py.
    out = tmp_path / "acts.pk"
    with pytest.raises(
        OutputError,
        match=r"max_pickle_bytes.*above max_pickle_bytes \(977 KiB\); nothing was "
        r"started.*pickle: false",
    ):
        _run(nsfw_dir, image_dir, out, ["conv_1"], batch_size=8, max_pickle_bytes="1MB")
    assert not out.exists() and not (tmp_path / "acts.parquet").exists()


def test_finished_but_unreported_shards_are_adopted(nsfw_dir, image_dir, tmp_path):
    # A writer that dies right after renaming a shard may never report it; the shard
    # carries its own record, so the manifest can take it without recomputing it.
    from savedeep.data.output import read_manifest, write_manifest
    from savedeep.runner.manifest import adopt_finished_shards

    out = tmp_path / "acts.pk"
    _run(nsfw_dir, image_dir, out, ["prob"], batch_size=4, shard_size=4)
    d = tmp_path / "acts.parquet"
    full = read_manifest(d)
    lost = read_manifest(d)
    for k in (1, 2):
        lost["shards"][k].update(complete=False, rows=0, failures=[], file=None)
    write_manifest(d, lost)
    assert adopt_finished_shards(d, lost) == [1, 2]
    assert lost["shards"] == full["shards"] == read_manifest(d)["shards"]
    # a shard whose record does not match its place in the plan is not adopted
    lost["shards"][0].update(complete=False, start=1)
    assert adopt_finished_shards(d, lost) == []


def test_size_rings_fits_the_shared_memory_there_is(caplog):
    from savedeep.errors import ConfigError
    from savedeep.runner.pipeline import MAX_SLOTS, RING_BUDGET, SHM_RESERVE, size_rings

    M = 2**20
    inb, outb = 19 * M, M // 2  # CaffeNet input and fc7 at batch 32
    slots = lambda r: (r.in_slots, r.out_slots)  # noqa: E731
    # plenty (or unknown): grow to the budget, input no deeper than output
    assert slots(size_rings(inb, outb, 1, 1, 1, None, None)) == (RING_BUDGET // inb, MAX_SLOTS)
    assert slots(size_rings(inb, outb, 1, 1, 1, None, 64 * 2**30)) == (RING_BUDGET // inb, MAX_SLOTS)
    # Docker's 64 MB: the minimum input (a slot per producer, two per consumer) fits; output grows in what is left
    i, o = slots(size_rings(inb, outb, 1, 1, 1, None, 64 * M))
    assert i == 3 and o >= 4 and i * inb + o * outb <= 64 * M - SHM_RESERVE
    assert not caplog.records
    # less: below the minimum, with a warning that says how to fix it
    i, o = slots(size_rings(inb, outb, 1, 1, 1, None, 30 * M))
    assert (i, o) == (1, 5)  # the window (output slots) still covers the producer, 2 per consumer and writer
    assert "rings hold 1 input and 5 output batches" in caplog.text and "--shm-size" in caplog.text
    # the output ring gives way first when it is the bigger one
    # (and the input ring is never deeper than the window: a slot beyond it would never be filled)
    assert slots(size_rings(M, 36 * M, 2, 1, 1, None, 100 * M)) == (2, 2)
    # not even one batch each: an error before anything starts
    with pytest.raises(ConfigError, match=r"/dev/shm has 10\.0 MiB free.*at least 19\.5 MiB.*batch_size"):
        size_rings(inb, outb, 1, 1, 1, None, 10 * M)
    # the user's ring_slots is kept, or refused when it cannot fit
    assert slots(size_rings(inb, outb, 1, 1, 1, 2, 64 * M)) == (2, 2)
    with pytest.raises(ConfigError, match=r"ring_slots: 4 slots per ring need 78\.0 MiB"):
        size_rings(inb, outb, 1, 1, 1, 4, 64 * M)


def test_float16_is_the_float32_run_rounded(caffenet_dir, image_dir, tmp_path):
    """A float16 blob, whole (written by the engine into the slot) or reduced, holds numpy's rounding of float32."""
    blobs = ["conv1", "fc7", {"name": "pool5", "reduce": {"pool": "mean", "grid": 2}}]
    common = dict(producers=1, cpu_consumers=1, batch_size=4, shard_size=5, pickle=False)
    _run(caffenet_dir, image_dir, tmp_path / "f32" / "a.pk", blobs, **common)
    _run(caffenet_dir, image_dir, tmp_path / "f16" / "a.pk", blobs, dtype="float16", **common)
    for b in ("conv1", "fc7", "pool5"):
        x = savedeep.load_array(tmp_path / "f16" / "a.parquet", b)
        y = savedeep.load_array(tmp_path / "f32" / "a.parquet", b)
        assert x.dtype == np.float16 and y.dtype == np.float32
        assert np.array_equal(x, y.astype(np.float16)), b


def test_float16_overflow_is_reported(image_dir, tmp_path):
    """Values beyond float16's range become inf; the log names the blob and counts them."""
    from savedeep.caffe.synthetic import write_caffemodel
    from savedeep.caffe.model import load_net
    from tests.nets import layer, write_net

    body = layer("big", "Power", "data", "big", "power_param", scale=1000) + layer("small", "TanH", "data", "small")
    model = tmp_path / "m"
    write_caffemodel(model / "weights.caffemodel", load_net(write_net(model, "big", body, (1, 3, 16, 16))), {})
    np.save(model / "mean.npy", np.full(3, 110.0, np.float32))
    common = dict(producers=1, cpu_consumers=1, batch_size=4, pickle=False)
    _run(model, image_dir, tmp_path / "f32" / "a.pk", ["big", "small"], **common)
    _run(model, image_dir, tmp_path / "f16" / "a.pk", ["big", "small"], dtype="float16", **common)
    y = savedeep.load_array(tmp_path / "f32" / "a.parquet", "big")
    x = savedeep.load_array(tmp_path / "f16" / "a.parquet", "big")
    over = int((np.abs(y) > 65519).sum())  # 65520 and up round to inf
    assert over > 0 and int(np.isinf(x).sum()) == over
    log = (tmp_path / "f16" / "a.log").read_text()
    assert f"float16 blobs with values stored as inf or NaN (|x| > 65504 overflows): big {over} values;" in log
    assert "small" not in log.split("float16 blobs with values")[1].splitlines()[0]
    assert "float16" not in (tmp_path / "f32" / "a.log").read_text()


def test_feeder_keeps_a_window_of_tasks_ahead():
    from savedeep.runner.messages import EndOfStream
    from savedeep.runner.pipeline import Feeder

    queued = []
    batches = [(b, b // 3, 4 * b, 4 * b + 4) for b in range(7)]
    f = Feeder(queued.append, batches, lambda b, k, a, z: ("task", b, k, a, z), producers=2, ahead=3)
    f.start()
    assert [t[1] for t in queued] == [0, 1, 2]
    f.top_up()  # batch 0 written
    assert [t[1] for t in queued] == [0, 1, 2, 3]
    f.top_up(2)
    f.top_up()
    # the last task is followed at once by one end-of-stream per producer
    assert [t[1] for t in queued[:-2]] == list(range(7)) and queued[-2:] == [EndOfStream("parent")] * 2
    f.top_up()  # batches written after that queue nothing more
    assert len(queued) == 9
    empty: list = []
    Feeder(empty.append, [], lambda *a: a, producers=3, ahead=5).start()
    assert empty == [EndOfStream("parent")] * 3


def test_many_batches_through_a_small_window(caffenet_dir, image_dir, tmp_path):
    """More batches than tasks ever queued at once: every image still gets its row or its failure, in order."""
    cfg, res = _run(
        caffenet_dir,
        image_dir,
        tmp_path / "a.pk",
        ["fc7"],
        batch_size=1,
        ring_slots=2,
        producers=2,
        shard_size=4,
        pickle=False,
        cpu_consumers=1,
    )
    manifest = json.loads((tmp_path / "a.parquet" / "_manifest.json").read_text())
    listed = sorted(
        p.relative_to(image_dir).as_posix() for p in image_dir.rglob("*") if p.suffix in (".jpg", ".png")
    )  # what the image source holds, counted independently
    good = [k for k in listed if not k.split("/")[-1].startswith("bad_")]
    assert (
        len(listed) == 12 > 2 * (2 + 2)
    )  # batches (batch 1) outnumber the tasks queued ahead (window 2 + 2 producers)
    assert (res.rows, res.failures) == (len(good), len(listed) - len(good)) == (9, 3)
    assert (manifest["summary"]["rows"], manifest["summary"]["failures"]) == (9, 3)
    keys = list(savedeep.load(tmp_path / "a.parquet")["image"])
    assert keys == good  # every good image once (no duplicate, none missing), in sorted order
    assert sorted(f["image"] for f in manifest["failures"]) == [k for k in listed if k not in good]
    # the timeline the benchmarks measure steady rates from: one entry per batch written, in order
    assert res.window == 2 and len(res.written) == 12 and sum(n for _, n in res.written) == 12
    times = [t for t, _ in res.written]
    assert times == sorted(times) and 0 < times[0] and times[-1] <= res.wall_s
    # Every stage's statistics reached the parent: the run's end waits for the last worker's
    # (the consumer sends its own after the writer has what it needs, often after the writer left).
    assert set(res.busy) == {"producer", "consumer", "writer"}, res.busy


def test_steady_rate_leaves_out_the_first_window_of_batches():
    from savedeep.runner.pipeline import RunResult

    def result(written, window):
        return RunResult(
            pickle=None,
            parquet_dir=Path("x"),
            images=0,
            rows=0,
            failures=0,
            skipped_files={},
            shards_done=0,
            shards_kept=0,
            wall_s=10.0,
            devices=["cpu"],
            producers=1,
            written=written,
            window=window,
        )

    # 3 batches pre-decoded and written in a burst at 1 s, then one batch of 4 images every second
    written = [(1.0, 4), (1.0, 4), (1.0, 4)] + [(1.0 + i, 4) for i in range(1, 6)]
    assert result(written, 3).steady_images_per_s() == pytest.approx(4.0)  # the 4 batches after batch 3, in 4 s
    assert result(written, 0).steady_images_per_s() == pytest.approx(7 * 4 / 5.0)  # the burst inflates it
    assert result(written[:4], 3).steady_images_per_s() is None  # nothing left to measure
