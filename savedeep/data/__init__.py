"""The data path: images in, activations out.

Owns the image list (:mod:`.images`), the exact preprocessing (:mod:`.preprocess`) and its public
``savedeep.transform`` (:mod:`.transforms`), the reductions of blobs (:mod:`.reduce`) and the output:
Parquet shards, the manifest file, the pickle and every reader of them (:mod:`.output`).

May import: :mod:`savedeep.caffe` (the net's input shape and mean file), :mod:`savedeep.config`
and the leaf modules (errors, units, files). Never the engines, the runner, analysis, the CLI or
``workers``: the workers call into this package, not the other way round.
"""
