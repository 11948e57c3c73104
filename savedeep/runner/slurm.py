"""``savedeep slurm``: write (and with ``--submit``, submit) a Slurm array job and the merge job after it.

The scripts are meant to be kept and edited: every ``#SBATCH`` option on its own
line, the site's set-up (modules, conda, containers) in one marked block, and the
savedeep executable by absolute path so that a task finds the same environment on
any node that sees this file system. Task K is ``SLURM_ARRAY_TASK_ID``; N is written
into the script, so ``sbatch --array=1,4 array.sh`` resubmits tasks 1 and 4 of the
same split (NOTE [savedeep tasks] in savedeep/runner/tasks.py).
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from savedeep.errors import ConfigError, SavedeepError, WorkerError

log = logging.getLogger(__name__)

SITE_SETUP_DEFAULT = "# module load cuda    # e.g.: your site's modules, `conda activate ENV`, a container"


class SubmitError(SavedeepError):
    """sbatch refused or could not be run (exit code 6, as a failed worker: something outside savedeep)."""

    exit_code = WorkerError.exit_code


@dataclass
class SlurmOptions:
    """What goes into the two scripts."""

    tasks: int
    run_args: list[str]  # savedeep run's arguments after `run` (config and flags), absolute
    output: Path  # the pickle path, absolute
    directory: Path  # where the scripts and the logs go
    savedeep: str = ""  # the executable; default: the one beside this Python
    gpus_per_task: int | None = None
    partition: str | None = None
    time: str | None = None
    mem: str | None = None
    cpus_per_task: int | None = None
    array_limit: int | None = None
    sbatch_args: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    job_name: str = ""

    def __post_init__(self) -> None:
        if self.tasks < 1:
            raise ConfigError(f"--tasks {self.tasks}: give at least 1 task")
        if self.array_limit is not None and self.array_limit < 1:
            raise ConfigError(f"--array-limit {self.array_limit}: give at least 1 (tasks running at once)")
        if not self.savedeep:
            self.savedeep = default_executable()
        if not self.job_name:
            self.job_name = f"savedeep-{self.output.stem}"


def default_executable() -> str:
    """The savedeep of this environment: beside this interpreter (a venv's bin/), else on PATH."""
    here = Path(sys.executable).parent / "savedeep"
    if here.is_file():
        return str(here)
    found = shutil.which("savedeep")
    return str(Path(found).resolve()) if found else f"{sys.executable} -m savedeep"


def _sbatch_lines(o: SlurmOptions, *, array: bool) -> list[str]:
    logs = o.directory / "logs"
    lines = [f"#SBATCH --job-name={o.job_name}" + ("" if array else "-merge")]
    if array:
        limit = f"%{o.array_limit}" if o.array_limit else ""
        lines += [
            f"#SBATCH --array=0-{o.tasks - 1}{limit}",
            f"#SBATCH --output={logs}/%A_%a.out",
            "#SBATCH --open-mode=append        # a requeued task appends to its log",
            "#SBATCH --requeue                 # a preempted or failed node's task runs again and resumes",
            "#SBATCH --ntasks=1",
        ]
        if o.cpus_per_task:
            lines.append(f"#SBATCH --cpus-per-task={o.cpus_per_task}")
        if o.gpus_per_task:
            lines.append(f"#SBATCH --gpus-per-task={o.gpus_per_task}")
        if o.mem:
            lines.append(f"#SBATCH --mem={o.mem}")
    else:
        lines += [f"#SBATCH --output={logs}/merge_%j.out", "#SBATCH --ntasks=1", "#SBATCH --cpus-per-task=1"]
        if o.mem:
            lines.append(f"#SBATCH --mem={o.mem}     # the pickle is built in memory")
    if o.partition:
        lines.append(f"#SBATCH --partition={o.partition}")
    if o.time:
        lines.append(f"#SBATCH --time={o.time}")
    for extra in o.sbatch_args:
        lines.append(f"#SBATCH {extra}")
    return lines


def _setup_block(o: SlurmOptions) -> list[str]:
    return [
        "# ---- site set-up: edit here (modules, conda, containers) ----",
        *(o.setup or [SITE_SETUP_DEFAULT]),
        f"SAVEDEEP={shlex.quote(o.savedeep)}    # the savedeep of the environment the tasks use (--savedeep)",
        "# ---- end of site set-up ----",
    ]


def array_script(o: SlurmOptions) -> str:
    """The array job: task $SLURM_ARRAY_TASK_ID of N computes its shards into the shared output."""
    run = " ".join(shlex.quote(a) for a in o.run_args)
    gpu_note = (
        "# GPUs: each task uses the GPUs Slurm gives it (CUDA_VISIBLE_DEVICES), one consumer per GPU;\n"
        "# the config's gpus: all (the default) takes them all.\n"
        if o.gpus_per_task
        else ""
    )
    return "\n".join(
        [
            "#!/bin/bash",
            f"# savedeep array job: {o.tasks} tasks computing {o.output} (written by savedeep slurm).",
            "# Resubmit only some tasks (the indices savedeep merge names) with this same script:",
            f"#   sbatch --array={','.join(str(k) for k in range(min(o.tasks, 2)))} " + str(o.directory / "array.sh"),
            "# then merge: sbatch " + str(o.directory / "merge.sh") + "  (or: savedeep merge " + str(o.output) + ")",
            *_sbatch_lines(o, array=True),
            "",
            *_setup_block(o),
            "",
            "set -euo pipefail",
            gpu_note + f"cd {shlex.quote(str(Path.cwd()))}",
            "# --tasks N takes K from SLURM_ARRAY_TASK_ID; N is fixed here, so resubmitting some indices keeps the split.",
            f"exec $SAVEDEEP run {run} --tasks {o.tasks} --no-progress",
            "",
        ]
    )


def merge_script(o: SlurmOptions) -> str:
    """The merge job: checks every shard and task, then writes the manifest and the pickle."""
    return "\n".join(
        [
            "#!/bin/bash",
            f"# savedeep merge job for {o.output}: submitted with --dependency=afterok:<array job> by savedeep slurm.",
            *_sbatch_lines(o, array=False),
            "",
            *_setup_block(o),
            "",
            "set -euo pipefail",
            f"cd {shlex.quote(str(Path.cwd()))}",
            f"exec $SAVEDEEP merge {shlex.quote(str(o.output))}",
            "",
        ]
    )


def write_scripts(o: SlurmOptions) -> tuple[Path, Path]:
    """Write array.sh and merge.sh into ``o.directory`` (and its logs/ folder); return their paths."""
    try:
        (o.directory / "logs").mkdir(parents=True, exist_ok=True)
        paths = []
        for name, text in (("array.sh", array_script(o)), ("merge.sh", merge_script(o))):
            p = o.directory / name
            p.write_text(text)
            p.chmod(0o755)
            paths.append(p)
    except OSError as exc:
        from savedeep.errors import OutputError

        raise OutputError(f"cannot write the job scripts in {o.directory}: {exc.strerror}; give another --dir") from exc
    return paths[0], paths[1]


def sbatch(args: Sequence[str]) -> str:
    """Run ``sbatch --parsable ARGS``; return the job id."""
    exe = shutil.which("sbatch")
    if exe is None:
        raise SubmitError(
            "--submit: sbatch is not on PATH (is this a Slurm login node?); the scripts are written: "
            "submit them yourself where sbatch is"
        )
    proc = subprocess.run([exe, "--parsable", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SubmitError(f"sbatch {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]


@dataclass
class Submitted:
    array_job: str
    merge_job: str

    def summary(self) -> str:
        return (
            f"submitted array job {self.array_job} and merge job {self.merge_job} "
            f"(runs after every task succeeded)\nwatch: squeue -j {self.array_job},{self.merge_job}"
        )


def submit(array: Path, merge: Path) -> Submitted:
    """Submit the array job, then the merge job depending on it (afterok)."""
    a = sbatch([str(array)])
    m = sbatch([f"--dependency=afterok:{a}", "--kill-on-invalid-dep=yes", str(merge)])
    return Submitted(a, m)


def run_args_from(config: Path | None, overrides: dict[str, Any]) -> list[str]:
    """``savedeep run``'s arguments for a config file and command-line overrides, paths made absolute."""
    flags = {
        "model": "--model",
        "images": "--images",
        "output": "--output",
        "gpus": "--gpus",
        "engine": "--engine",
        "batch_size": "--batch-size",
        "producers": "--producers",
        "cpu_consumers": "--cpu-consumers",
        "writers": "--writers",
        "dtype": "--dtype",
        "storage": "--storage",
        "shard_size": "--shard-size",
        "on_error": "--on-error",
    }
    out = [str(Path(config).resolve())] if config is not None else []
    for key, value in overrides.items():
        if key in ("model", "images", "output"):
            out += [flags[key], str(Path(value).resolve())]
        elif key == "blobs":
            out += ["--blobs", ",".join(value)]
        elif key == "pickle" and value is False:
            out.append("--no-pickle")
        elif key == "space_check" and value is False:
            out.append("--no-space-check")
        elif key == "require_gpu" and value:
            out.append("--require-gpu")
        elif key == "report":
            continue  # a task writes no report; run savedeep report after the merge
        elif key in flags:
            out += [flags[key], str(value)]
    return out


__all__ = ["SlurmOptions", "Submitted", "array_script", "merge_script", "run_args_from", "submit", "write_scripts"]
