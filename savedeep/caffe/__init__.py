"""The Caffe model: the files of a model directory read into a net savedeep can plan and run.

Owns the protobuf schema of Caffe's messages (:mod:`.schema`), the prototxt text codec (:mod:`.prototxt`),
the ``.caffemodel`` wire codec (:mod:`.caffemodel`), the net with its layers, blobs and shapes
(:mod:`.model`), receptive fields (:mod:`.receptive_field`), seeded synthetic weights for tests and
benchmarks (:mod:`.synthetic`) and ``savedeep inspect``'s table (:mod:`.inspect`).

May import: the leaf modules :mod:`savedeep.errors`, :mod:`savedeep.units`, :mod:`savedeep.files`.
Knows nothing of configs, runs, engines, outputs or analysis (``[tool.importlinter]`` in pyproject.toml).
"""
