"""The torch engine: PyTorch executes a Caffe prototxt + caffemodel with Caffe's blob semantics.

The net runs as a list of layer modules (:mod:`savedeep.engines.torch_layers`)
over a dict from blob name to tensor. A layer whose top names its bottom
(Caffe's in-place layers) replaces that blob's value, so after a forward the
blob ``conv1`` of ``conv1 -> relu1 (in place)`` holds post-ReLU values, exactly
as pycaffe returns it.

Caffe also lets some layers' tops share their bottom's memory (Split, Flatten,
Reshape, a one-bottom Concat, a one-top Slice). An in-place layer that later
writes one of those blobs changes all of them in pycaffe, so such a write is
copied (reshaped) onto every alias here too.

Only the layers that the requested blobs depend on run: every write to a blob
is a "version", the requested blobs name the versions that are current after
the last layer, and a layer runs only if a needed version is one of its tops.
Tensors are dropped as soon as no later step reads them.

On the CPU the input is converted to channels_last by default (faster oneDNN
convolutions; results stay within 1e-4 of pycaffe). On CUDA, TF32 is switched
off for the process so that results stay float32-exact enough to match.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from savedeep.engines.base import Device, EngineBase, output_buffer
from savedeep.engines.torch_layers import INPUT_TYPES, CaffeOp, build_layer, shares_data
from savedeep.errors import ModelError, UnsupportedLayerError

if TYPE_CHECKING:  # pragma: no cover
    from savedeep.caffe.model import Layer, Net

log = logging.getLogger(__name__)

TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}

# A blob value: (blob name, index of the step that wrote it; -1 for the net input).
_Version = tuple[str, int]


@dataclass(frozen=True)
class _Step:
    """One non-input layer of the net, in net order, with what it reads and writes.

    ``writes`` lists (blob, source): source None for the layer's own tops, or the
    in-place top whose new value an alias (a Split/Flatten/Reshape view of the
    same Caffe memory) takes on.
    """

    op: CaffeOp
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    reads: tuple[_Version, ...]
    writes: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class _Plan:
    """The steps to run for a set of requested blobs, the alias updates and the blobs to drop after each."""

    steps: tuple[int, ...]
    alias_updates: tuple[tuple[tuple[str, str], ...], ...]
    drop_after: tuple[tuple[str, ...], ...]
    # may the step write into its bottom: an in-place layer whose old value no one wants or reads later
    inplace: tuple[bool, ...] = ()


def unsupported_layers(net: "Net") -> list["Layer"]:
    """The layers of `net` the torch engine cannot run (cheap: types only, no weights needed)."""
    from savedeep.engines.torch_layers import SUPPORTED_TYPES

    return [layer for layer in net.layers if layer.type not in SUPPORTED_TYPES]


class TorchNet(nn.Module):
    """A Caffe net as a torch module: forward(input, names) -> {name: tensor} with Caffe's blob semantics."""

    def __init__(self, net: "Net", source: object = None) -> None:
        super().__init__()
        self.input_name = net.input_name
        self._net = net
        self._source = source
        layers: list["Layer"] = []
        ops: list[CaffeOp] = []
        for layer in net.layers:
            if layer.type in INPUT_TYPES:
                if list(layer.tops) != [net.input_name]:
                    raise UnsupportedLayerError(
                        f"input layer {layer.name!r} in {source} produces {list(layer.tops)}; the torch engine "
                        f"feeds one input blob ({net.input_name!r}): use the caffe engine for multi-input nets"
                    )
                continue
            ops.append(build_layer(layer, source))
            layers.append(layer)
        # ModuleList registers the weight buffers so that .to(device) moves them.
        self.ops = nn.ModuleList(ops)
        self._steps, self._final = self._trace(layers, ops)
        self._plans: dict[tuple[str, ...], _Plan] = {}

    def _trace(self, layers: list["Layer"], ops: list[CaffeOp]) -> tuple[list[_Step], dict[str, int]]:
        """Follow blob versions and Caffe's shared-memory aliases through the net once."""
        current: dict[str, int] = {self.input_name: -1}
        group: dict[str, set[str]] = {self.input_name: {self.input_name}}  # names sharing one Caffe buffer
        readers: dict[_Version, int] = {}
        steps: list[_Step] = []
        for i, (layer, op) in enumerate(zip(layers, ops)):
            for b in layer.bottoms:
                if b not in current:
                    raise ModelError(
                        f"{op.where()} in {self._source} reads blob {b!r} before any layer writes it; fix the prototxt"
                    )
            reads = tuple((b, current[b]) for b in layer.bottoms)
            for v in reads:
                readers[v] = readers.get(v, 0) + 1
            writes: list[tuple[str, str | None]] = []
            for t in layer.tops:
                if t in layer.bottoms:
                    if readers[(t, current[t])] > 1:
                        # Caffe inserts a Split for a blob with several readers and then aborts
                        # with "Top blob produced by multiple sources".
                        raise ModelError(
                            f"{op.where()} in {self._source} works in place on blob {t!r}, which other layers "
                            f"also read; Caffe refuses this net: give the layer a new top name"
                        )
                    writes.append((t, None))
                    writes += [(m, t) for m in sorted(group[t] - {t})]
                else:
                    if t in current:
                        raise ModelError(
                            f"{op.where()} in {self._source} writes blob {t!r}, which an earlier layer produced; "
                            f"Caffe refuses two sources for a blob: rename the top"
                        )
                    if shares_data(layer) and layer.bottoms:
                        group[t] = group[layer.bottoms[0]]
                        group[t].add(t)
                    else:
                        group[t] = {t}
            for name, _src in writes:
                current[name] = i
            for t in layer.tops:
                current[t] = i
            steps.append(
                _Step(
                    op,
                    tuple(layer.bottoms),
                    tuple(layer.tops),
                    reads,
                    tuple(writes) + tuple((t, None) for t in layer.tops if t not in layer.bottoms),
                )
            )
        return steps, current

    @property
    def blob_names(self) -> list[str]:
        """Every blob the net writes, the input first."""
        return list(self._final)

    def plan(self, names: Sequence[str]) -> _Plan:
        """Which steps produce the final values of `names`, which alias updates they need, what to free when."""
        key = tuple(names)
        if key in self._plans:
            return self._plans[key]
        unknown = [n for n in names if n not in self._final]
        if unknown:
            raise ModelError(f"{self._source}: no blob {unknown}; the net's blobs are {', '.join(self._final)}")
        wanted: set[_Version] = {(n, self._final[n]) for n in names}
        needed: set[_Version] = set(wanted)
        steps: list[int] = []
        for i in range(len(self._steps) - 1, -1, -1):
            step = self._steps[i]
            if any((name, i) in needed for name, _src in step.writes):
                steps.append(i)
                needed.update(step.reads)
        steps.reverse()
        # Simulate the blob dict to know, after each step, which values no later step reads.
        later_reads: list[set[_Version]] = [set() for _ in steps]
        acc: set[_Version] = set()
        for k in range(len(steps) - 1, -1, -1):
            later_reads[k] = set(acc)
            acc.update(self._steps[steps[k]].reads)
        held: dict[str, int] = {self.input_name: -1}
        alias_updates: list[tuple[tuple[str, str], ...]] = []
        drops: list[tuple[str, ...]] = []
        inplace: list[bool] = []
        for k, i in enumerate(steps):
            step = self._steps[i]
            old = step.reads[0] if len(step.reads) == 1 else None
            inplace.append(
                hasattr(step.op, "forward_inplace")
                and step.tops == step.bottoms
                and old is not None
                and old[1] >= 0
                and old not in wanted
                and old not in later_reads[k]
                and all(src is None for _, src in step.writes)  # no Caffe alias (Split/Flatten view) to update
            )
            updates = []
            for name, src in step.writes:
                if src is None:
                    held[name] = i
                elif (name, i) in needed:
                    held[name] = i
                    updates.append((name, src))
            alias_updates.append(tuple(updates))
            gone = tuple(n for n, v in held.items() if (n, v) not in wanted and (n, v) not in later_reads[k])
            for n in gone:
                del held[n]
            drops.append(gone)
        plan = _Plan(tuple(steps), tuple(alias_updates), tuple(drops), tuple(inplace))
        self._plans[key] = plan
        return plan

    def forward(self, x: Tensor, names: Sequence[str]) -> dict[str, Tensor]:  # type: ignore[override]
        """Run the layers the requested blobs depend on and return their final values."""
        plan = self.plan(names)
        env: dict[str, Tensor] = {self.input_name: x}
        shapes = self._net.blob_shapes(x.shape[0]) if any(plan.alias_updates) else {}
        input_storage = x.untyped_storage().data_ptr()
        for i, updates, drop, inplace in zip(plan.steps, plan.alias_updates, plan.drop_after, plan.inplace):
            step = self._steps[i]
            if inplace and self._sole_owner(env, step.bottoms[0], input_storage):
                tops = step.op.forward_inplace(env[step.bottoms[0]])
            else:
                tops = step.op(*[env[b] for b in step.bottoms])
            if len(tops) != len(step.tops):
                raise ModelError(
                    f"{step.op.where()} produced {len(tops)} outputs for {len(step.tops)} tops; fix the prototxt"
                )
            for t, value in zip(step.tops, tops):
                env[t] = value
            for name, src in updates:  # pycaffe: the in-place write shows through every view of the buffer
                env[name] = env[src].reshape(shapes[name])
            for name in drop:
                del env[name]
        return {n: env[n] for n in names}

    @staticmethod
    def _sole_owner(env: dict[str, Tensor], name: str, input_storage: int) -> bool:
        """Whether ``env[name]`` shares memory with nothing else held (nor with the caller's input).

        Torch ops return views where Caffe copies (Dropout and Split here give their
        bottom back), so an in-place write is allowed only on memory no other held
        blob uses.
        """
        ptr = env[name].untyped_storage().data_ptr()
        if ptr == input_storage:
            return False
        return all(k == name or v.untyped_storage().data_ptr() != ptr for k, v in env.items())


