"""Shared helpers of the benchmarks: models, images, a memory sampler, the machine, tables and files.

Everything the benchmarks make goes under ``benchmarks/out/`` (gitignored):

- ``out/models/caffenet``: CaffeNet (tests/data's deploy.prototxt) with seeded random weights
  (``savedeep.caffe.synthetic.random_weights(seed=1)``, as tests/conftest.py builds it) and the
  ILSVRC-2012 mean image;
- ``out/models/nsfw``: the real open_nsfw model (``savedeep.demo.prepare_model``);
- ``out/images/all/img_NNNNN.jpg``: up to 4,000 JPEGs of about 500x375, made by cropping and
  resizing the real photos (tests/data's and scikit-image's) with a fixed seed; and
  ``out/images/list_N.txt``, the first N of them, as savedeep image lists.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The deploy definitions, the ILSVRC-2012 mean and the photos the repo carries (tests/data/README.md).
TESTDATA = ROOT / "tests" / "data"
# The open_nsfw model directory packed by benchmarks/gpu_pack.sh for a machine without the set-up.
PACKED_NSFW = ROOT / ".gpu" / "nsfw"
OUT = ROOT / "benchmarks" / "out"
PYTHON = sys.executable

if str(ROOT) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/ first, not the root
    sys.path.insert(0, str(ROOT))

IMAGE_SIZE = (500, 375)  # (width, height), the size of a typical photo-data-set JPEG
JPEG_QUALITY = 90
IMAGE_SEED = 2024


# --------------------------------------------------------------------------- machine


def _usable_cpus() -> int:
    from savedeep.runner.devices import usable_cpus

    return usable_cpus()


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU model, cores, memory, versions, date, load before the run."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        import psutil

        mem = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    versions = {"python": platform.python_version()}
    for mod in ("numpy", "torch", "pyarrow", "pandas", "cv2", "simplejpeg", "skimage"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is just not listed
            pass
    code = {}
    try:
        code["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "savedeep", "workers"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=10,
        ).stdout.split("\n")
        code["uncommitted_in_savedeep_or_workers"] = [line[3:] for line in dirty if line.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "code": code,
        "cpu": cpu,
        "cores": _usable_cpus(),
        "machine_cores": os.cpu_count(),
        "memory_gib": mem,
        "gpu": _gpu_name(),
        "platform": platform.platform(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


def _gpu_name() -> str:
    """The first CUDA GPU's name as torch reports it (with the driver's memory), or "none"."""
    if "torch" not in sys.modules:  # importing torch just to look costs a second on CPU machines
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
        except (OSError, subprocess.SubprocessError):
            return "none"
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "none"
    import torch

    if not torch.cuda.is_available():
        return "none"
    return f"{torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"


def machine_line(m: dict[str, Any]) -> str:
    """One line naming the machine and the date."""
    gpu = "no GPU" if m.get("gpu", "none") == "none" else m["gpu"]
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {gpu}; {m['date_utc']}; "
        f"load before: {m['load_average_before']}"
    )


# --------------------------------------------------------------------------- models


def caffenet_dir() -> Path:
    """CaffeNet with seeded random weights (seed 1) and the ILSVRC-2012 mean, built once."""
    from savedeep.caffe.synthetic import random_weights, write_caffemodel
    from savedeep.caffe.model import load_net

    d = OUT / "models" / "caffenet"
    if (d / "weights.caffemodel").exists() and (d / "mean.npy").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TESTDATA / "models" / "caffenet" / "deploy.prototxt", d / "deploy.prototxt")
    shutil.copyfile(TESTDATA / "models" / "ilsvrc_2012_mean.npy", d / "mean.npy")
    net = load_net(d / "deploy.prototxt")
    tmp = d / "weights.caffemodel.tmp"
    write_caffemodel(tmp, net, random_weights(net, seed=1))
    tmp.replace(d / "weights.caffemodel")
    return d


def nsfw_dir() -> Path:
    """The real open_nsfw model laid out as a savedeep model directory (.gpu/nsfw if packed there)."""
    from savedeep.demo import prepare_model

    if (PACKED_NSFW / "weights.caffemodel").exists():
        return PACKED_NSFW
    return prepare_model(OUT / "models" / "nsfw")


MODELS = {"caffenet": caffenet_dir, "nsfw": nsfw_dir}
# The blobs each benchmark case saves.
CASES = {
    "caffenet-fc": ("caffenet", ["fc6", "fc7"]),
    "caffenet-conv1": ("caffenet", ["conv1"]),
    "nsfw-pool": ("nsfw", ["pool", "prob"]),
}


# --------------------------------------------------------------------------- images


def source_photos() -> list[Path]:
    """The real photos: tests/data/images and scikit-image's (savedeep.demo.prepare_images)."""
    from savedeep.demo import prepare_images

    return sorted((TESTDATA / "images").glob("*.jpg")) + prepare_images(OUT / "photos")


