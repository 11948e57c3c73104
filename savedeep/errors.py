"""The exception types savedeep raises, one root, each with its exit code; and the table of exit codes.

The CLI turns a :class:`SavedeepError` into its message and ``exit_code``;
library code raises, it never prints or exits. :data:`EXIT_CODES` is the one
table of the codes the ``savedeep`` command returns: the exception classes take
their codes from it, the CLI's ``--help`` epilog and its own returns (0, 1, 2,
130) are built from it, and the docs render it (:func:`exit_codes_markdown`);
a test checks that every code the CLI can return is in it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExitCode:
    """One exit code of the ``savedeep`` command: its number, a name to look it up, and what it means."""

    code: int
    name: str
    short: str  # a few words, for ``savedeep --help``
    meaning: str  # the full sentence, for the docs


EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(0, "ok", "ok", "success (images that failed under `on_error: skip` are listed in the failures table)"),
    ExitCode(1, "internal", "internal error", "internal error (a bug; the traceback is printed)"),
    ExitCode(2, "config", "bad config or flags", "bad command line or config (the message names the key and the fix)"),
    ExitCode(3, "model", "bad model or blob names", "bad model directory, prototxt, caffemodel, mean or blob name"),
    ExitCode(
        4,
        "input",
        "bad images (or an image failed under on_error: fail)",
        "bad image source, or an image failed under `on_error: fail`",
    ),
    ExitCode(
        5,
        "output",
        "output exists / is in use by another run / cannot be resumed / cannot be written",
        "output problem: exists already, in use by another run (locked), `--overwrite` next to files savedeep "
        "did not write, cannot be resumed, disk full (or predicted too small: `--no-space-check`), pickle "
        "above `max_pickle_bytes`",
    ),
    ExitCode(
        6,
        "worker",
        "a worker process failed",
        "a worker process failed (the message names the role, device, batch, and carries its traceback)",
    ),
    ExitCode(130, "interrupted", "interrupted (resumable)", "interrupted by Ctrl-C or SIGTERM; rerun with `--resume`"),
)

_BY_NAME = {entry.name: entry.code for entry in EXIT_CODES}


def exit_code(name: str) -> int:
    """The code of the table entry ``name`` ("ok", "config", "interrupted", ...); KeyError for any other name."""
    return _BY_NAME[name]


def exit_codes_epilog() -> str:
    """The table as the few lines at the end of ``savedeep --help``."""
    lines = ["exit codes:"]
    for entry in EXIT_CODES:  # whole entries per line, never one cut in two
        item = f"{entry.code} {entry.short}" + ("," if entry is not EXIT_CODES[-1] else "")
        if len(lines[-1]) + 1 + len(item) > 100:
            lines.append("")
        lines[-1] = f"{lines[-1]} {item}".lstrip()
    return "\n".join(lines)


def exit_codes_markdown() -> str:
    """The table as Markdown, for the docs."""
    lines = ["| code | meaning |", "|---|---|"]
    lines += [f"| {entry.code} | {entry.meaning} |" for entry in EXIT_CODES]
    return "\n".join(lines) + "\n"


class SavedeepError(Exception):
    """Root of every error savedeep reports to the user."""

    exit_code = exit_code("internal")


class ConfigError(SavedeepError):
    """A config key or command-line flag is invalid; the message names the key and the fix."""

    exit_code = exit_code("config")


class ModelError(SavedeepError):
    """A model directory, prototxt, caffemodel, mean file or blob name is unusable."""

    exit_code = exit_code("model")


class UnsupportedLayerError(ModelError):
    """A layer type the chosen engine cannot execute."""


class InputError(SavedeepError):
    """The image source cannot be listed, or an image failed under ``on_error: fail``."""

    exit_code = exit_code("input")


class ImageError(SavedeepError):
    """One image cannot be decoded; under ``on_error: skip`` it becomes a failure row."""

    exit_code = exit_code("input")


def bad_image_stops_run(path: object, exc: Exception) -> "InputError":
    """The error of a bad image under ``on_error: fail``: raised by a producer, and by ``validate``'s sample."""
    return InputError(f"{path}: {exc} (on_error: fail; use on_error: skip to record bad images as failures and go on)")


class OutputError(SavedeepError):
    """The output exists, is in use by another run, cannot be resumed, or cannot be written (disk full)."""

    exit_code = exit_code("output")


class WorkerError(SavedeepError):
    """A pipeline process failed; the message names its role, device and batch."""

    exit_code = exit_code("worker")


class Interrupted(SavedeepError):
    """The run was stopped by SIGINT or SIGTERM; the output is resumable."""

    exit_code = exit_code("interrupted")


# The exit codes of a user's mistake (config, model, input, output): a worker that fails with
# one of these is reported with its message alone, its traceback going to the run log.
USER_MISTAKE_CODES = (ConfigError.exit_code, ModelError.exit_code, InputError.exit_code, OutputError.exit_code)
