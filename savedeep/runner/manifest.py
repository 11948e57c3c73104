"""The manifest of an output (``acts.parquet/_manifest.json``): a run's record of its shards.

NOTE [savedeep manifest]
========================

The manifest is the one file that says what an output holds. Only the parent
process changes it, always through :class:`Manifest`, and every change is
written atomically (savedeep/data/output.py, ``write_manifest``):

1. ``Manifest.new`` before any work is given out: the run's header
   (:func:`run_header`: config, fingerprints, model hashes, preprocessing, blobs,
   versions) and one entry per shard, all incomplete except the shards kept by
   ``--resume``;
2. ``record_shard`` each time a writer reports a shard renamed into place: one
   fsynced line appended to the manifest's journal (``_manifest.journal.jsonl``),
   not the whole file, so that recording a shard costs the same at shard 10 and
   at shard 10,000. The whole manifest (every shard's entry) is rewritten, and
   the journal deleted, only when the journal holds a quarter of the run's
   shards (and at least FOLD_AT lines): at most 4 rewrites in a run of N >= 256
   shards, so about 4 entries written per shard whatever N (one rewrite per
   shard wrote N/2 entries per shard on average), while the file alone lags by
   at most a quarter of the shards. ``read_manifest`` folds the journal in, so
   every reader and ``--resume`` see every shard recorded. The journal's lines
   carry the manifest's ``journal.id``, new for each attempt, so a journal left
   by an earlier attempt (a crash between a rewrite and the journal's deletion)
   is ignored, and a line cut short by a crash is ignored;
3. ``adopt_finished`` at shutdown and on ``--resume``: a shard renamed into
   place but never reported (the writer or the parent died in between) carries
   its own record in its Parquet metadata and is recorded from it;
4. ``finish`` once every shard is complete: the failures table, the devices,
   the summary, ``"complete": true``, then the pickle. A finished output has no
   journal: its manifest alone says everything, as before journals.

Nothing here needs a running pipeline: ``--resume``'s checks
(:meth:`Manifest.changes`), and a future merge of several tasks' outputs, use
this class alone.
"""

from __future__ import annotations

import logging
import platform
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from savedeep.errors import OutputError, WorkerError
from savedeep.data.output import (
    MANIFEST,
    append_journal,
    disk_errors,
    failures_path,
    journal_name,
    read_manifest,
    shard_name,
    shard_record,
    write_failures,
    write_manifest,
    write_pickle,
)
from savedeep.runner.faults import maybe_fail

log = logging.getLogger(__name__)

FORMAT = "savedeep/1"
FOLD_AT = 64  # journal lines before the manifest is rewritten whole: this, or a quarter of its shards if more


def shard_entry(index: int, start: int, stop: int) -> dict[str, Any]:
    """The manifest entry of a shard not written yet."""
    return {"index": index, "start": start, "stop": stop, "file": None, "rows": 0, "failures": [], "complete": False}


