"""The exception types savedeep raises, one root, each with its exit code.

The CLI turns a :class:`SavedeepError` into its message and ``exit_code``;
library code raises, it never prints or exits. Exit codes (documented in the
README):

===  =========================================================
0    success (per-image failures under ``on_error: skip`` are allowed)
1    unexpected internal error (a bug: the traceback is printed)
2    bad command line or config (:class:`ConfigError`)
3    bad model directory or blob names (:class:`ModelError`)
4    bad image input, or an image failed under ``on_error: fail``
5    output problem: exists already, in use by another run, not resumable, disk full
6    a worker process failed (:class:`WorkerError`)
130  interrupted (Ctrl-C or SIGTERM); the output can be resumed
===  =========================================================
"""

from __future__ import annotations


class SavedeepError(Exception):
    """Root of every error savedeep reports to the user."""

    exit_code = 1


class ConfigError(SavedeepError):
    """A config key or command-line flag is invalid; the message names the key and the fix."""

    exit_code = 2


class ModelError(SavedeepError):
    """A model directory, prototxt, caffemodel, mean file or blob name is unusable."""

    exit_code = 3


class UnsupportedLayerError(ModelError):
    """A layer type the chosen engine cannot execute."""


class InputError(SavedeepError):
    """The image source cannot be listed, or an image failed under ``on_error: fail``."""

    exit_code = 4


class ImageError(SavedeepError):
    """One image cannot be decoded; under ``on_error: skip`` it becomes a failure row."""

    exit_code = 4


def bad_image_stops_run(path: object, exc: Exception) -> "InputError":
    """The error of a bad image under ``on_error: fail``: raised by a producer, and by ``validate``'s sample."""
    return InputError(f"{path}: {exc} (on_error: fail; use on_error: skip to record bad images as failures "
                      "and go on)")


class OutputError(SavedeepError):
    """The output exists, is in use by another run, cannot be resumed, or cannot be written (disk full)."""

    exit_code = 5


class WorkerError(SavedeepError):
    """A pipeline process failed; the message names its role, device and batch."""

    exit_code = 6


class Interrupted(SavedeepError):
    """The run was stopped by SIGINT or SIGTERM; the output is resumable."""

    exit_code = 130


# The exit codes of a user's mistake (config, model, input, output): a worker that fails with
# one of these is reported with its message alone, its traceback going to the run log.
USER_MISTAKE_CODES = (ConfigError.exit_code, ModelError.exit_code, InputError.exit_code, OutputError.exit_code)
