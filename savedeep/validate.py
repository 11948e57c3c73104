"""``savedeep validate``: check a config, its model, blobs and images without a forward pass."""

from __future__ import annotations

from savedeep.config import Config

SAMPLE = 8  # images decoded as a sample


def validate(config: Config) -> str:
    """Check everything a run needs; return a report, or raise the error a run would raise."""
    from savedeep.errors import ImageError
    from savedeep.images import list_images
    from savedeep.model import load_model
    from savedeep.pipeline import preprocess_spec
    from savedeep.preprocess import Preprocessor, load_mean
    from savedeep.reduce import make_reducer

    model = load_model(config.model, weights=True)
    names = model.validate_blobs(list(config.blobs))
    shapes = model.net.blob_shapes(1)
    specs = {s.name: s for s in config.blob_specs}
    lines = [f"config: ok (fingerprint {config.fingerprint()[:12]})",
             f"model: {config.model} ({model.net.name}, input {tuple(model.net.input_shape[1:])}, weights match)"]
    per_image = 0
    for n in names:
        red = make_reducer(specs[n], tuple(shapes[n][1:]))
        size = int(__import__("numpy").prod(red.out_shape)) * (2 if red.out_dtype == "float16" else 4)
        per_image += size
        lines.append(f"  blob {n}: {tuple(shapes[n][1:])} -> stored {tuple(red.out_shape)} {red.out_dtype} "
                     f"({size / 1024:.1f} KiB per image)")
    images = list_images(config.images)
    skipped = sum(images.skipped.values())
    lines.append(f"images: {len(images)} in {config.images}" + (f" ({skipped} other files skipped by extension)" if skipped else ""))
    lines.append(f"output: about {per_image * len(images) / 2**20:.1f} MiB of activations before compression")
    mean = load_mean(model.mean_path)
    pre = Preprocessor(preprocess_spec(config), mean, tuple(model.net.input_shape[1:]))
    bad = []
    for e in images.entries[:SAMPLE]:
        try:
            pre.load(e.path)
        except ImageError as exc:
            bad.append(f"{e.key}: {exc}")
    lines.append(f"sample: {min(SAMPLE, len(images)) - len(bad)} of the first {min(SAMPLE, len(images))} images decode")
    lines += [f"  failed: {b}" for b in bad]
    return "\n".join(lines)
