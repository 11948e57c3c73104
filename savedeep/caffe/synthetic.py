"""Caffe files made up for tests and benchmarks: random weights of the right shapes, written as a caffemodel.

Real files, read by the same loader as a user's model, with no pycaffe needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from savedeep.caffe.schema import Message
from savedeep.caffe.caffemodel import encode_message, make_blob
from savedeep.errors import ModelError
from savedeep.caffe.model import Net, conv_geometry
from savedeep.files import atomic_write_bytes


def write_caffemodel(path: Path, net: Net, blobs: dict[str, list[np.ndarray]]) -> None:
    """Write a binary .caffemodel with the net's layers (name, type, params) and the given blobs per layer."""
    unknown = sorted(set(blobs) - {layer.name for layer in net.layers})
    if unknown:
        raise ModelError(f"write_caffemodel: no layer named {unknown} in net {net.name!r}")
    net_param = Message("NetParameter", name=net.name)
    for layer in net.layers:
        lp = layer.param.copy()
        lp.clear("blobs")
        lp.blobs.extend(make_blob(arr) for arr in blobs.get(layer.name, []))
        net_param.layer.append(lp)
    atomic_write_bytes(Path(path), encode_message(net_param))


def random_weights(net: Net, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Random float32 blobs of the right shapes for every parametric layer, scaled to keep activations O(input)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {}
    shapes = net.param_shapes(net.declared_batch())  # as the loader checks them
    for layer in net.layers:
        wanted = shapes.get(layer.name, [])
        if not wanted:
            continue
        arrays: list[np.ndarray] = []
        if layer.type in ("Convolution", "InnerProduct"):
            w_shape = wanted[0]
            if layer.type == "InnerProduct" and layer.param.inner_product_param.transpose:
                fan_in = w_shape[0]
            else:
                fan_in = int(np.prod(w_shape[1:]))
            # He-normal: keeps the second moment through ReLU layers
            arrays.append(rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), w_shape))
            arrays += [rng.normal(0.0, 0.01, s) for s in wanted[1:]]
        elif layer.type == "Deconvolution":
            w_shape = wanted[0]
            p = layer.param.convolution_param
            _kernel, stride, _pad, _dilation = conv_geometry(p, len(w_shape) - 2)
            # each output sums over (in_channels/group) * prod(kernel/stride) inputs
            fan_in = max(1.0, w_shape[0] / p.group * np.prod(w_shape[2:]) / np.prod(stride))
            arrays.append(rng.normal(0.0, np.sqrt(2.0 / fan_in), w_shape))
            arrays += [rng.normal(0.0, 0.01, s) for s in wanted[1:]]
        elif layer.type == "BatchNorm":
            mean_s, var_s, factor_s = wanted
            arrays = [rng.normal(0.0, 0.1, mean_s), rng.uniform(0.5, 1.5, var_s), np.ones(factor_s)]
        elif layer.type == "Scale":
            arrays.append(rng.uniform(0.8, 1.2, wanted[0]))
            arrays += [rng.normal(0.0, 0.1, s) for s in wanted[1:]]
        elif layer.type == "PReLU":
            arrays.append(rng.uniform(0.1, 0.3, wanted[0]))
        else:  # Bias and anything else: small offsets
            arrays = [rng.normal(0.0, 0.1, s) for s in wanted]
        out[layer.name] = [np.asarray(a, np.float32).reshape(s) for a, s in zip(arrays, wanted)]
    return out
