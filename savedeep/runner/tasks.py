"""Tasks of a run split over many jobs (Slurm job arrays), and ``merge``, which makes them one output.

NOTE [savedeep tasks]
=====================

The split. A run's shards are fixed by the image list and ``shard_size``
(savedeep/runner/preflight.py, ``make_plan``). Task K of N owns the shards k with
``k % N == K``: a function of (shard plan, K, N) only, so every task computes
its share without talking to the others, any N gives the same rows, and the
owner of a missing shard is known from its index. N is always given (``--task
K/N`` or ``--tasks N``), never read from ``SLURM_ARRAY_TASK_COUNT``: resubmitting
some indices (``sbatch --array=1,4``) changes that variable, and the split must
not change with it.

The index. ``--tasks N`` takes K from the scheduler: Slurm's
``SLURM_ARRAY_TASK_ID`` and PBS's ``PBS_ARRAY_INDEX`` as they are (submit
``--array=0-(N-1)`` / ``-J 0-(N-1)``); SGE's ``SGE_TASK_ID`` and LSF's
``LSB_JOBINDEX`` start at 1, so K is that value minus 1 (submit ``-t 1-N`` /
``job[1-N]``). The log says which variable gave K.

What a task writes. Its shards, into the shared Parquet directory, under the
usual names (a shard is written hidden and renamed when complete); its record,
``acts.parquet/_task-0000K.json`` (a Manifest with a task's header: the run's
header, the task, each attempt's host, job id and times, and its shards with
their rows and failures); its lock ``out/.acts.task-K.lock`` while it runs; its
log ``out/acts.task-0000K.log``. Only task K writes those files, so no two
processes ever write the same file. A task never writes ``_manifest.json``, the
failures table or the pickle. A task started again (rerun, requeued) keeps the
shards its record (or the shards' own records) says are complete and computes
the rest. A task whose result keys, model files, image list or N differ from any
record already in the directory is refused before it writes anything; two that
start at the same time each check again once their record is written, so at
least one of them sees the other and stops.

Merge. ``merge`` takes the whole output's lock (refused while any task holds
its own), reads every task record, checks that they agree (result fingerprint,
model sha256s, image list, N) and that every shard of the plan is in place, and
only then writes the failures table, ``_manifest.json`` marked complete and the
pickle, in that order (savedeep/runner/manifest.py, ``Manifest.finish``). Anything
missing is one error naming the shards and the array indices to resubmit; it
writes nothing.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from savedeep.errors import ConfigError, OutputError
from savedeep.runner.lock import scheduler_job_id as job_id

log = logging.getLogger(__name__)

TASK_RECORD = re.compile(r"_task-(\d{5,})\.json")

# (variable, its first index): where --tasks N reads K from, in this order.
ARRAY_VARIABLES = (("SLURM_ARRAY_TASK_ID", 0), ("PBS_ARRAY_INDEX", 0), ("SGE_TASK_ID", 1), ("LSB_JOBINDEX", 1))


@dataclass(frozen=True)
class TaskSpec:
    """Task ``index`` of ``count``; ``source``: where the index came from (a flag or a variable)."""

    index: int
    count: int
    source: str = "--task"

    def owns(self, shard: int) -> bool:
        return shard % self.count == self.index

    @property
    def record_name(self) -> str:
        return task_record_name(self.index)

    def describe(self) -> str:
        return f"task {self.index} of {self.count}"


def task_record_name(index: int) -> str:
    """The file name of task ``index``'s record in the Parquet directory (skipped by Parquet readers: '_')."""
    return f"_task-{index:05d}.json"


def owner(shard: int, count: int) -> int:
    """The task (of ``count``) that computes ``shard``."""
    return shard % count


def task_log(log_file: Path, index: int) -> Path:
    """Task ``index``'s own log beside ``log_file``: out/acts.log -> out/acts.task-00003.log."""
    log_file = Path(log_file)
    return log_file.with_name(f"{log_file.stem}.task-{index:05d}{log_file.suffix}")


