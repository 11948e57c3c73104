"""``savedeep validate``: every check of a run that needs no forward pass, with the run's messages.

It runs the same preflight as ``savedeep run`` (NOTE [savedeep preflight] in
savedeep/preflight.py) with the same flags, so a mistake gives the same message
and exit code in both; it writes and deletes nothing, and starts no worker.
Then it decodes a sample of the images: under ``on_error: fail`` a sampled image
that cannot be used is the error a run would stop with (exit 4).
"""

from __future__ import annotations

from typing import Any

from savedeep.config import Config

SAMPLE = 8  # images decoded as a sample


def validate(config: Config, *, resume: bool = False, overwrite: bool = False, task: Any = None) -> str:
    """Check everything a run needs; return a report, or raise the error a run would raise.

    ``task`` (savedeep.tasks.TaskSpec, or "K/N"): the checks of that task of an array
    (NOTE [savedeep tasks] in savedeep/tasks.py), e.g. another config's records in the output.
    """
    import numpy as np

    from savedeep.errors import ImageError, bad_image_stops_run
    from savedeep.preflight import preflight
    from savedeep.preprocess import Preprocessor

    if isinstance(task, str):
        from savedeep.tasks import parse_task

        task = parse_task(task)
    pf = preflight(config, resume=resume, overwrite=overwrite, task=task)
    model, images = pf.model, pf.images
    lines = [f"config: ok (fingerprint {config.fingerprint()[:12]})",
             f"model: {config.model} ({model.net.name}, input {tuple(pf.input_shape)}, weights match)"]
    shapes = model.net.blob_shapes(1)
    per_image = 0
    for c in pf.columns:
        size = int(np.prod(c.shape)) * (2 if c.dtype == "float16" else 4)
        per_image += size
        lines.append(f"  blob {c.name}: {tuple(shapes[c.name][1:])} -> stored {tuple(c.shape)} {c.dtype} "
                     f"({size / 1024:.1f} KiB per image)")
    skipped = sum(images.skipped.values())
    lines.append(f"images: {len(images)} in {config.images}" + (f" ({skipped} other files skipped by extension)" if skipped else ""))
    lines.append(f"output: {config.output}" + (" (exists: " + ("resumed, " + f"{len(pf.keep)} shard(s) kept"
                                                                 if resume else "replaced") + ")"
                                                if pf.output_exists else ""))
    lines.append(f"output: about {per_image * len(images) / 2**20:.1f} MiB of activations before compression")
    if task is not None:
        mine = [(k, a, z) for k, a, z in pf.plan.shards if task.owns(k)]
        lines.append(f"{task.describe()}: {len(mine)} shard(s), {sum(z - a for _, a, z in mine)} image(s); "
                     f"{len(pf.keep)} of them finished and kept, {len(pf.plan.todo)} to compute")
    if pf.plan.batches:
        lines.append(f"workers: {len(pf.devices)} consumer(s) on {', '.join(pf.devices)}, {pf.producers} producer(s), "
                     f"{pf.writers} writer(s); rings of {pf.in_slots} input and {pf.out_slots} output slots")
        if pf.workers.note:
            lines.append(f"workers: {pf.workers.note}")
    pre = Preprocessor(pf.pre_spec, pf.mean, tuple(pf.input_shape))
    bad = []
    for e in images.entries[:SAMPLE]:
        try:
            pre.load(e.path)
        except ImageError as exc:
            if config.on_error == "fail":
                raise bad_image_stops_run(e.path, exc) from None
            bad.append(f"{e.key}: {exc}")
    lines.append(f"sample: {min(SAMPLE, len(images)) - len(bad)} of the first {min(SAMPLE, len(images))} images decode")
    lines += [f"  failed: {b}" for b in bad]
    return "\n".join(lines)
