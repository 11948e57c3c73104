"""``savedeep report``: one self-contained HTML page about an output.

The page has no network reference: styles are inline, plots are PNG data URIs
drawn by matplotlib (Agg), thumbnails are JPEG data URIs, and the numbers are
also embedded as JSON (``<script type="application/json" id="savedeep-data">``,
data, not code; NaN written as null). It reads the same from a cluster's scratch directory or a copy.

- **The run** comes from the manifest and the run log only: nothing is
  recomputed. Duration, images/s and each stage's busy fraction are the run's
  own figures, written to the run log as one ``summary:`` line by
  :func:`record_summary` when ``savedeep run`` (or ``savedeep.run``) finishes.
- **Per blob**: :func:`savedeep.analysis.stats.blob_stats` (streamed, bounded memory).
- **Geometry**: :func:`savedeep.analysis.stats.rdm_of` on a seeded subsample of at most
  ``max_images`` rows, the same rows for every blob, and the blob-by-blob
  similarity of those RDMs.
- **Top images**: thumbnails from the image source, if it is still readable.

Written under a hidden temporary name and renamed when complete.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import savedeep.analysis.stats as st
from savedeep.errors import ConfigError, OutputError
from savedeep.data.output import RUN_LOG_LINE, RUN_LOG_SUFFIX, SavedOutput, beside, default_destination, run_log_line

log = logging.getLogger(__name__)

GENERATOR = "savedeep report"  # in the page's <meta name="generator">: how --overwrite knows the page is savedeep's
SUMMARY_TAG = "summary: "
THUMB_PX = 72
FAILURES_SHOWN = 200
LOG_LINES_SHOWN = 50
_OVERFLOW = re.compile(r"float16 blobs with values stored as inf or NaN .*?: (.*?); store these blobs")


def require_matplotlib() -> None:
    """Import matplotlib or stop with the install command of the ``report`` extra."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(
            "savedeep report needs matplotlib, which is not installed: pip install 'savedeep[report]'"
        ) from None


# --------------------------------------------------------------------------- the run log


def record_summary(log_file: Path | None, result: Any) -> None:
    """Append the run's own figures (a RunResult) to its run log, as one line in the log's format."""
    if log_file is None or not Path(log_file).exists():
        return
    summary = {
        "images": result.images,
        "rows": result.rows,
        "failures": result.failures,
        "wall_s": round(result.wall_s, 3),
        "images_per_s": round(result.images_per_s, 3),
        "steady_images_per_s": (
            None if result.steady_images_per_s() is None else round(result.steady_images_per_s(), 3)
        ),
        "busy": {k: round(v, 4) for k, v in result.busy.items()},
        "devices": list(result.devices),
        "producers": result.producers,
        "writers": result.writers,
        "shards_kept": result.shards_kept,
    }
    line = run_log_line("savedeep.run", logging.INFO, SUMMARY_TAG + json.dumps(summary, sort_keys=True))
    with open(log_file, "a") as f:
        f.write(line + "\n")


def read_log(path: Path) -> dict[str, Any]:
    """What the report takes from a run log: the last summary, float16 overflows, warnings and errors."""
    out: dict[str, Any] = {
        "path": str(path),
        "found": path.is_file(),
        "summary": None,
        "overflows": [],
        "problems": [],
        "lines": 0,
        "first": None,
        "last": None,
    }
    if not out["found"]:
        return out
    records: list[list[str]] = []
    with open(path, errors="replace") as f:
        for line in f:
            m = RUN_LOG_LINE.fullmatch(line.rstrip("\n"))
            if m:
                records.append(list(m.groups()))
            elif records:  # a traceback or a message over several lines
                records[-1][4] += "\n" + line.rstrip("\n")
    out["lines"] = len(records)
    if records:
        out["first"], out["last"] = records[0][0], records[-1][0]
    for stamp, proc, name, level, msg in records:
        if name == "savedeep.run" and msg.startswith(SUMMARY_TAG):
            try:
                out["summary"] = json.loads(msg[len(SUMMARY_TAG) :])
            except ValueError:
                pass
            continue
        m = _OVERFLOW.search(msg)
        if m:
            out["overflows"].append({"time": stamp, "process": proc, "blobs": m.group(1)})
        if level in ("WARNING", "ERROR", "CRITICAL"):
            out["problems"].append({"time": stamp, "process": proc, "level": level, "message": msg})
    return out