def parse_task(text: str) -> TaskSpec:
    """``--task K/N``."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise ConfigError(f"--task {text}: give K/N, task K (0 to N-1) of N, e.g. --task 0/4")
    k, n = int(m.group(1)), int(m.group(2))
    return check_task(k, n, "--task")


def check_task(k: int, n: int, source: str) -> TaskSpec:
    if n < 1:
        raise ConfigError(f"{source}: the number of tasks must be at least 1, not {n}")
    if not 0 <= k < n:
        raise ConfigError(
            f"{source}: task index {k} is not in 0..{n - 1} (tasks are numbered from 0; "
            f"with {n} tasks submit the array as --array=0-{n - 1})"
        )
    return TaskSpec(k, n, source)


def task_from_env(count: int, env: Mapping[str, str] | None = None) -> TaskSpec:
    """``--tasks N``: K from the scheduler's array index (see NOTE [savedeep tasks]); N as given, never read."""
    env = os.environ if env is None else env
    if count < 1:
        raise ConfigError(f"--tasks {count}: the number of tasks must be at least 1")
    for var, first in ARRAY_VARIABLES:
        raw = env.get(var, "").strip()
        if not raw.isdigit() or (first == 1 and int(raw) == 0):  # SGE: 'undefined'; LSF: 0 outside an array
            continue
        k = int(raw) - first
        what = var if first == 0 else f"{var}={raw} minus 1 ({var} starts at 1)"
        if not 0 <= k < count:
            lo, hi = first, count - 1 + first
            raise ConfigError(
                f"--tasks {count}: {var}={raw} gives task {k}, not in 0..{count - 1}; submit the array "
                f"with indices {lo}-{hi} (e.g. sbatch --array={lo}-{hi}), or give the right --tasks"
            )
        return TaskSpec(k, count, what)
    names = ", ".join(v for v, _ in ARRAY_VARIABLES)
    raise ConfigError(
        f"--tasks {count}: none of {names} is set, so this is not an array job; run it inside "
        "one (sbatch --array=...), or give the task yourself with --task K/N"
    )


# --------------------------------------------------------------------------- records on disk


def read_records(directory: Path) -> dict[int, dict[str, Any]]:
    """Every task record in the Parquet directory ``directory``: {task index: record}."""
    from savedeep.data.output import read_manifest

    out: dict[int, dict[str, Any]] = {}
    if not Path(directory).is_dir():
        return out
    for f in sorted(Path(directory).iterdir()):
        m = TASK_RECORD.fullmatch(f.name)
        if m:
            data = read_manifest(directory, f.name)
            if data is not None:
                out[int(m.group(1))] = data
    return out


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """What differs between two runs' headers in what decides the rows (empty: they can share an output)."""
    from savedeep.config import RESULT_KEYS, recorded_result_fingerprint

    out = []
    if recorded_result_fingerprint(a) != recorded_result_fingerprint(b):
        old, new = a.get("config", {}), b.get("config", {})
        out.append(
            "config keys " + ", ".join([k for k in RESULT_KEYS if old.get(k) != new.get(k)] or ["(fingerprint)"])
        )
    ha, hb = a.get("model", {}).get("sha256", {}), b.get("model", {}).get("sha256", {})
    if ha != hb:
        out.append("model files " + ", ".join(sorted(k for k in set(ha) | set(hb) if ha.get(k) != hb.get(k))))
    ia, ib = a.get("images", {}), b.get("images", {})
    if ia.get("keys_sha256") != ib.get("keys_sha256"):
        out.append(f"the image list ({ia.get('count')} images against {ib.get('count')})")
    ta, tb = a.get("task", {}).get("count"), b.get("task", {}).get("count")
    if ta is not None and tb is not None and ta != tb:
        out.append(f"the number of tasks ({ta} against {tb})")
    return out


def check_records(directory: Path, header: Mapping[str, Any], task: TaskSpec) -> None:
    """Refuse task ``task`` with ``header`` if a record of another task in ``directory`` disagrees with it."""
    for k, rec in sorted(read_records(directory).items()):
        if k == task.index:
            continue
        diff = differences(rec, header)
        if diff:
            raise OutputError(
                f"{task.describe()} refused: {Path(directory) / task_record_name(k)} was written by a task of another "
                f"run into the same output; these differ: {'; '.join(diff)}. Nothing was changed. Give this run "
                f"another output, or delete {directory} (every task of the other run) to start over"
            )


