"""The ``savedeep`` command: a thin layer over the library API.

Parsing happens before any heavy import (numpy, pyarrow, torch, caffe), so
``--help`` is instant. One root exception type, :class:`SavedeepError`, is
turned into a message and its exit code, from the one table of exit codes
(savedeep.errors.EXIT_CODES), which also gives ``--help`` its epilog.

An option's name means one thing in every subcommand (tests/test_cli_api.py
holds the table): ``-o/--out`` is what the command writes (run: the output's
pickle, its Parquet shards beside it; export, report, convert: the file or
folder they write), ``-i/--images`` an image directory or list, ``-b/--blobs``
blob names, ``--model`` a model directory, ``--overwrite`` "replace what this
command writes", ``--time`` (slurm) a time limit. A spelling that meant
something else before stays one release as a deprecated alias (one warning
line): ``inspect --images N`` is now ``--n-images N``, ``validate --time`` is
now ``--estimate-time``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

from savedeep.errors import exit_code, exit_codes_epilog

EPILOG = exit_codes_epilog()


class _OldSpelling(argparse.Action):
    """A deprecated option spelling: it still works for one release and says, in one line on stderr,
    which spelling replaces it. ``nargs=0`` with ``const`` for a flag, else the value as the new option takes it."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        kwargs.setdefault("default", argparse.SUPPRESS)  # the new spelling's default stands
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"savedeep: warning: {parser.prog} {option_string} is deprecated and goes in the next release; "
            f"use {self.new}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def _blobs(text: str) -> list[str]:
    return [b.strip() for b in text.split(",") if b.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(
        prog="savedeep",
        description="Save the activations of a Caffe CNN's blobs for every image of a directory.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def run_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("config", nargs="?", type=Path, help="YAML config file (flags override it)")
        sp.add_argument(
            "-m", "--model", type=Path, help="model directory: deploy.prototxt, weights.caffemodel, mean.npy"
        )
        sp.add_argument("-b", "--blobs", type=_blobs, help="comma-separated blob names, e.g. fc6,fc7")
        sp.add_argument(
            "-i", "--imgs", "--images", dest="images", type=Path, help="image directory or list file (.txt/.csv)"
        )
        sp.add_argument(
            "-o",
            "--out",
            "--output",
            dest="output",
            type=Path,
            help="what the run writes: its pickle, e.g. out/acts.pk (the Parquet shards: out/acts.parquet/)",
        )
        sp.add_argument("--gpus", help="0,1 | all | cpu")
        sp.add_argument(
            "--require-gpu",
            dest="require_gpu",
            action="store_const",
            const=True,
            help="stop instead of falling back to the CPU when no GPU is visible",
        )
        sp.add_argument("--engine", choices=["caffe", "torch"])
        sp.add_argument("--batch-size", dest="batch_size", type=int)
        sp.add_argument("--producers", help="decoding processes (a number or auto)")
        sp.add_argument("--cpu-consumers", dest="cpu_consumers", help="forward processes on the CPU (a number or auto)")
        sp.add_argument("--writers", help="Parquet-writing processes (a number or auto)")
        sp.add_argument("--dtype", choices=["float32", "float16"], help="storage dtype of every blob")
        sp.add_argument(
            "--storage",
            choices=["tensor", "binary"],
            help="blob columns as Arrow tensors (default) or fixed-size binary (faster to write)",
        )
        sp.add_argument("--shard-size", dest="shard_size", type=int, help="images per Parquet shard")
        sp.add_argument("--on-error", dest="on_error", choices=["skip", "fail"], help="what a bad image does")
        sp.add_argument(
            "--no-pickle", dest="pickle", action="store_const", const=False, help="write only the Parquet output"
        )
        sp.add_argument(
            "--no-space-check",
            dest="space_check",
            action="store_const",
            const=False,
            help="start even if the output's file system seems to lack the space the run will write",
        )
        sp.add_argument(
            "--report",
            dest="report",
            action="store_const",
            const=True,
            help="after the run, write the HTML report out/acts.report.html (as savedeep report)",
        )

    r = sub.add_parser(
        "run", help="extract activations", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    run_flags(r)
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="complete an interrupted run into the same output")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing output")
    r.add_argument(
        "--break-lock",
        dest="break_lock",
        action="store_true",
        help="take the output's lock from a run that is gone (crashed on another host)",
    )

    def task_flags(sp: argparse.ArgumentParser, what: str) -> None:
        tmode = sp.add_mutually_exclusive_group()
        tmode.add_argument(
            "--task",
            metavar="K/N",
            help=f"{what} task K's share (0..N-1) of the shards into the "
            "shared output; `savedeep merge` makes the tasks one output",
        )
        tmode.add_argument(
            "--tasks",
            type=int,
            metavar="N",
            help="as --task K/N with K from the array index: "
            "SLURM_ARRAY_TASK_ID or PBS_ARRAY_INDEX (from 0), SGE_TASK_ID or LSB_JOBINDEX (from 1)",
        )

    task_flags(r, "compute only")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    r.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")

    v = sub.add_parser(
        "validate",
        help="check a config, its model, blobs, images and output without a forward "
        "pass (give the run's flags, --resume or --overwrite included: same checks, same messages)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run_flags(v)
    vmode = v.add_mutually_exclusive_group()
    vmode.add_argument("--resume", action="store_true", help="check as for a run with --resume")
    vmode.add_argument("--overwrite", action="store_true", help="check as for a run with --overwrite (deletes nothing)")
    task_flags(v, "check as for a run of")
    v.add_argument(
        "--estimate-time",
        dest="time_it",
        action="store_true",
        help="forward one batch here and estimate the run's duration on this machine",
    )
    v.add_argument("--time", dest="time_it", action=_OldSpelling, nargs=0, const=True, new="--estimate-time")
    v.add_argument("--json", action="store_true", help="the checks' figures and predictions as JSON, for scripts")

    i = sub.add_parser("inspect", help="list a model's blobs with their shapes and sizes")
    i.add_argument("model", type=Path, help="model directory or deploy.prototxt")
    i.add_argument(
        "--n-images", dest="n_images", type=int, default=1, metavar="N", help="show totals for this many images"
    )
    i.add_argument("--images", dest="n_images", type=int, action=_OldSpelling, new="--n-images")
    i.add_argument("--json", action="store_true", help="machine-readable output")

    x = sub.add_parser(
        "export",
        help="write an output as netCDF4, NumPy .npy files or a MATLAB .mat file",
        epilog="needs the export extra: pip install 'savedeep[export]'",
    )
    x.add_argument("output", type=Path, help="the run's output: out/acts.pk or out/acts.parquet")
    x.add_argument("--to", required=True, choices=["netcdf", "npy", "mat"], help="the format")
    x.add_argument("-b", "--blobs", type=_blobs, help="comma-separated blob names (default: all)")
    x.add_argument(
        "-o",
        "--out",
        dest="dest",
        type=Path,
        help="what export writes (default: out/acts.nc, out/acts_npy/ or out/acts.mat)",
    )
    x.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    x.add_argument("--model", type=Path, help="model directory, for receptive fields, if it moved since the run")
    x.add_argument(
        "--compression-level",
        dest="compression_level",
        type=int,
        default=1,
        help="netCDF gzip level 0-9 (0: none; default 1)",
    )
    x.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")

    rp = sub.add_parser(
        "report",
        help="write one self-contained HTML page about an output: the run, each blob's "
        "activations, RDMs and blob similarity, top images",
        epilog="needs the report extra: pip install 'savedeep[report]'",
    )
    rp.add_argument("output", type=Path, help="the run's output: out/acts.pk or out/acts.parquet")
    rp.add_argument(
        "-o", "--out", dest="dest", type=Path, help="what report writes: the page (default: out/acts.report.html)"
    )
    rp.add_argument("-b", "--blobs", type=_blobs, help="comma-separated blob names (default: all)")
    rp.add_argument(
        "--group-by",
        dest="group_by",
        metavar="COLUMN",
        help="order the RDMs by this metadata column of a CSV image list, groups marked",
    )
    rp.add_argument(
        "--max-images",
        dest="max_images",
        type=int,
        default=500,
        help="RDMs over at most this many images, a seeded random subsample above it (default 500)",
    )
    rp.add_argument("--seed", type=int, default=0, help="seed of that subsample (default 0)")
    rp.add_argument(
        "--no-thumbnails",
        dest="thumbnails",
        action="store_false",
        help="do not read the images for the top-image thumbnails",
    )
    rp.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")

    mg = sub.add_parser(
        "merge",
        help="make the shards of an array of tasks (run --task/--tasks) one output: "
        "check every shard and task, then write the manifest and the pickle",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mg.add_argument("output", type=Path, help="the output: out/acts.pk or out/acts.parquet")
    mg.add_argument(
        "--no-pickle",
        dest="pickle",
        action="store_const",
        const=False,
        help="write only the manifest (default: as the tasks' config says)",
    )
    mg.add_argument(
        "--break-lock",
        dest="break_lock",
        action="store_true",
        help="take the output's locks from tasks that are gone (their node died)",
    )
    mg.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")

    sl = sub.add_parser(
        "slurm",
        help="write a Slurm array job of N tasks and a merge job after it; --submit submits both",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run_flags(sl)
    sl.add_argument("--tasks", type=int, required=True, metavar="N", help="number of array tasks (fixed: the split)")
    sl.add_argument("--gpus-per-task", dest="gpus_per_task", type=int, metavar="G")
    sl.add_argument("--partition", metavar="P")
    sl.add_argument("--time", metavar="T", help="time limit per task, e.g. 4:00:00")
    sl.add_argument("--mem", metavar="M", help="memory per task, e.g. 32G")
    sl.add_argument("--cpus-per-task", dest="cpus_per_task", type=int, metavar="C")
    sl.add_argument("--array-limit", dest="array_limit", type=int, metavar="L", help="at most L tasks at once (%%L)")
    sl.add_argument(
        "--sbatch-arg",
        dest="sbatch_args",
        action="append",
        default=[],
        metavar="ARG",
        help="one more #SBATCH line, e.g. --sbatch-arg=--account=lab (repeatable)",
    )
    sl.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="LINE",
        help="a line of the scripts' site set-up block, e.g. 'module load cuda' (repeatable)",
    )
    sl.add_argument(
        "--savedeep",
        metavar="PATH",
        help="the savedeep executable the jobs run (default: this environment's, by absolute path)",
    )
    sl.add_argument("--dir", type=Path, help="where the scripts and logs go (default: out/acts.slurm/)")
    sl.add_argument("--submit", action="store_true", help="submit the array job and the merge job with sbatch")

    c = sub.add_parser(
        "convert",
        help="write a Caffe model as ONNX, as a PyTorch module (NAME.py "
        "+ NAME.pt: one submodule per layer) or as a torch.export program (.pt2)",
        epilog="--to onnx needs the convert extra: pip install 'savedeep[convert]'\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("model", type=Path, help="model directory: deploy.prototxt, weights.caffemodel, mean.npy")
    c.add_argument(
        "--to",
        required=True,
        choices=["onnx", "torch"],
        help="onnx (.onnx) or torch (-o NAME.py: a module "
        "and its weights NAME.pt; -o NAME.pt2: a torch.export program)",
    )
    c.add_argument("-o", "--out", dest="dest", type=Path, required=True, help="the file to write, e.g. model.onnx")
    c.add_argument("-b", "--blobs", type=_blobs, help="comma-separated blob names (default: the net's outputs)")
    c.add_argument("--batch", default="dynamic", help="'dynamic' (default: any batch size) or a fixed batch size")
    c.add_argument("--overwrite", action="store_true", help="replace an existing file")
    c.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


_RUN_KEYS = (
    "model",
    "blobs",
    "images",
    "output",
    "gpus",
    "require_gpu",
    "engine",
    "batch_size",
    "producers",
    "writers",
    "cpu_consumers",
    "dtype",
    "storage",
    "shard_size",
    "on_error",
    "pickle",
    "space_check",
    "report",
)


def _overrides(args: argparse.Namespace) -> dict:
    out = {k: getattr(args, k) for k in _RUN_KEYS if getattr(args, k, None) is not None}
    for key in ("producers", "writers"):
        if key in out and out[key] != "auto":
            try:
                out[key] = int(out[key])
            except ValueError:
                pass  # the config validator names the key and the fix
    return out


def _setup_console(quiet: bool) -> None:
    from savedeep.runner.ui import CONSOLE_FORMAT, ConsoleHandler

    lg = logging.getLogger("savedeep")
    for old in [h for h in lg.handlers if isinstance(h, ConsoleHandler)]:
        lg.removeHandler(old)  # main() called again in one process (the API, the tests): one console line each
    handler = ConsoleHandler()
    handler.setFormatter(logging.Formatter(CONSOLE_FORMAT))
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    lg = logging.getLogger("savedeep")
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)
    logging.getLogger("savedeep").propagate = False


def _cmd_run(args: argparse.Namespace) -> int:
    from savedeep import run
    from savedeep.config import load_config

    _setup_console(args.quiet)
    config = load_config(args.config, _overrides(args))
    result = run(
        config,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=args.progress and not args.quiet,
        break_lock=args.break_lock,
        task=_task(args),
    )  # the one run sequence: savedeep.run
    print(result.summary(), file=sys.stderr)
    if result.report is not None:
        print(f"report: {result.report}", file=sys.stderr)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from savedeep.runner.validate import validate

    _setup_console(False)
    from savedeep.config import load_config

    config = load_config(args.config, _overrides(args))
    print(
        validate(
            config,
            resume=args.resume,
            overwrite=args.overwrite,
            task=_task(args),
            time_it=args.time_it,
            as_json=args.json,
        )
    )
    return 0


def _task(args: argparse.Namespace) -> Any:
    """--task K/N as given (savedeep.run and validate parse it), or the TaskSpec of --tasks N, whose K only
    the job array's environment knows; None for a whole run."""
    if args.tasks is None:
        return args.task
    from savedeep.runner.tasks import task_from_env

    return task_from_env(args.tasks)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from savedeep.caffe.inspect import format_table, inspect_model, to_json

    rows = inspect_model(args.model, images=args.n_images)
    if args.json:
        print(json.dumps(to_json(rows, args.n_images), indent=1))
    else:
        print(format_table(rows, args.n_images))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from savedeep import export

    _setup_console(args.quiet)
    dest = export(
        args.output,
        args.to,
        args.dest,
        args.blobs,
        overwrite=args.overwrite,
        model=args.model,
        compression_level=args.compression_level,
    )
    print(dest)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from savedeep import report

    _setup_console(args.quiet)
    page = report(
        args.output,
        args.dest,
        args.blobs,
        group_by=args.group_by,
        max_images=args.max_images,
        seed=args.seed,
        thumbnails=args.thumbnails,
    )
    print(page)
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from savedeep import merge

    _setup_console(args.quiet)
    print(merge(args.output, pickle=args.pickle, break_lock=args.break_lock).summary(), file=sys.stderr)
    return 0


def _cmd_slurm(args: argparse.Namespace) -> int:
    from savedeep.config import load_config
    from savedeep.runner.slurm import SlurmOptions, run_args_from, submit, write_scripts

    _setup_console(False)
    overrides = _overrides(args)
    config = load_config(args.config, overrides)  # the config must load here, not on the cluster
    output = Path(config.output).resolve()
    directory = (args.dir or output.with_name(output.stem + ".slurm")).resolve()
    opts = SlurmOptions(
        tasks=args.tasks,
        run_args=run_args_from(args.config, overrides),
        output=output,
        directory=directory,
        savedeep=args.savedeep or "",
        gpus_per_task=args.gpus_per_task,
        partition=args.partition,
        time=args.time,
        mem=args.mem,
        cpus_per_task=args.cpus_per_task,
        array_limit=args.array_limit,
        sbatch_args=args.sbatch_args,
        setup=args.setup,
    )
    array, merge_job = write_scripts(opts)
    print(f"array job: {array}\nmerge job: {merge_job}\nlogs: {directory / 'logs'}")
    if args.submit:
        print(submit(array, merge_job).summary())
    else:
        print(f"submit: jid=$(sbatch --parsable {array}) && sbatch --dependency=afterok:$jid {merge_job}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from savedeep import convert

    _setup_console(args.quiet)
    print(convert(args.model, args.to, args.dest, args.blobs, batch=args.batch, overwrite=args.overwrite))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``savedeep`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from savedeep import __version__

        print(f"savedeep {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return exit_code("config")  # as argparse's own usage errors
    from savedeep.errors import SavedeepError

    try:
        return {
            "run": _cmd_run,
            "validate": _cmd_validate,
            "inspect": _cmd_inspect,
            "export": _cmd_export,
            "report": _cmd_report,
            "convert": _cmd_convert,
            "merge": _cmd_merge,
            "slurm": _cmd_slurm,
        }[args.command](args)
    except SavedeepError as exc:
        print(f"savedeep: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("savedeep: interrupted", file=sys.stderr)
        return exit_code("interrupted")
    except BrokenPipeError:
        # `savedeep inspect MODEL | head`: the reader left; not an error.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exit_code("ok")
    except Exception:  # noqa: BLE001 - a bug: show everything
        traceback.print_exc()
        print("savedeep: internal error (a bug); please report it with the traceback above", file=sys.stderr)
        return exit_code("internal")


if __name__ == "__main__":
    sys.exit(main())
