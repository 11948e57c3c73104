"""`savedeep inspect`'s rows and table, and blob shapes checked against pycaffe on the real models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from savedeep.errors import ModelError
from savedeep.caffe.inspect import format_table, human_bytes, inspect_model, to_json
from savedeep.caffe.model import load_net

MODELS = ("caffenet", "alexnet", "googlenet")


def test_caffenet_rows(testdata: Path) -> None:
    rows = inspect_model(testdata / "models" / "caffenet" / "deploy.prototxt", images=10)
    assert [r["blob"] for r in rows][:4] == ["data", "conv1", "pool1", "norm1"]
    conv1 = rows[1]
    assert conv1["shape"] == [96, 55, 55] and conv1["values"] == 96 * 55 * 55
    assert conv1["bytes_float32"] == 4 * 290400 and conv1["bytes_float16"] == 2 * 290400
    assert conv1["total_float32"] == 10 * 4 * 290400
    assert conv1["layers"] == ["conv1", "relu1"]  # created by conv1, rewritten in place by relu1
    assert rows[-1] == {
        "blob": "prob",
        "shape": [1000],
        "values": 1000,
        "bytes_float32": 4000,
        "bytes_float16": 2000,
        "total_float32": 40000,
        "total_float16": 20000,
        "layers": ["prob"],
        "rf_size": None,
        "rf_jump": None,
    }
    assert conv1["rf_size"] == [11, 11] and conv1["rf_jump"] == [4, 4]
    pool5 = next(r for r in rows if r["blob"] == "pool5")
    assert pool5["rf_size"] == [195, 195] and pool5["rf_jump"] == [32, 32]


def test_table_and_json(testdata: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "deploy.prototxt").write_text((testdata / "models" / "alexnet" / "deploy.prototxt").read_text())
    rows = inspect_model(model_dir, images=1000)  # a directory works too, without weights or mean
    table = format_table(rows, 1000)
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["blob", "shape"] and "1000 images f32" in lines[0]
    assert len(lines) == len(rows) + 4  # header, rule, rows, rule, total
    assert lines[-1].startswith("total") and f"{len(rows)} blobs" in lines[-1]
    # aligned columns: every size column is right-aligned under its header
    end = lines[0].index("1000 images f16") + len("1000 images f16")
    assert all(line[end - 1] != " " and (len(line) == end or line[end] == " ") for line in lines[2:-2])
    assert any(line.startswith("conv1 ") and "96x55x55" in line for line in lines)
    conv1_line = next(line for line in lines if line.startswith("conv1 "))
    assert conv1_line.split()[2:4] == ["11", "4"]  # RF size and jump
    assert next(line for line in lines if line.startswith("fc7 ")).split()[2:4] == ["-", "-"]
    doc = json.loads(json.dumps(to_json(rows, 1000)))
    assert doc["images"] == 1000 and len(doc["blobs"]) == len(rows)
    assert doc["total"]["total_float32"] == 1000 * sum(r["bytes_float32"] for r in rows)
    assert human_bytes(512) == "512 B" and human_bytes(1536) == "1.5 KiB" and human_bytes(3 * 2**30) == "3 GiB"


def test_inspect_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        inspect_model(tmp_path / "missing")
    with pytest.raises(ModelError, match="deploy.prototxt"):
        inspect_model(tmp_path)


def _pycaffe_shapes(caffe, prototxt: Path) -> dict[str, tuple[int, ...]]:
    net = caffe.Net(str(prototxt), caffe.TEST)
    return {k: tuple(v.data.shape) for k, v in net.blobs.items() if "_split_" not in k}


@pytest.mark.parametrize("name", MODELS)
def test_shapes_equal_pycaffe(pycaffe, testdata: Path, name: str) -> None:
    prototxt = testdata / "models" / name / "deploy.prototxt"
    net = load_net(prototxt)
    expected = _pycaffe_shapes(pycaffe, prototxt)
    assert net.blob_shapes(net.input_shape[0]) == expected
    assert list(expected) == net.blobs
    rows = inspect_model(prototxt)
    assert {r["blob"]: (1, *r["shape"]) for r in rows} == net.blob_shapes(1)


def test_open_nsfw_shapes_equal_pycaffe(pycaffe, nsfw_dir: Path) -> None:
    prototxt = nsfw_dir / "deploy.prototxt"
    net = load_net(prototxt)
    expected = _pycaffe_shapes(pycaffe, prototxt)
    assert net.blob_shapes(1) == expected
    cnet = pycaffe.Net(str(prototxt), pycaffe.TEST)
    assert {k: [tuple(b.data.shape) for b in v] for k, v in cnet.params.items()} == net.param_shapes()
    in_place = [name for name in cnet._layer_names if set(cnet.top_names[name]) & set(cnet.bottom_names[name])]
    assert in_place == net.inplace_layers
    assert len(net.inplace_layers) == 155
    assert np.prod(net.blob_shapes(16)["prob"]) == 32