def make_images(n: int) -> Path:
    """A savedeep image list of the first `n` benchmark JPEGs (made as needed, deterministic).

    Image i is a random 4:3 crop (40-100% of the largest 4:3 box, random position, random
    horizontal flip) of one of the real photos, resized to 500x375 and saved at quality 90.
    """
    import cv2
    from PIL import Image

    d = OUT / "images" / "all"
    d.mkdir(parents=True, exist_ok=True)
    names = [f"img_{i:05d}.jpg" for i in range(n)]
    missing = [i for i, name in enumerate(names) if not (d / name).exists()]
    if missing:
        photos = [np.asarray(Image.open(p).convert("RGB")) for p in source_photos()]
        rng = np.random.default_rng(IMAGE_SEED)
        # Draw every image's parameters in order, so image i is the same whatever n was asked for.
        total = max(n, 4000)
        params = [
            (
                int(rng.integers(len(photos))),
                float(rng.uniform(0.4, 1.0)),
                float(rng.random()),
                float(rng.random()),
                bool(rng.random() < 0.5),
            )
            for _ in range(total)
        ]
        for i in missing:
            k, area, fx, fy, flip = params[i]
            img = photos[k]
            h, w = img.shape[:2]
            bw, bh = (w, int(w * 3 / 4)) if w * 3 / 4 <= h else (int(h * 4 / 3), h)
            s = area**0.5
            cw, ch = max(8, int(bw * s)), max(6, int(bh * s))
            x0, y0 = int(fx * (w - cw)), int(fy * (h - ch))
            crop = img[y0 : y0 + ch, x0 : x0 + cw]
            if flip:
                crop = crop[:, ::-1]
            out = cv2.resize(np.ascontiguousarray(crop), IMAGE_SIZE, interpolation=cv2.INTER_AREA)
            tmp = d / f".{names[i]}.tmp"
            Image.fromarray(out).save(tmp, format="JPEG", quality=JPEG_QUALITY)
            tmp.replace(d / names[i])
    lst = OUT / "images" / f"list_{n}.txt"
    text = "".join(f"all/{name}\n" for name in names)
    if not lst.exists() or lst.read_text() != text:
        lst.write_text(text)
    return lst


def image_paths(n: int) -> list[Path]:
    """The paths of the first `n` benchmark JPEGs."""
    lst = make_images(n)
    return [lst.parent / line for line in lst.read_text().split()]


# --------------------------------------------------------------------------- memory