def use_exact_fp32_on_cuda() -> None:
    """Turn off TF32 everywhere in this process: IEEE float32 for every backend and operator.

    cuDNN convolutions default to TF32 on Ampere and newer GPUs, a 10-bit mantissa
    that moves activations by ~1e-3 relative: far from pycaffe's float32 numbers.
    The global setting (``torch.backends.fp32_precision``) does not reach a backend whose own
    setting is not "none": torch 2.11 ships cuDNN's convolutions and RNNs at "tf32" (measured
    on an H100: CaffeNet 6.4e-4 from the CPU with only the global set), and any code in the
    process may have set one. So every backend's own setting is set too. Only the new API is
    used, so torch's legacy ``allow_tf32`` flags are never mixed in (torch 2.13 raises when
    they are read after a mix).
    """
    if hasattr(torch.backends, "fp32_precision"):
        torch.backends.fp32_precision = "ieee"
        for backend, ops in (("cuda", ("matmul",)), ("cudnn", ("conv", "rnn")), ("mkldnn", ("matmul", "conv", "rnn"))):
            for op in ops:
                setting = getattr(getattr(torch.backends, backend, None), op, None)
                if setting is not None and hasattr(setting, "fp32_precision"):
                    setting.fp32_precision = "ieee"
    else:  # torch before the fp32_precision API
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