def check_task_output(config: Any, task: TaskSpec, header: Mapping[str, Any]) -> tuple[bool, set[int]]:
    """What a task may do with what is on disk: (output exists, shards of its own to keep). Changes nothing.

    ``header``: what the task would record (run_header + task), compared with every record there.
    """
    import copy

    from savedeep.runner.manifest import FORMAT, Manifest
    from savedeep.data.output import MANIFEST

    pq_dir = config.parquet_dir
    if Path(config.output).exists():
        raise OutputError(
            f"{task.describe()} refused: {config.output} exists (a merged or whole run's output, or "
            "another file); nothing was changed: choose another output, or delete this one first"
        )
    if not pq_dir.exists():
        return False, set()
    if (pq_dir / MANIFEST).exists():
        raise OutputError(
            f"{task.describe()} refused: {pq_dir} holds a finished or whole run's output "
            f"({MANIFEST}); tasks write into a new output or one holding only tasks' shards. "
            "Nothing was changed: choose another output, or delete this one first"
        )
    check_records(pq_dir, header, task)
    mine = Manifest.read(pq_dir, task.record_name)
    if mine is None:
        return True, set()
    if not mine.is_valid() or mine.data.get("task", {}).get("index") != task.index:
        raise OutputError(
            f"{pq_dir / task.record_name} is not a {FORMAT} task record of task {task.index}; "
            "delete it (and this task's shards) to compute the task again"
        )
    diff = differences(mine.data, header)
    if diff:
        raise OutputError(
            f"{task.describe()} refused: its own earlier attempt ({pq_dir / task.record_name}) ran "
            f"another run; these differ: {'; '.join(diff)}. Nothing was changed. Rerun with the "
            f"same settings, or delete {pq_dir} to start over"
        )
    copy_ = Manifest(pq_dir, copy.deepcopy(mine.data), task.record_name)
    copy_.adopt_finished(write=False)
    return True, {k for k in copy_.finished() if task.owns(k)}


