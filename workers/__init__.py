"""The worker processes, one module per role: producer, consumer, writer (and their shared loop, _loop).

Imported as ``savedeep._workers``, never as ``workers``: the folder stays at the top of the repository,
and ``savedeep/_workers`` is a link to it, so a checkout (editable install, PYTHONPATH, a spawned worker)
and an installed wheel (which holds the files in savedeep/_workers/) import the same name, and the
distribution does not claim the generic top-level name ``workers``.
"""

if __name__ != "savedeep._workers":
    raise ImportError(f"{__file__} is the package savedeep._workers: import savedeep._workers, not {__name__}")