class TorchEngine(EngineBase):
    """The engine that runs a Caffe net with PyTorch on the CPU or one CUDA GPU."""

    kind = "torch"

    def __init__(
        self,
        net: "Net",
        device: Device | str = "cpu",
        batch_size: int = 1,
        threads: int | None = None,
        source: Path | str | None = None,
        channels_last: bool | None = None,
    ) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        dev = self._use_device(
            device, batch_size, lambda: torch.cuda.device_count() if torch.cuda.is_available() else 0
        )
        if dev.is_cuda:
            use_exact_fp32_on_cuda()
        self._torch_device = torch.device(self.device)
        # channels_last lets oneDNN skip layout conversions on the CPU (benchmarks/RESULTS.md) and
        # stays within 1e-4 of pycaffe; untested on CUDA, so off there.
        self._channels_last = (not dev.is_cuda) if channels_last is None else channels_last
        self._input_shape = tuple(int(d) for d in net.input_shape[1:])
        if len(self._input_shape) != 3:
            raise ModelError(
                f"{source}: input {net.input_name!r} has shape {tuple(net.input_shape)}; savedeep feeds "
                f"images (N, C, H, W)"
            )
        visible = list(net.blobs)
        shapes = net.blob_shapes(1)
        self._blob_shapes = {b: tuple(int(d) for d in shapes[b][1:]) for b in visible}
        self.module = TorchNet(net, source).to(self._torch_device).eval()
        log.debug("torch engine on %s: %d layers, batch %d", self.device, len(self.module.ops), batch_size)

    def forward(
        self, batch: np.ndarray, blobs: Sequence[str], out: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Run `batch` (n, C, H, W); float32 copies of the requested blobs, those in `out` written there.

        ``out[name][:n]`` (float32 or float16) receives a blob through one torch ``copy_``,
        which reorders channels_last to NCHW and casts (float16: round to nearest even, as
        numpy) on all the engine's threads, faster than numpy's transpose then cast
        (benchmarks/RESULTS.md). On a GPU the cast and the
        reorder happen there, so only the stored bytes cross to the host.
        """
        x, names = self._checked(batch, blobs)
        n = x.shape[0]
        # torch.from_numpy warns on read-only memory (e.g. a shared-memory slot mapped read-only)
        t = torch.from_numpy(x if x.flags.writeable else x.copy())
        if self._torch_device.type != "cpu":
            t = t.to(self._torch_device, non_blocking=False)
        if self._channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        out = out or {}
        results: dict[str, np.ndarray] = {}
        with torch.inference_mode():
            values = self.module(t, names)
            for name, v in values.items():
                if name in out:
                    dst = output_buffer(out, name, v.shape[1:], n)
                    if v.device.type != "cpu":
                        v = v.to(dtype=TORCH_DTYPES[dst.dtype], memory_format=torch.contiguous_format)
                    torch.from_numpy(dst).copy_(v)
                    results[name] = dst
            host = {k: v.to("cpu", torch.float32).contiguous() for k, v in values.items() if k not in results}
        # Tensors sharing memory with the caller's batch (the input blob, a reshape of it)
        # or with another returned blob (Split, Dropout) are copied: results never alias.
        seen = {int(x.ctypes.data)}
        for name, v in host.items():
            ptr = v.untyped_storage().data_ptr()
            arr = v.numpy()
            if ptr in seen:
                arr = arr.copy()
            seen.add(ptr)
            results[name] = arr
        return {name: results[name] for name in names}

    def close(self) -> None:
        """Drop the module and release cached GPU memory."""
        self.module = None  # type: ignore[assignment]
        if self._torch_device.type == "cuda":
            torch.cuda.empty_cache()