def task_header(header: Mapping[str, Any], task: TaskSpec, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """A task's record header: the run's, the task, and one more attempt (host, pid, job id, start)."""
    attempts = list((previous or {}).get("attempts", []))
    attempts.append(
        {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job_id": job_id(),
            "index_from": task.source,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "ended": None,
            "status": "running",
        }
    )
    return {**header, "task": {"index": task.index, "count": task.count}, "attempts": attempts}


def tidy_task(directory: Path, task: TaskSpec, keep: set[int]) -> dict[int, dict[str, Any]]:
    """Before task ``task`` starts again: adopt its unreported shards; delete its other shard files (and only its)."""
    from savedeep.runner.manifest import Manifest

    mine = Manifest.read(directory, task.record_name)
    if mine is not None:
        mine.adopt_finished()
    for f in Path(directory).iterdir():
        m = re.fullmatch(r"(\.)?part-(\d+)\.parquet(\.inprogress)?", f.name)
        if m and task.owns(int(m.group(2))) and (m.group(1) or int(m.group(2)) not in keep):
            f.unlink(missing_ok=True)
    return {s["index"]: s for s in mine.shards if s["index"] in keep} if mine is not None else {}


def _end_attempt(manifest: Any, status: str) -> None:
    attempts = manifest.data.get("attempts") or [{}]
    attempts[-1].update(ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"), status=status)


def finish_task(manifest: Any, *, devices: list[dict[str, Any]], wall_s: float) -> None:
    """Mark a task's record complete (every shard of its share is); no failures table, manifest or pickle."""
    from savedeep.errors import WorkerError

    incomplete = [s["index"] for s in manifest.shards if not s.get("complete")]
    if incomplete:
        raise WorkerError(f"the writer ended but shards {incomplete} are not complete (a bug); rerun the task")
    m = manifest.data
    m["devices"] = devices
    m["complete"] = True
    m["summary"] = {"rows": manifest.rows(), "failures": len(manifest.failures()), "wall_s": round(wall_s, 3)}
    _end_attempt(manifest, "done")
    manifest.write()
    log.info(
        "task %d of %d done: %d rows, %d failures in %d shards; merge when every task is done (savedeep merge %s)",
        m["task"]["index"],
        m["task"]["count"],
        m["summary"]["rows"],
        m["summary"]["failures"],
        len(manifest.shards),
        manifest.directory,
    )


def mark_stopped(manifest: Any) -> None:
    """Record that this attempt of a task ended before its share was done (its finished shards are kept)."""
    try:
        _end_attempt(manifest, "stopped")
        manifest.write()
    except Exception as exc:  # noqa: BLE001 - the record is provenance; the shards are what matter
        log.warning("could not record the end of this attempt in %s: %s", manifest.name, exc)


# --------------------------------------------------------------------------- merge


@dataclass
class MergeResult:
    """What merge wrote."""

    pickle: Path | None
    parquet_dir: Path
    rows: int
    failures: int
    shards: int
    tasks: int
    wall_s: float
    report: Path | None = None  # the HTML report, written when the tasks' config says report: true

    def summary(self) -> str:
        return (
            f"merged {self.tasks} tasks: {self.shards} shards, {self.rows} rows, {self.failures} failures "
            f"in {self.wall_s:.2f} s\noutput: {self.pickle or self.parquet_dir}"
            + (f"\nreport: {self.report}" if self.report else "")
        )


def _pickle_for(directory: Path, header: Mapping[str, Any]) -> Path:
    from savedeep.data.output import parquet_dir

    configured = Path(header.get("config", {}).get("output", directory.with_suffix(".pk")))
    if parquet_dir(configured).resolve() == directory.resolve():
        return configured
    return directory.with_suffix(".pk")


def _ranges(shards: list[dict[str, Any]]) -> str:
    return ", ".join(f"{s['index']} (images {s['start']}-{s['stop'] - 1})" for s in shards)


def _indices(ks: list[int]) -> str:
    """0,1,2,5 -> '0-2,5' (sbatch --array syntax)."""
    out, i = [], 0
    while i < len(ks):
        j = i
        while j + 1 < len(ks) and ks[j + 1] == ks[j] + 1:
            j += 1
        out.append(str(ks[i]) if i == j else f"{ks[i]}-{ks[j]}")
        i = j + 1
    return ",".join(out)


def merge(output: Path | str, *, pickle: bool | None = None, break_lock: bool = False) -> MergeResult:
    """Make the tasks' shards in ``output`` (out/acts.pk or out/acts.parquet) one complete output.

    See NOTE [savedeep tasks]. Raises OutputError, writing nothing, if a task still
    runs, if the tasks disagree, or if any shard is missing.
    """
    from savedeep.runner.lock import OutputLock
    from savedeep.runner.manifest import Manifest
    from savedeep.data.output import MANIFEST, parquet_dir, shard_name, shard_ranges, shard_record

    t0 = time.perf_counter()
    output = Path(output)
    directory = output if output.suffix == ".parquet" or output.is_dir() else parquet_dir(output)
    if not directory.is_dir():
        raise OutputError(
            f"cannot merge {output}: {directory} does not exist; run the tasks first "
            "(savedeep run CONFIG --task K/N, or the array job of savedeep slurm)"
        )
    records = read_records(directory)
    if not records:
        what = "it holds a finished output already" if (directory / MANIFEST).exists() else "no task wrote there"
        raise OutputError(f"cannot merge {directory}: it has no task records (_task-*.json); {what}")
    first_k = min(records)
    header = records[first_k]
    pickle_path = (
        output if output.suffix not in ("", ".parquet") and not output.is_dir() else _pickle_for(directory, header)
    )
    with OutputLock(pickle_path, break_lock=break_lock):
        records = read_records(directory)  # again, under the lock: no task writes now
        header = records[min(records)]
        for k, rec in sorted(records.items()):
            diff = differences(rec, header)
            if diff:
                raise OutputError(
                    f"cannot merge {directory}: {task_record_name(k)} and {task_record_name(min(records))} come "
                    f"from different runs; these differ: {'; '.join(diff)}. Nothing was written: delete the "
                    "output and run every task with one config"
                )
        count = header["task"]["count"]
        n_images = header["images"]["count"]
        shards = shard_ranges(n_images, header["shard_size"])
        final = Manifest.new(directory, {k: v for k, v in header.items() if k not in ("task", "attempts")}, shards)
        for rec in records.values():
            for s in rec.get("shards", []):
                if s.get("complete") and (directory / shard_name(s["index"])).exists():
                    final.entry(s["index"]).update(s)
        final.adopt_finished(write=False)  # shards renamed into place whose task died before recording them
        missing = [s for s in final.shards if not s.get("complete")]
        for s in final.shards:
            if s.get("complete"):
                on_disk = shard_record(directory / s["file"])
                if not on_disk or (
                    on_disk.get("index"),
                    on_disk.get("start"),
                    on_disk.get("stop"),
                    on_disk.get("rows"),
                ) != (s["index"], s["start"], s["stop"], s["rows"]):
                    s["complete"] = False
                    missing.append(s)
        if missing:
            missing.sort(key=lambda s: s["index"])
            tasks = sorted({owner(s["index"], count) for s in missing})
            array_sh = directory.with_name(directory.stem + ".slurm") / "array.sh"
            script = str(array_sh) if array_sh.exists() else "JOB_SCRIPT"
            at_most = 20
            names = _ranges(missing[:at_most]) + (
                f" and {len(missing) - at_most} more" if len(missing) > at_most else ""
            )
            raise OutputError(
                f"cannot merge {directory}: {len(missing)} of {len(shards)} shards are missing or incomplete: "
                f"{names}. They belong to task(s) {_indices(tasks)} of {count}: resubmit those array indices "
                f"(sbatch --array={_indices(tasks)} {script}; SGE/LSF indices are these plus 1), or run "
                f"`savedeep run CONFIG --task K/{count}` for each, then merge again. Nothing was written"
            )
        final.data["tasks"] = [
            {"index": k, "attempts": r.get("attempts", []), "summary": r.get("summary")}
            for k, r in sorted(records.items())
        ]
        final.data["merged"] = {"host": socket.gethostname(), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        cfg = header.get("config", {})
        want_pickle = cfg.get("pickle", True) if pickle is None else pickle
        devices = [d for r in records.values() for d in r.get("devices", [])]
        wall = max((r.get("summary", {}) or {}).get("wall_s", 0.0) for r in records.values())
        final.finish(
            devices=devices,
            wall_s=wall,
            pickle_path=pickle_path,
            pickle=want_pickle,
            max_pickle_bytes=int(cfg.get("max_pickle_bytes", 4 * 2**30)),
        )
    # The tasks leave the report to the merge (a task has a share of the rows only).
    report = _report_after_merge(directory) if cfg.get("report") else None
    return MergeResult(
        pickle=pickle_path if want_pickle else None,
        parquet_dir=directory,
        rows=final.rows(),
        failures=len(final.failures()),
        shards=len(shards),
        tasks=count,
        wall_s=time.perf_counter() - t0,
        report=report,
    )


def _report_after_merge(directory: Path) -> Path | None:
    """The report the tasks' config asked for; the merged output stands without it (a warning says how to add it)."""
    from savedeep.analysis.report import require_matplotlib, write_report

    try:
        require_matplotlib()
    except ConfigError as exc:
        log.warning(
            "the config asks for a report (report: true), but %s. The merged output is complete; after "
            "installing it, write the report with: savedeep report %s",
            exc,
            directory,
        )
        return None
    return write_report(directory)


__all__ = [
    "ARRAY_VARIABLES",
    "MergeResult",
    "TaskSpec",
    "check_records",
    "check_task_output",
    "job_id",
    "merge",
    "owner",
    "parse_task",
    "read_records",
    "task_from_env",
    "task_log",
    "task_record_name",
]