def _log_path(directory: Path, manifest: dict[str, Any]) -> Path:
    recorded = manifest.get("config", {}).get("log_file")
    if recorded and Path(recorded).exists():
        return Path(recorded)
    return beside(directory, RUN_LOG_SUFFIX)


# --------------------------------------------------------------------------- plots


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def plot_histogram(s: st.BlobStats) -> str:
    fig = _figure(5, 2.6)
    ax = fig.add_subplot()
    counts = s.hist_counts.astype(float)
    ax.stairs(counts, s.hist_edges, fill=True, color="#4c72b0")
    if counts.max() > 0 and counts[counts > 0].min() * 50 < counts.max():
        ax.set_yscale("log")
    ax.set_xlabel(f"{s.blob}: activation")
    ax.set_ylabel("values")
    ax.set_title(f"all {s.values:,} values", fontsize=9)
    return _png(fig)


def plot_unit_means(s: st.BlobStats) -> str:
    fig = _figure(5, 2.6)
    ax = fig.add_subplot()
    m = s.unit_mean[np.isfinite(s.unit_mean)]
    ax.hist(m, bins=min(60, max(5, len(m))), color="#55a868")
    ax.set_xlabel("mean over the images, per unit")
    ax.set_ylabel("units")
    ax.set_title(f"{s.units:,} units", fontsize=9)
    return _png(fig)


