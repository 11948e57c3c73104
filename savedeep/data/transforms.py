"""``savedeep.transform``: savedeep's preprocessing as a callable that other tools take as it is.

A torchvision data set's ``transform=``, thingsvision's ``transforms`` or any loop that turns images
into a batch gets, for each image, the exact float32 ``(3, H, W)`` tensor that savedeep's producers
write into the input slot: the callable runs the producers' own code
(:class:`savedeep.data.preprocess.Preprocessor`), so the two are bit-equal by construction, not by a
re-implementation kept in step. Given a path it decodes the file as a producer does; given a Pillow
image (what ``torchvision.datasets.ImageFolder`` hands its transform) it starts from the image's
pixels (:meth:`Preprocessor.from_pil`).

The preprocessing comes from a model directory (its mean, the net's input size, savedeep's default
spec or the ``preprocess`` options given) or from a converted model's metadata
(``NAME.py``/``NAME.pt`` beside it, ``.pt2``, ``.onnx``), which records the spec and the mean.
"""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from savedeep.errors import ConfigError, ModelError


class Transform:
    """image (a path or a PIL image) -> float32 torch tensor (3, H, W), savedeep's input blob for it."""

    def __init__(self, preprocessor: Any, source: Path) -> None:
        self.preprocessor = preprocessor
        self.source = source

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.preprocessor.input_shape

    def numpy(self, image: Any) -> np.ndarray:
        """The input blob of one image as a float32 numpy array (3, H, W)."""
        from PIL import Image

        if isinstance(image, Image.Image):
            return self.preprocessor.from_pil(image)
        if isinstance(image, (str, Path)):
            return self.preprocessor.load(Path(image))
        raise TypeError(f"savedeep.transform takes a path or a PIL image, not {type(image).__name__}")

    def __call__(self, image: Any) -> Any:
        import torch

        return torch.from_numpy(self.numpy(image))

    def __repr__(self) -> str:
        spec = self.preprocessor.spec
        return (
            f"savedeep.transform({str(self.source)!r}): resize {spec.resize} to {self.input_shape[1:]}, "
            f"BGR, x{spec.raw_scale:g}, mean {self.preprocessor.describe()['mean'].get('values_bgr')}"
        )


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata object of a converted model: NAME.py (or its NAME.pt), NAME.pt2 or NAME.onnx."""
    path = Path(path)
    if path.suffix == ".pt":
        path = path.with_suffix(".py")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; give a model directory or a file written by savedeep convert")
    if path.suffix == ".py":
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:  # METADATA = json.loads(r'''{...}''')
            if (
                isinstance(node, ast.Assign)
                and [getattr(t, "id", None) for t in node.targets] == ["METADATA"]
                and isinstance(node.value, ast.Call)
                and node.value.args
                and isinstance(node.value.args[0], ast.Constant)
                and isinstance(node.value.args[0].value, str)
            ):
                return json.loads(node.value.args[0].value)
    elif path.suffix == ".pt2":
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith("/extra/savedeep.json") or name == "extra/savedeep.json":
                    return json.loads(z.read(name))
    elif path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if "savedeep.json" in props:
            return json.loads(props["savedeep.json"])
    raise ModelError(
        f"{path}: no savedeep metadata in it; give the model directory, or convert the model again "
        f"with this savedeep (savedeep convert MODEL --to torch -o NAME.py)"
    )


def transform(source: str | Path, preprocess: dict[str, Any] | None = None) -> Transform:
    """The preprocessing of a model directory or of a converted model, as a callable (see the module's doc).

    ``preprocess``: for a model directory, the ``preprocess:`` options of a savedeep config (default:
    savedeep's defaults, as ``savedeep convert`` records them); a converted file carries its own.
    """
    from savedeep.data.preprocess import Preprocessor, PreprocessSpec, load_mean

    source = Path(source)
    if source.is_dir():
        from savedeep.caffe.model import load_model

        model = load_model(source)
        spec = PreprocessSpec.from_mapping(preprocess, source="savedeep.transform's preprocess=")
        shape = tuple(int(d) for d in model.net.input_shape[1:])
        return Transform(Preprocessor(spec, load_mean(model.mean_path), shape), source)
    if preprocess:
        raise ConfigError(
            f"{source}: a converted model records its preprocessing; preprocess= applies to a model directory only"
        )
    meta = read_metadata(source)
    pre = meta.get("preprocessing")
    if not pre or "options" not in pre:
        raise ModelError(
            f"{source}: its metadata records no image preprocessing (the net's input is not a "
            f"(3, H, W) image, or an older savedeep wrote it); use transform(MODEL_DIRECTORY)"
        )
    spec = PreprocessSpec.from_mapping(pre["options"], source=f"{source}'s recorded preprocessing")
    recorded = pre["spec"]["mean"]  # Preprocessor.describe()'s: per-channel values (BGR, or the luminance's)
    mean = None
    if recorded.get("mode", "none") != "none":
        values = recorded.get("values_bgr", recorded.get("values_gray"))
        if values is None:
            raise ModelError(
                f"{source}: its metadata records a {recorded.get('mode')!r} mean without its values; "
                f"use transform(MODEL_DIRECTORY)"
            )
        mean = np.array(values, dtype=np.float32)
    return Transform(Preprocessor(spec, mean, tuple(pre["spec"]["input_shape"])), source)