class MemorySampler:
    """Samples the memory of a process and all its descendants together, every `interval` s.

    ``kind="pss"`` sums psutil's ``memory_full_info().pss`` (proportional set size: a page
    shared by k processes counts 1/k in each, so shared memory such as the shared-memory
    rings, torch's libraries or the copy-on-write parent pages is counted once in the sum);
    ``kind="rss"`` sums RSS (double-counts shared pages). Both are recorded; ``peak`` is the
    largest sum seen. Run it around a subprocess whose pid is ``pid``.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak_pss = 0
        self.peak_rss = 0
        self.peak_procs = 0
        self.samples = 0
        self.timeline: list[tuple[float, int, int]] = []  # (t, pss, rss)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.perf_counter()

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                break
            pss = rss = 0
            for p in procs:
                try:
                    info = p.memory_full_info()
                except psutil.Error:
                    continue
                pss += info.pss
                rss += info.rss
            self.samples += 1
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_procs = max(self.peak_procs, len(procs))
            self.timeline.append((round(time.perf_counter() - self._t0, 3), pss, rss))
            self._stop.wait(self.interval)


# --------------------------------------------------------------------------- savedeep runs


def savedeep_config(model: Path, images: Path, output: Path, blobs: Sequence[Any], **keys: Any):
    """A validated savedeep Config for a benchmark run on the CPU: savedeep's defaults (``cpu_consumers: auto``
    included) unless ``keys`` say otherwise, so that a benchmark measures what a user gets."""
    from savedeep.config import load_config

    over = {"model": model, "images": images, "output": output, "blobs": list(blobs), "gpus": "cpu"}
    over.update(keys)
    return load_config(None, over)


def run_savedeep(case_dir: Path, model: Path, images: Path, blobs: Sequence[Any], **keys: Any) -> dict[str, Any]:
    """savedeep.run in this process (workers are spawned); wall time, rates and busy fractions.

    ``steady_images_per_s`` is ``RunResult.steady_images_per_s()``: images per second between
    the writing of the batch after the first window (the batches producers may have decoded
    before the first forward) and of the last batch, from the parent's timestamps of batches
    written. So no stage's work done before the interval counts in it.
    """
    import savedeep

    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    cfg = savedeep_config(model, images, case_dir / "acts.pk", blobs, log_file=case_dir / "run.log", **keys)
    t0 = time.perf_counter()
    res = savedeep.run(cfg, overwrite=True)
    wall = time.perf_counter() - t0
    n = res.rows + res.failures
    steady = res.steady_images_per_s()
    return {
        "images": n,
        "rows": res.rows,
        "failures": res.failures,
        "wall_s": round(wall, 3),
        "images_per_s": round(n / wall, 2),
        "steady_images_per_s": None if steady is None else round(steady, 2),
        "busy": {k: round(v, 3) for k, v in res.busy.items()},
        "producers": res.producers,
        "writers": res.writers,
        "disk_bytes": dir_bytes(res.parquet_dir),
        # what ran it: a CPU figure must never pass for a GPU one
        "devices": list(res.devices),
        "device_info": list(res.device_info),
    }


def dir_bytes(path: Path) -> int:
    """Bytes of the Parquet shards in an output directory."""
    return sum(f.stat().st_size for f in Path(path).glob("part-*.parquet"))


# --------------------------------------------------------------------------- output


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str = "") -> str:
    """Print rows as an aligned text table; returns the text."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:,.1f}"
        if isinstance(v, dict):
            return " ".join(f"{k}={fmt(x)}" for k, x in v.items())
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ([title] if title else []) + [
        "  ".join(c.rjust(w) for c, w in zip(columns, widths)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_json(path: Path, data: Any) -> Path:
    """Write `data` as indented JSON (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(f"written {path.relative_to(ROOT)}", flush=True)
    return path


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rows (flat dicts) as CSV; nested dicts become 'key.sub' columns."""
    flat = []
    for r in rows:
        f: dict[str, Any] = {}
        for k, v in r.items():
            if isinstance(v, dict):
                f.update({f"{k}.{kk}": vv for kk, vv in v.items()})
            else:
                f[k] = v
        flat.append(f)
    columns: list[str] = []
    for f in flat:
        columns += [c for c in f if c not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(flat)
    print(f"written {path.relative_to(ROOT)}", flush=True)
    return path


def plt():
    """matplotlib.pyplot with a non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def save_fig(fig, path: Path) -> None:
    """Save a figure as PNG and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt().close(fig)
    print(f"written {path.relative_to(ROOT)}", flush=True)


def run_json_subprocess(args: Iterable[str], env: dict[str, str] | None = None, timeout: float = 1200) -> Any:
    """Run a Python helper that prints one JSON document on its last stdout line; return it."""
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("GLOG_minloglevel", "2")
    proc = subprocess.run([PYTHON, *args], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def wait_for_quiet(max_load: float = 0.5, timeout: float = 0.0) -> None:
    """Report the 1-minute load; optionally wait (up to `timeout` s) until it is below `max_load`."""
    deadline = time.monotonic() + timeout
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        time.sleep(5)
    print(f"load average: {os.getloadavg()}", flush=True)