def plot_matrix(
    matrix: np.ndarray,
    labels: Sequence[str],
    title: str,
    groups: Sequence[str] | None = None,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool = False,
) -> str:
    n = len(matrix)
    side = 4.2 if n > 8 else 3.6
    fig = _figure(side + 1.1, side)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if groups is not None:
        bounds = [i for i in range(1, n) if groups[i] != groups[i - 1]]
        for b in bounds:
            ax.axhline(b - 0.5, color="white", lw=1.2)
            ax.axvline(b - 0.5, color="white", lw=1.2)
        starts = [0, *bounds]
        ends = [*bounds, n]
        centers = [(a + b - 1) / 2 for a, b in zip(starts, ends)]
        names = [groups[a] for a in starts]
        ax.set_xticks(centers, names, rotation=90, fontsize=7)
        ax.set_yticks(centers, names, fontsize=7)
    elif n <= 40:
        ax.set_xticks(range(n), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(n), labels, fontsize=6)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if annotate and n <= 12:
        for i in range(n):
            for j in range(n):
                if np.isfinite(matrix[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{matrix[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if matrix[i, j] < 0.5 else "black",
                    )
    ax.set_title(title, fontsize=9)
    return _png(fig)


def _thumbnail(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB_PX, THUMB_PX))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    except Exception:  # noqa: BLE001 - moved, deleted or unreadable: the page says so
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _image_file(source: Path, key: str) -> Path:
    if Path(key).is_absolute():
        return Path(key)
    return (source if source.is_dir() else source.parent) / key


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:1em 1.5em}
h1{font-size:1.5em;margin:.3em 0}h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
h3{margin:.8em 0 .3em}section.blob{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em;
margin:1em 0}table{border-collapse:collapse;font-size:.9em;margin:.4em 0}td,th{border:1px solid #ddd;
padding:.2em .5em;text-align:left;vertical-align:top}th{background:#f0f0f0}td.num{text-align:right;
font-variant-numeric:tabular-nums}.banner{padding:.6em 1em;border-radius:6px;margin:.6em 0;font-weight:bold}
.complete{background:#e3f4e1;border:1px solid #8c8}.partial{background:#fdecea;border:1px solid #d88}
.plots{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}.plots img{max-width:100%}
.tops{display:flex;flex-wrap:wrap;gap:.3em;align-items:flex-end}figure{margin:0;text-align:center;
font-size:.7em;max-width:80px;overflow-wrap:anywhere}pre{background:#f4f4f4;padding:.6em;overflow:auto;
max-height:24em;font-size:.8em}.note{color:#555;font-size:.9em}code{font-size:.9em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(x: Any, fmt: str = ".4g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, fmt) if isinstance(x, (int, float)) else str(x)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None, cls: str = "") -> str:
    out = [f'<table class="{_e(cls)}">' if cls else "<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _kv(rows: Sequence[tuple[str, str]], cls: str = "") -> str:
    return _table([(f"<b>{_e(k)}</b>", v) for k, v in rows], cls=cls)


def _img(src: str, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" alt="{_e(alt)}" src="{src}">'


def _failures(directory: Path, manifest: dict[str, Any], complete_shards: list[dict]) -> list[dict[str, str]]:
    if manifest.get("complete") and "failures" in manifest:
        return list(manifest["failures"])
    return [f for s in complete_shards for f in s.get("failures", [])]


def _run_section(directory: Path, manifest: dict[str, Any], logd: dict[str, Any], n_rows: int) -> tuple[str, dict]:
    shards = manifest.get("shards", [])
    done = [s for s in shards if s.get("complete")]
    complete = bool(manifest.get("complete"))
    failures = _failures(directory, manifest, done)
    summary = logd["summary"] or {}
    model = manifest.get("model", {})
    devices = manifest.get("devices") or []
    wall = summary.get("wall_s", manifest.get("summary", {}).get("wall_s"))
    data = {
        "complete": complete,
        "shards_complete": len(done),
        "shards": len(shards),
        "images": manifest.get("images", {}).get("count"),
        "rows": n_rows,
        "failures": len(failures),
        "wall_s": wall,
        "images_per_s": summary.get("images_per_s"),
        "steady_images_per_s": summary.get("steady_images_per_s"),
        "busy": summary.get("busy"),
        "overflows": logd["overflows"],
        "engine": manifest.get("engine"),
        "model_sha256": model.get("sha256", {}),
    }
    parts = []
    if complete:
        parts.append(
            f'<div class="banner complete" id="status">Complete: all {len(shards)} shard(s) written, '
            f"{n_rows} rows.</div>"
        )
    else:
        parts.append(
            f'<div class="banner partial" id="status">Partial output: the run did not complete. '
            f"{len(done)} of {len(shards)} shard(s) are complete; this page shows their {n_rows} rows. "
            "Finish it with <code>savedeep run --resume</code>.</div>"
        )
    dev_text = "; ".join(", ".join(f"{k}={v}" for k, v in d.items() if k != "pid") for d in devices) or (
        "-" if complete else "not recorded (recorded when the run completes)"
    )
    busy = summary.get("busy")
    not_logged = "not recorded in the run log (written when <code>savedeep run</code> finishes)"
    rows = [
        ("model", _e(model.get("directory", "-"))),
        (
            "model sha256",
            "<br>".join(f"<code>{_e(k)}</code>: <code>{_e(v)}</code>" for k, v in model.get("sha256", {}).items())
            or "-",
        ),
        ("input shape", _e(model.get("input_shape", "-"))),
        ("engine", _e(manifest.get("engine", "-"))),
        ("devices", _e(dev_text)),
        ("image source", _e(manifest.get("images", {}).get("source", "-"))),
        ("images", _e(manifest.get("images", {}).get("count", "-"))),
        ("rows", _e(n_rows)),
        ("failures", _e(len(failures))),
        ("shards", _e(f"{len(done)} of {len(shards)} complete")),
        ("duration", _e(f"{wall:.1f} s") if wall is not None else not_logged),
        (
            "images/s",
            (
                _e(f"{summary['images_per_s']:.1f}")
                + (_e(f" (steady: {summary['steady_images_per_s']:.1f})") if summary.get("steady_images_per_s") else "")
            )
            if summary.get("images_per_s") is not None
            else not_logged,
        ),
        ("busy fraction per stage", ", ".join(f"{_e(k)} {v:.0%}" for k, v in busy.items()) if busy else not_logged),
        (
            "float16 overflows",
            "<br>".join(_e(o["blobs"]) for o in logd["overflows"])
            or ("none reported in the run log" if logd["found"] else "run log not found"),
        ),
        ("created", _e(manifest.get("created", "-"))),
        ("savedeep", _e(manifest.get("versions", {}).get("savedeep", "-"))),
        ("run log", _e(logd["path"]) + ("" if logd["found"] else " (not found)")),
    ]
    parts.append(_kv(rows, cls="run"))
    parts.append(f'<h3 id="failures">Failures ({len(failures)})</h3>')
    if failures:
        shown = failures[:FAILURES_SHOWN]
        parts.append(
            _table([(_e(f.get("image")), _e(f.get("reason"))) for f in shown], ["image", "reason"], cls="failures")
        )
        if len(failures) > len(shown):
            parts.append(
                f'<p class="note">The first {len(shown)} of {len(failures)}; all are in '
                f"{_e(manifest.get('failures_table', 'the failures table'))}.</p>"
            )
    else:
        parts.append('<p class="note">No image failed.</p>')
    if logd["problems"]:
        shown = logd["problems"][-LOG_LINES_SHOWN:]
        parts.append(f"<h3>Warnings and errors in the run log ({len(logd['problems'])})</h3>")
        parts.append(
            "<pre>"
            + "\n".join(_e(f"{p['time']} {p['process']} {p['level']}: {p['message']}") for p in shown)
            + "</pre>"
        )
    parts.append(
        '<details class="config"><summary><b>Config</b> (as the manifest records it)</summary><pre>'
        + _e(json.dumps(manifest.get("config", {}), indent=1))
        + "</pre></details>"
    )
    return "\n".join(parts), data


def build_report(
    path: Path | str,
    blobs: Sequence[str] | str | None = None,
    group_by: str | None = None,
    max_images: int = st.DEFAULT_MAX_IMAGES,
    seed: int = st.DEFAULT_SEED,
    thumbnails: bool = True,
) -> tuple[str, dict[str, Any]]:
    """(the page's HTML, the numbers it shows) for an output."""
    require_matplotlib()
    src = SavedOutput.open(Path(path))
    names = src.select(blobs)
    manifest = src.manifest
    if group_by is not None and group_by not in src.metadata_columns:
        have = ", ".join(src.metadata_columns) or "none (the images were not given as a CSV list)"
        raise ConfigError(
            f"--group-by {group_by}: {src.directory} has no metadata column {group_by!r}; its columns: {have}"
        )
    logd = read_log(_log_path(src.directory, manifest))
    run_html, run_data = _run_section(src.directory, manifest, logd, src.n)

    rows = st.subsample(src.n, max_images, seed)
    keys, meta = src.index(rows, [group_by] if group_by else [])
    if group_by:
        order = sorted(range(len(rows)), key=lambda i: (meta[group_by][i], keys[i]))
    else:
        order = sorted(range(len(rows)), key=lambda i: keys[i])
    order_a = np.asarray(order, np.int64)
    ordered_keys = [keys[i] for i in order]
    groups = [meta[group_by][i] for i in order] if group_by else None
    sub_note = (
        f"all {src.n} images"
        if len(rows) == src.n
        else f"a random subsample of {len(rows)} of the {src.n} images (numpy.random.default_rng({seed}), "
        f"without replacement; --max-images {max_images}, --seed {seed}), the same images for every blob"
    )

    source = Path(manifest.get("images", {}).get("source", ""))
    blob_html, blob_data, rdms = [], {}, {}
    top_needed: set[int] = set()
    all_stats = {}
    for b in names:
        s = st.blob_stats(src, b)
        all_stats[b] = s
        for u in s.top_units:
            top_needed.update(r for r, _ in s.top_rows.get(u, []))
        m = st.rdm_of(st.read_rows(src, b, rows))
        rdms[b] = m[np.ix_(order_a, order_a)] if len(order_a) else m
    top_list = sorted(top_needed)
    top_keys = dict(zip(top_list, src.index(top_list, [])[0]))
    thumbs: dict[int, str | None] = {}
    source_ok = thumbnails and source.exists()
    for r in top_list:
        thumbs[r] = _thumbnail(_image_file(source, top_keys[r])) if source_ok else None

    for b in names:
        s = all_stats[b]
        info = src.info(b)
        spread = s.unit_mean_spread()
        d = s.to_dict()
        d["stored_shape"] = list(info["shape"])
        d["blob_shape"] = info.get("blob_shape", info["shape"])
        d["reduce"] = info.get("reduce")
        blob_data[b] = d
        rd = info.get("reduce") or {}
        kind = rd.get("kind", "none")
        if kind == "none":
            reduce_text = "none (the whole blob)"
        elif kind == "pool":
            reduce_text = (
                f"{rd.get('pool')} pool to a {rd.get('grid')}x{rd.get('grid')} grid"
                if rd.get("grid")
                else f"{rd.get('pool')} pool, one value per channel"
            )
        elif kind == "project":
            reduce_text = f"random projection to {tuple(rd.get('out_shape', info['shape']))}"
        else:
            reduce_text = f"{kind} to {tuple(rd.get('out_shape', info['shape']))}"
        stat_rows = [
            ("stored shape", _e(tuple(info["shape"]))),
            ("blob shape", _e(tuple(d["blob_shape"]))),
            ("reduction", _e(reduce_text)),
            ("dtype", _e(info["dtype"])),
            ("units", f"{s.units:,}"),
            ("images", f"{s.images:,}"),
            ("min / mean / max", _e(f"{_num(s.min)} / {_num(s.mean)} / {_num(s.max)}")),
            ("standard deviation", _e(_num(s.std))),
            ("exact zeros", f'<span class="zero-fraction">{s.zero_fraction:.2%}</span> ({s.zeros:,} values)'),
            (
                "dead units (never above 0)",
                f'<span class="dead-units">{s.dead_units:,}</span> ({s.dead_fraction:.1%} of the units)',
            ),
            (
                "per-unit means",
                _e(
                    "min {min:.4g}, 5% {p5:.4g}, median {median:.4g}, 95% {p95:.4g}, max {max:.4g}; "
                    "sd {std:.4g}".format(**spread)
                ),
            ),
            ("not finite (float16 overflow)", _e(f"{s.nonfinite:,}")),
        ]
        rdm_img = plot_matrix(rdms[b], ordered_keys, f"{b}: 1 - Pearson r", groups=groups, vmin=0)
        tops = []
        for u in s.top_units:
            figs = []
            for r, v in s.top_rows.get(u, []):
                key = top_keys[r]
                t = thumbs.get(r)
                pic = _img(t, key, "thumb") if t else '<span class="note">(no image)</span>'
                figs.append(
                    f'<figure title="{_e(key)}">{pic}<figcaption>{_e(key.rsplit("/", 1)[-1])}<br>{v:.3g}'
                    "</figcaption></figure>"
                )
            idx = s.unit_index(u)
            tops.append(
                f'<div class="unit"><b>unit {_e(idx)}</b> (sd {s.unit_std[u]:.3g})'
                f'<div class="tops">{"".join(figs)}</div></div>'
            )
        unread = sorted({r for u in s.top_units for r, _ in s.top_rows.get(u, []) if thumbs.get(r) is None})
        if not source_ok:
            why = "not asked for" if not thumbnails else f"the image source {source} is not readable from here"
            tops.insert(0, f'<p class="note thumbs-skipped">No thumbnails: {_e(why)}.</p>')
        elif unread:
            tops.insert(
                0,
                f'<p class="note thumbs-skipped">No thumbnails for {len(unread)} image(s): they could '
                f"not be read from {_e(source)} (moved or deleted since the run?).</p>",
            )
        blob_html.append(
            f'<section class="blob" id="blob-{_e(b)}" data-blob="{_e(b)}"><h3>{_e(b)}</h3>'
            f'<div class="stats">{_kv(stat_rows, cls="stats")}</div>'
            f'<div class="plots"><div class="histogram">{_img(plot_histogram(s), b + " histogram")}</div>'
            f'<div class="unit-means">{_img(plot_unit_means(s), b + " per-unit means")}</div>'
            f'<div class="rdm">{_img(rdm_img, b + " RDM")}</div></div>'
            f'<div class="top-images"><h4>Images that drive the most variable units most</h4>{"".join(tops)}</div>'
            "</section>"
        )

    sim = st.similarity_of(rdms) if rdms else np.zeros((0, 0))
    sim_img = (
        plot_matrix(sim, names, "blob x blob: Pearson r of the RDMs", cmap="magma", vmin=-1, vmax=1, annotate=True)
        if len(names)
        else ""
    )
    sim_table = _table(
        [
            [
                f"<b>{_e(a)}</b>",
                *(
                    f'<span class="num">{sim[i, j]:.3f}</span>' if np.isfinite(sim[i, j]) else "n/a"
                    for j in range(len(names))
                ),
            ]
            for i, a in enumerate(names)
        ],
        ["", *names],
        cls="similarity",
    )
    constant = [b for b in names if st.constant_rdm(rdms[b])]
    if constant:
        sim_table += (
            f'<p class="note">n/a: the RDM of {_e(", ".join(constant))} is constant (a blob of two '
            "units has 1 - r = 0 or 2 for every pair of images), so its correlation with another RDM is "
            "undefined.</p>"
        )
    data = {
        "format": "savedeep-report/1",
        "output": str(src.directory),
        "run": run_data,
        "blobs": blob_data,
        "geometry": {
            "metric": "correlation",
            "images": len(rows),
            "of": src.n,
            "seed": seed,
            "max_images": max_images,
            "group_by": group_by,
            "keys": ordered_keys,
            "groups": groups,
            "blob_similarity": sim.tolist(),
            "blob_order": names,
        },
    }
    title = f"savedeep report: {src.directory}"
    group_note = (
        f"Images are ordered by <code>{_e(group_by)}</code>, then by key; white lines mark the groups."
        if group_by
        else "Images are ordered by key."
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<meta name="generator" content="{GENERATOR}">
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,"><style>{_CSS}</style></head>
<body><main>
<h1>savedeep report</h1>
<p class="note">{_e(src.directory)} &middot; written {_e(time.strftime("%Y-%m-%d %H:%M:%S %Z"))}
&middot; blobs: {_e(", ".join(names))}</p>
<section id="run"><h2>The run</h2>
<p class="note">From the manifest and the run log; nothing here is recomputed.</p>
{run_html}</section>
<section id="geometry"><h2>Representational geometry</h2>
<p class="note">RDM: 1 - Pearson correlation between the images' activation vectors, over {_e(sub_note)}.
{group_note} Blob similarity: Pearson correlation between the blobs' RDMs (upper triangles).</p>
<div class="plots"><div class="similarity">{_img(sim_img, "blob similarity") if sim_img else ""}</div>
<div>{sim_table}</div></div></section>
<section id="blobs"><h2>Per blob</h2>
<p class="note">A unit is one element of the stored tensor. Dead: never above zero on any image.
Statistics over every row, streamed shard by shard; RDMs as above.</p>
{"".join(blob_html)}</section>
<script type="application/json" id="savedeep-data">{_json_for_html(data)}</script>
</main></body></html>
"""
    return page, data


def _strict(value: Any) -> Any:
    """JSON that JSON.parse reads: NaN and infinities become null."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _json_for_html(data: Any) -> str:
    text = json.dumps(_strict(data), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def write_report(
    path: Path | str,
    dest: Path | str | None = None,
    blobs: Sequence[str] | str | None = None,
    group_by: str | None = None,
    max_images: int = st.DEFAULT_MAX_IMAGES,
    seed: int = st.DEFAULT_SEED,
    thumbnails: bool = True,
) -> Path:
    """Write the report of an output to ``dest`` (default ``out/acts.report.html``); returns its path."""
    from savedeep.data.output import atomic_write_bytes

    dest = Path(dest) if dest is not None else default_destination(path, "report")
    if dest.is_dir():
        raise OutputError(f"{dest} is a folder; give the report's file name with -o, e.g. {dest / 'report.html'}")
    page, _ = build_report(path, blobs, group_by, max_images, seed, thumbnails)
    if not dest.parent.is_dir():
        raise OutputError(
            f"cannot write {dest}: the folder {dest.parent} does not exist; create it or choose another -o"
        )
    atomic_write_bytes(dest, page.encode("utf-8"))
    return dest


def after_run(config: Any, result: Any) -> Path | None:
    """What ``savedeep run`` does once a run finished: its summary into the run log; the report if asked."""
    record_summary(config.log_file, result)
    if getattr(config, "report", False):
        return write_report(config.output)
    return None
