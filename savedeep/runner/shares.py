"""The share of the output a run writes: the whole output, or one array task's shards of it.

:class:`~savedeep.runner.pipeline.Run` is the same for both; what differs is here, behind one small
interface: the log file, what to do with an existing output (delete it, tidy it for ``--resume``, or
tidy only this task's shards), the manifest (the output's, or this task's record beside the others',
checked against them) and its finish. NOTE [savedeep tasks] in savedeep/runner/tasks.py says how tasks
share an output.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from savedeep.errors import OutputError
from savedeep.runner.manifest import Manifest, run_header

log = logging.getLogger(__name__)


class WholeOutput:
    """A run that owns the whole output (no ``--task``)."""

    task: Any = None  # TaskShare: its savedeep.runner.tasks.TaskSpec
    lock_index: int | None = None

    def log_file(self, log_file: Path | None) -> Path | None:
        return log_file

    def announce(self) -> None:
        pass

    def take(self, config: Any, pf: Any, pq_dir: Path, overwrite: bool) -> dict[int, dict]:
        """Act on the preflight's verdict on the existing output: delete it (--overwrite) or tidy it for
        --resume. The shards kept (their manifest entries)."""
        from savedeep.data.output import remove_output

        if not pf.output_exists:
            return {}
        if overwrite:
            remove_output(Path(config.output), pq_dir, config.log_file)
            return {}
        manifest = Manifest.read(pq_dir)
        assert manifest is not None  # preflight refuses to resume an output without one
        return manifest.tidy_for_resume(set(pf.keep), Path(config.output))

    def images(self, pf: Any) -> int:
        return len(pf.images)

    def pickle(self, config: Any) -> Path | None:
        return Path(config.output) if config.pickle else None

    def create_manifest(self, config: Any, pf: Any, pq_dir: Path, resumed: dict[int, dict]) -> Manifest:
        manifest = Manifest.new(pq_dir, run_header(config, pf), pf.plan.shards, resumed)
        manifest.write()
        return manifest

    def finish(self, manifest: Manifest, config: Any, devices: list[dict], wall_s: float) -> None:
        manifest.finish(
            devices=devices,
            wall_s=wall_s,
            pickle_path=Path(config.output),
            pickle=config.pickle,
            max_pickle_bytes=config.max_pickle_bytes,
        )

    def stopped(self, manifest: Manifest) -> None:
        pass  # the manifest says which shards are done; --resume completes it


class TaskShare(WholeOutput):
    """One array task (``--task K/N``): its shards of a shared output, its own record, its own log file."""

    def __init__(self, task: Any) -> None:
        self.task = task  # savedeep.runner.tasks.TaskSpec
        self.lock_index = task.index
        self.previous_record: dict | None = None  # this task's record from an earlier attempt

    def log_file(self, log_file: Path | None) -> Path | None:
        from savedeep.runner.tasks import task_log

        return None if log_file is None else task_log(log_file, self.task.index)  # no two tasks write one file

    def announce(self) -> None:
        t = self.task
        log.info(
            "%s (the index from %s); its shards: those k with k %% %d == %d", t.describe(), t.source, t.count, t.index
        )

    def take(self, config: Any, pf: Any, pq_dir: Path, overwrite: bool) -> dict[int, dict]:
        from savedeep.runner.tasks import tidy_task

        if not pq_dir.is_dir():
            return {}
        previous = Manifest.read(pq_dir, self.task.record_name)
        self.previous_record = previous.data if previous else None
        return tidy_task(pq_dir, self.task, set(pf.keep))

    def images(self, pf: Any) -> int:
        return sum(z - a for k, a, z in pf.plan.shards if self.task.owns(k))

    def pickle(self, config: Any) -> Path | None:
        return None  # the merge writes it, once every task is done

    def create_manifest(self, config: Any, pf: Any, pq_dir: Path, resumed: dict[int, dict]) -> Manifest:
        from savedeep.runner.tasks import check_records, task_header

        task = self.task
        header = task_header(run_header(config, pf), task, self.previous_record)
        mine = [s for s in pf.plan.shards if task.owns(s[0])]
        manifest = Manifest.new(pq_dir, header, mine, resumed, name=task.record_name)
        manifest.write()
        try:  # a task of another run that started at the same time: at least one of the two sees the other
            check_records(pq_dir, header, task)
        except OutputError:
            if self.previous_record is None:
                (pq_dir / task.record_name).unlink(missing_ok=True)
            raise
        return manifest

    def finish(self, manifest: Manifest, config: Any, devices: list[dict], wall_s: float) -> None:
        from savedeep.runner.tasks import finish_task

        finish_task(manifest, devices=devices, wall_s=wall_s)

    def stopped(self, manifest: Manifest) -> None:
        from savedeep.runner.tasks import mark_stopped

        if not manifest.data.get("complete"):
            mark_stopped(manifest)