class Manifest:
    """An output's manifest: its content (``data``) and the only operations that change it."""

    def __init__(self, directory: Path, data: dict[str, Any], name: str = MANIFEST) -> None:
        self.directory = Path(directory)
        self.data = data
        self.name = name  # the file: the manifest, or a task's record (savedeep/runner/tasks.py)
        self.journaled = 0  # lines appended to the journal since the file was last written whole
        shards = data.get("shards") if isinstance(data, dict) else None  # is_valid() says if it is one
        self.fold_at = max(FOLD_AT, len(shards) // 4 if isinstance(shards, list) else 0)  # then written whole

    # -- making and reading ---------------------------------------------------------------
    @classmethod
    def new(
        cls,
        directory: Path,
        header: Mapping[str, Any],
        shards: Iterable[tuple[int, int, int]],
        kept: Mapping[int, dict[str, Any]] | None = None,
        name: str = MANIFEST,
    ) -> Manifest:
        """A manifest for ``shards`` (index, start, stop), with the entries of ``kept`` shards as they were."""
        entries = [dict(kept[k]) if kept and k in kept else shard_entry(k, a, z) for k, a, z in shards]
        data = {**header, "format": FORMAT, "complete": False, "shards": entries, "pickle": None}
        return cls(directory, {**data, "journal": new_journal(name)}, name)

    @classmethod
    def read(cls, directory: Path, name: str = MANIFEST) -> Manifest | None:
        """The manifest in ``directory``, or None if there is none (OutputError if it is not JSON)."""
        data = read_manifest(directory, name)
        return None if data is None else cls(directory, data, name)

    def is_valid(self) -> bool:
        """Whether this is a manifest of savedeep's current format (one that --resume can use)."""
        return (
            isinstance(self.data, dict)
            and self.data.get("format") == FORMAT
            and isinstance(self.data.get("shards"), list)
        )

    def write(self) -> None:
        """Replace the file atomically (and delete the journal, whose lines it now holds); a full disk is an
        OutputError that says how to go on."""
        with disk_errors(f"the manifest in {self.directory}"):
            write_manifest(self.directory, self.data, self.name)
        self.journaled = 0
        self.fold_at = max(FOLD_AT, len(self.shards) // 4)

    def fold(self) -> None:
        """Write the file whole if the journal holds lines it does not (at the end of an attempt)."""
        if self.journaled:
            self.write()

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.data["shards"]

    def entry(self, index: int) -> dict[str, Any]:
        """The entry of shard ``index`` (a task's record holds only some shards).

        A whole output's manifest lists every shard in order, so shard k is entry k: looked up
        in constant time, or recording 1,000 shards (a run, a merge) would scan the list 1,000 times.
        """
        shards = self.shards
        if 0 <= index < len(shards) and shards[index]["index"] == index:
            return shards[index]
        for s in shards:
            if s["index"] == index:
                return s
        raise KeyError(f"shard {index} is not in {self.directory / self.name}")

    def finished(self) -> set[int]:
        """The shards recorded complete whose file is in place."""
        return {
            s["index"] for s in self.shards if s.get("complete") and (self.directory / shard_name(s["index"])).exists()
        }

    def rows(self) -> int:
        return sum(s["rows"] for s in self.shards)

    def failures(self) -> list[dict[str, str]]:
        """Every image that could not be used, shard by shard: {"image", "reason"}."""
        return [f for s in self.shards for f in s["failures"]]

    # -- recording ------------------------------------------------------------------------
    def record_shard(self, index: int, file: str, rows: int, failures: Sequence[tuple[str, str]]) -> None:
        """Record that shard ``index`` is in place as ``file`` (a writer reported it): one line in the journal,
        fsynced before this returns; the whole file now and then (NOTE [savedeep manifest])."""
        entry = self.entry(index)
        entry.update(file=file, rows=rows, complete=True, failures=[{"image": k, "reason": r} for k, r in failures])
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        journal = self.data.get("journal")
        if not isinstance(journal, dict):  # read from a manifest without one: give it one, written whole first
            self.data["journal"] = new_journal(self.name)
            self.write()
            return
        line = {k: entry[k] for k in ("index", "file", "rows", "failures")}
        with disk_errors(f"the manifest's journal in {self.directory}"):
            append_journal(self.directory, {**line, "id": journal["id"], "updated": self.data["updated"]}, self.name)
        self.journaled += 1
        maybe_fail("manifest", 0, index)  # the tests' crash between the journal's line and the next rewrite
        if self.journaled >= self.fold_at:
            self.write()

    def adopt_finished(self, write: bool = True) -> list[int]:
        """Record the shards that were renamed into place but never reported; return their indices.

        A writer renames a shard only once it is complete, with its own record (rows,
        failures) in its metadata; if the writer or the parent died before the parent
        heard of it, the shard is adopted here instead of being computed again.
        """
        adopted = []
        for entry in self.shards:
            if entry.get("complete"):
                continue
            path = self.directory / shard_name(entry["index"])
            rec = shard_record(path) if path.exists() else None
            if rec and (rec.get("index"), rec.get("start"), rec.get("stop")) == (
                entry["index"],
                entry["start"],
                entry["stop"],
            ):
                entry.update(file=path.name, rows=rec["rows"], failures=rec["failures"], complete=True)
                adopted.append(entry["index"])
        if adopted and write:
            log.info("recorded %d finished shard(s) that had not been reported: %s", len(adopted), adopted)
            self.write()
        return adopted

    # -- resuming -------------------------------------------------------------------------
    def changes(self, config: Any, hashes: Callable[[], dict[str, str]], keys_digest: str, n_images: int) -> list[str]:
        """What differs between the run that wrote this manifest and ``config`` (empty: it can be resumed)."""
        from savedeep.config import RESULT_KEYS, recorded_result_fingerprint

        changed = []
        # Recomputed from the recorded config: an output of an earlier savedeep compares in today's form.
        if recorded_result_fingerprint(self.data) != config.result_fingerprint():
            old, new = self.data.get("config", {}), config.canonical()
            diff = [k for k in RESULT_KEYS if old.get(k) != new.get(k)]
            changed.append("config keys " + ", ".join(diff or ["(fingerprint)"]))
        if self.data.get("model", {}).get("sha256") != hashes():
            old = self.data.get("model", {}).get("sha256", {})
            changed.append("model files " + ", ".join(k for k in hashes() if old.get(k) != hashes()[k]))
        if self.data.get("images", {}).get("keys_sha256") != keys_digest:
            changed.append(f"the image list ({self.data.get('images', {}).get('count')} images then, {n_images} now)")
        return changed

    def tidy_for_resume(self, keep: set[int], pickle_path: Path) -> dict[int, dict[str, Any]]:
        """Delete what an interrupted attempt left besides the ``keep`` shards; return their entries.

        Unreported finished shards are adopted first. The pickle and the failures table
        go too: both are rewritten whole when the run completes.
        """
        self.adopt_finished()
        for f in self.directory.iterdir():
            if f.name.startswith((".part-", "part-")) and not any(f.name == shard_name(k) for k in keep):
                f.unlink()
        Path(pickle_path).unlink(missing_ok=True)
        failures_path(self.directory).unlink(missing_ok=True)
        return {s["index"]: s for s in self.shards if s["index"] in keep}

    # -- finishing ------------------------------------------------------------------------
    def finish(
        self, *, devices: list[dict[str, Any]], wall_s: float, pickle_path: Path, pickle: bool, max_pickle_bytes: int
    ) -> None:
        """Mark the output complete (every shard must be), then write the pickle if asked (last)."""
        with disk_errors(f"the final output in {self.directory}"):
            self._finish(devices, wall_s, pickle_path, pickle, max_pickle_bytes)

    def _finish(self, devices, wall_s, pickle_path, pickle, max_pickle_bytes) -> None:
        incomplete = [s["index"] for s in self.shards if not s.get("complete")]
        if incomplete:
            raise WorkerError(f"the writer ended but shards {incomplete} are not complete (a bug); rerun with --resume")
        failures = self.failures()
        m = self.data
        m["failures_table"] = write_failures(self.directory, failures).name
        m["devices"] = devices  # provenance: GPU name, UUID, driver, CUDA runtime, cuDNN on a GPU
        m["complete"] = True
        m["failures"] = failures
        m["summary"] = {"rows": self.rows(), "failures": len(failures), "wall_s": round(wall_s, 3)}
        m["pickle"] = {"path": str(pickle_path), "status": "pending" if pickle else "disabled"}
        write_manifest(self.directory, m)
        self.journaled = 0
        if pickle:
            try:
                write_pickle(self.directory, Path(pickle_path), max_pickle_bytes)
                m["pickle"]["status"] = "written"
            except OutputError:
                m["pickle"]["status"] = "refused: above max_pickle_bytes"
                write_manifest(self.directory, m)
                raise
            write_manifest(self.directory, m)
        log.info("done: %d rows, %d failures", m["summary"]["rows"], len(failures))


def new_journal(name: str = MANIFEST) -> dict[str, str]:
    """The ``journal`` entry of a manifest written for a new attempt: its file and an id that no other has."""
    return {"file": journal_name(name), "id": uuid.uuid4().hex}


def adopt_finished_shards(directory: Path, manifest: dict[str, Any], write: bool = True) -> list[int]:
    """:meth:`Manifest.adopt_finished` on a manifest's dict (changed in place)."""
    return Manifest(directory, manifest).adopt_finished(write)


# --------------------------------------------------------------------------- a run's header


def versions(engine: str) -> dict[str, str]:
    """The versions of Python, the platform and the packages that shape the output."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in (
        "savedeep",
        "numpy",
        "pandas",
        "pyarrow",
        "opencv-python-headless",
        "pillow",
        "simplejpeg",
        "torch" if engine == "torch" else "caffe",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def run_header(config: Any, pf: Any) -> dict[str, Any]:
    """What a run records about itself: ``config`` and what its preflight ``pf`` read (savedeep.runner.preflight)."""
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config.canonical(),
        "config_fingerprint": config.fingerprint(),
        "result_fingerprint": config.result_fingerprint(),
        "model": {"directory": str(config.model), "sha256": pf.model_hashes, "input_shape": list(pf.input_shape)},
        "images": {
            "source": str(config.images),
            "count": len(pf.images),
            "keys_sha256": pf.keys_digest,
            "skipped_by_extension": pf.images.skipped,
        },
        "preprocess": pf.preprocess_desc,
        "engine": config.engine,
        "blobs": pf.blob_info,
        "blob_order": [c.name for c in pf.columns],
        "metadata_columns": list(pf.images.metadata),
        "versions": versions(config.engine),
        "shard_size": config.shard_size,
    }


__all__ = [
    "FOLD_AT",
    "FORMAT",
    "MANIFEST",
    "Manifest",
    "adopt_finished_shards",
    "new_journal",
    "run_header",
    "shard_entry",
    "versions",
]
