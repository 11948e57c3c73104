"""The old flat import paths (``savedeep.model``, ``savedeep.output``, ...) of modules that moved into subpackages.

Until release 0.x every module sat directly in ``savedeep/``; the README's examples, users' scripts and
pickles written by older versions name those paths. The rule: code inside the project imports the new
paths only (import-linter checks it, see ``[tool.importlinter]`` in pyproject.toml), and every old path
stays importable here, as the *same module object* as its new home (``savedeep.model is
savedeep.caffe.model``), so a monkeypatch, an ``isinstance`` check or an unpickled class is the same on
both paths. One table instead of thirty alias files keeps the tree showing the parts.

``savedeep.report`` is left out: it is the public function ``savedeep.report(path)``, and importing a
submodule of that name would replace the function on the package (as the old flat module did); the
module is :mod:`savedeep.analysis.report`.

:func:`install` puts the finder on ``sys.meta_path``; ``savedeep/__init__.py`` calls it, so the old path
works wherever ``savedeep`` is importable (a spawned worker included).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

MOVED = {
    "savedeep.caffe_schema": "savedeep.caffe.schema",
    "savedeep.prototxt": "savedeep.caffe.prototxt",
    "savedeep.caffemodel": "savedeep.caffe.caffemodel",
    "savedeep.model": "savedeep.caffe.model",
    "savedeep.receptive_field": "savedeep.caffe.receptive_field",
    "savedeep.synthetic": "savedeep.caffe.synthetic",
    "savedeep.inspect": "savedeep.caffe.inspect",
    "savedeep.conversion": "savedeep.engines.conversion",
    "savedeep.converted_ops": "savedeep.engines.converted_ops",
    "savedeep.pipeline": "savedeep.runner.pipeline",
    "savedeep.preflight": "savedeep.runner.preflight",
    "savedeep.sizes": "savedeep.runner.sizes",
    "savedeep.devices": "savedeep.runner.devices",
    "savedeep.shm": "savedeep.runner.shm",
    "savedeep.messages": "savedeep.runner.messages",
    "savedeep.lock": "savedeep.runner.lock",
    "savedeep.manifest": "savedeep.runner.manifest",
    "savedeep.tasks": "savedeep.runner.tasks",
    "savedeep.slurm": "savedeep.runner.slurm",
    "savedeep.faults": "savedeep.runner.faults",
    "savedeep.ui": "savedeep.runner.ui",
    "savedeep.validate": "savedeep.runner.validate",
    "savedeep.images": "savedeep.data.images",
    "savedeep.preprocess": "savedeep.data.preprocess",
    "savedeep.reduce": "savedeep.data.reduce",
    "savedeep.output": "savedeep.data.output",
    "savedeep.transforms": "savedeep.data.transforms",
    "savedeep.stats": "savedeep.analysis.stats",
    "savedeep.interop": "savedeep.analysis.interop",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module already imported (or now imported) at its new path."""

    def __init__(self) -> None:
        self.own_spec: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, origin=MOVED[fullname])

    def create_module(self, spec) -> ModuleType:
        # The import system keeps the module's own __name__ (tracebacks and pickles name the new path)
        # but sets __spec__ to the alias's spec: exec_module puts the module's own back.
        module = importlib.import_module(MOVED[spec.name])
        assert module.__spec__ is not None  # only __main__ may lack one
        self.own_spec[module.__name__] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.own_spec[module.__name__]  # already executed under its new name


_FINDER = _Alias()


def install() -> None:
    if _FINDER not in sys.meta_path:
        sys.meta_path.append(_FINDER)
