"""Each pipeline stage alone, and the bound they put on the whole pipeline on this machine.

Stages, each measured on its own:

- **decode + preprocess**: ``savedeep.data.preprocess.Preprocessor.load`` (simplejpeg + OpenCV, the
  producers' code) on the benchmark JPEGs (500x375), one process, one thread: images/s per core.
  ``--decode-script`` also runs benchmarks/bench_decode.py (other decoders, 3000x2000 photos)
  and folds its table in.
- **forward**: ``savedeep.engines.create_engine`` in a fresh process per engine and layout, with
  the threads the pipeline gives its one CPU consumer (all cores: 2 here), images/s per batch
  size: pycaffe (OpenBLAS threads set before import), torch with the default NCHW layout, and
  torch with channels_last (the torch engine's default on the CPU); the best of 5 timing
  windows (the stage's capacity; the median is kept too). The forward is called as the
  consumer calls it, ``engine.forward(x, blobs, out=...)`` into float32 buffers, so the copy
  of each blob out of the engine (channels_last reordered to NCHW) is part of the stage.
  Cases: CaffeNet fc6+fc7, CaffeNet conv1 (random weights), open_nsfw pool+prob (real weights).
- **write**: ``savedeep.data.output.ShardWriter`` on real activations of those blobs (conv1 and
  fc6+fc7 of the benchmark images), float32 and float16, zstd and none: MB/s of stored bytes and
  images/s, for both blob storages: ``tensor`` (Arrow fixed-shape tensor, the default) and
  ``binary`` (one ``fixed_size_binary`` value per image), same writer settings otherwise. The
  float16 cast is part of the forward stage (the engine writes the stored dtype into the
  consumer's slot); numpy's cast, which the caffe engine uses, is timed separately.

**The bound.** On C cores, with a consumer of T threads forwarding F images/s, producers that
decode D images/s per core, a writer at W images/s and a cast at K images/s, each image costs
T/F + 1/D + 1/W (+ 1/K) core-seconds, so no pipeline can beat
``min(F, P*D, W, C / (T/F + 1/D + 1/W + 1/K))`` images/s (P producers). The last term, the
"shared-core bound", is the one that binds on 2 cores. It counts the consumer's threads as
busy for the whole forward (they are: OpenMP/OpenBLAS threads spin), and ignores the
supervisor's small costs. K (the float16 cast) applies to the caffe engine only: the torch
engine casts inside its copy out, which F already counts.

``bound_now`` measures the three stages of one configuration one after the other, in a few
seconds, so that an end-to-end run can be compared with a bound measured right beside it
(the machine's speed drifts by ~25% within minutes); bench_naive, bench_sweep and
bench_memory_disk use it. There the forward writes the configuration's stored dtype.

Writes benchmarks/out/stages.json, stages_forward.csv, stages_write.csv, stages.png.

Usage: python benchmarks/bench_stages.py [--quick] [--decode-script]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import common  # noqa: E402
from common import OUT, ROOT  # noqa: E402

BATCHES = (1, 8, 32, 64, 128)
ENGINES = (("caffe", None), ("torch", False), ("torch", True))  # (engine, channels_last)
CASES = ("caffenet-fc", "caffenet-conv1", "nsfw-pool")


def engine_label(kind: str, channels_last: bool | None) -> str:
    return kind if channels_last is None else ("torch-cl" if channels_last else "torch-nchw")


# --------------------------------------------------------------------------- decode


def preprocessed(model_dir: Path, paths: list[Path]) -> np.ndarray:
    """The input blobs of `paths` for `model_dir`, as the producers make them."""
    from savedeep.caffe.model import load_model
    from savedeep.data.preprocess import PreprocessSpec, Preprocessor, load_mean

    m = load_model(model_dir, weights=False)
    shape = tuple(m.net.input_shape[1:])
    pre = Preprocessor(PreprocessSpec(), load_mean(m.mean_path), shape)
    out = np.empty((len(paths), *shape), np.float32)
    for i, p in enumerate(paths):
        pre.load(p, out=out[i])
    return out


def bench_decode(paths: list[Path], seconds: float) -> dict[str, Any]:
    """Preprocessor.load images/s on one core, for CaffeNet's 227x227 and open_nsfw's 224x224 inputs."""
    return {name: decode_rate(fn(), paths, seconds) for name, fn in common.MODELS.items()}


def decode_rate(model_dir: Path, paths: list[Path], seconds: float) -> dict[str, Any]:
    """Preprocessor.load images/s on one core for one model's input."""
    import cv2

    from savedeep.caffe.model import load_model
    from savedeep.data.preprocess import PreprocessSpec, Preprocessor, load_mean

    cv2.setNumThreads(1)
    m = load_model(model_dir, weights=False)
    shape = tuple(m.net.input_shape[1:])
    pre = Preprocessor(PreprocessSpec(), load_mean(m.mean_path), shape)
    buf = np.empty(shape, np.float32)
    pre.load(paths[0], out=buf)
    n, t0 = 0, time.perf_counter()
    while True:
        pre.load(paths[n % len(paths)], out=buf)
        n += 1
        el = time.perf_counter() - t0
        if el >= seconds and n >= 20:
            break
    return {
        "images": n,
        "seconds": round(el, 3),
        "images_per_s_per_core": round(n / el, 1),
        "ms_per_image": round(1000 * el / n, 3),
        "input": list(shape),
    }


# --------------------------------------------------------------------------- forward (in a worker process)


def forward_worker(spec: dict[str, Any]) -> None:
    """Run in a fresh process: time engine.forward per batch size; print one JSON line."""
    import cv2

    cv2.setNumThreads(1)
    from savedeep.engines import create_engine, keep_freed_memory
    from savedeep.caffe.model import load_model

    keep_freed_memory()  # as the consumer does

    model_dir, blobs = Path(spec["model"]), spec["blobs"]
    m = load_model(model_dir)
    batches = spec["batches"]
    x_all = preprocessed(model_dir, [Path(p) for p in spec["images"]])
    t0 = time.perf_counter()
    if spec["engine"] == "torch" and spec["channels_last"] is not None:
        from savedeep.engines.torch_engine import TorchEngine

        eng = TorchEngine(
            m.net, "cpu", max(batches), spec["threads"], source=m.prototxt, channels_last=spec["channels_last"]
        )
    else:
        eng = create_engine(spec["engine"], m, "cpu", max(batches), threads=spec["threads"])
    build_s = time.perf_counter() - t0
    results = []
    out_dtype = np.dtype(spec.get("out_dtype", "float32"))
    for b in batches:
        reps = np.resize(np.arange(len(x_all)), b)
        x = np.ascontiguousarray(x_all[reps])
        # the consumer's call: every blob written into a slot of its stored dtype
        bufs = {k: np.empty((b, *eng.blob_shapes[k]), out_dtype) for k in blobs}
        eng.forward(x, blobs, out=bufs)  # warm-up (allocation, oneDNN primitive creation)
        # Several windows: on a shared machine one window can be hit by other work. The best
        # window is the stage's capacity (what the bound uses); the median is reported too.
        rates, total_n, total_s = [], 0, 0.0
        for _ in range(spec["windows"]):
            n = 0
            t0 = time.perf_counter()
            while True:
                eng.forward(x, blobs, out=bufs)
                n += 1
                el = time.perf_counter() - t0
                if el >= spec["seconds"] / spec["windows"] and n >= 1:
                    break
            rates.append(n * b / el)
            total_n, total_s = total_n + n, total_s + el
        results.append(
            {
                "batch": b,
                "forwards": total_n,
                "seconds": round(total_s, 3),
                "images_per_s": round(max(rates), 2),
                "median_images_per_s": round(float(np.median(rates)), 2),
                "mean_images_per_s": round(total_n * b / total_s, 2),
            }
        )
    if spec.get("dump"):  # real activations of up to 64 images, for the write stage
        n, step = min(len(x_all), 64), max(batches)
        parts = [eng.forward(np.ascontiguousarray(x_all[a : min(a + step, n)]), blobs) for a in range(0, n, step)]
        np.savez(spec["dump"], **{k: np.concatenate([p[k] for p in parts]) for k in blobs})
    eng.close()
    print(json.dumps({"build_s": round(build_s, 3), "results": results}))


def bench_forward(
    cases: list[str],
    batches: list[int],
    threads: int,
    seconds: float,
    paths: list[Path],
    dump_dir: Path,
    windows: int = 5,
) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        model_name, blobs = common.CASES[case]
        model = common.MODELS[model_name]()
        for kind, cl in ENGINES:
            dump = dump_dir / f"acts_{case}.npz" if (kind, cl) == ("torch", True) else None
            spec = {
                "model": str(model),
                "blobs": blobs,
                "batches": batches,
                "engine": kind,
                "channels_last": cl,
                "threads": threads,
                "seconds": seconds,
                "windows": windows,
                "images": [str(p) for p in paths[:64]],
                "dump": str(dump) if dump else None,
            }
            env = {"OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
            try:
                res = common.run_json_subprocess([__file__, "--forward-worker", json.dumps(spec)], env=env)
            except Exception as exc:  # noqa: BLE001 - report an engine that fails, go on with the others
                print(f"forward {case} {engine_label(kind, cl)} FAILED: {exc}", flush=True)
                rows.append({"case": case, "engine": engine_label(kind, cl), "error": str(exc)[-500:]})
                continue
            for r in res["results"]:
                rows.append(
                    {"case": case, "engine": engine_label(kind, cl), "threads": threads, **r, "build_s": res["build_s"]}
                )
            print(
                f"  forward {case:15s} {engine_label(kind, cl):10s} "
                + "  ".join(
                    f"b{r['batch']}={r['images_per_s']:.1f} (median {r['median_images_per_s']:.1f})"
                    for r in res["results"]
                ),
                flush=True,
            )
    return rows


# --------------------------------------------------------------------------- write


def _tile(acts: np.ndarray, rows: int) -> np.ndarray:
    return np.ascontiguousarray(acts[np.resize(np.arange(len(acts)), rows)])


def write_shardwriter(
    directory: Path,
    keys: list[str],
    blobs: dict[str, np.ndarray],
    compression: str,
    batch: int,
    storage: str = "tensor",
) -> Path:
    from savedeep.data.output import ColumnSpec, ShardWriter

    cols = [ColumnSpec(k, tuple(v.shape[1:]), str(v.dtype), storage) for k, v in blobs.items()]
    sw = ShardWriter(directory, 0, cols, (), compression)
    for a in range(0, len(keys), batch):
        z = min(a + batch, len(keys))
        sw.write(keys[a:z], {}, {k: v[a:z] for k, v in blobs.items()})
    return sw.finish()


def time_write(
    keys: list[str], blobs: dict[str, np.ndarray], compression: str, batch: int, storage: str, repeats: int
) -> tuple[float, int]:
    """Best seconds of ``repeats`` ShardWriter runs over `blobs`, and the shard's bytes."""
    best, size = None, 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(dir=OUT) as tmp:
            t0 = time.perf_counter()
            p = write_shardwriter(Path(tmp), keys, blobs, compression, batch, storage)
            el = time.perf_counter() - t0
            size = p.stat().st_size
        best = el if best is None else min(best, el)
    return best, size


def bench_write(dump_dir: Path, rows_by_case: dict[str, int], batch: int, repeats: int) -> list[dict[str, Any]]:
    out = []
    for case, n_rows in rows_by_case.items():
        src = dump_dir / f"acts_{case}.npz"
        if not src.exists():
            print(f"  write {case}: no activations dumped (forward failed?)", flush=True)
            continue
        acts = dict(np.load(src))
        for dtype in ("float32", "float16"):
            blobs = {k: _tile(v, n_rows).astype(dtype) for k, v in acts.items()}
            keys = [f"all/img_{i:05d}.jpg" for i in range(n_rows)]
            stored = sum(v.nbytes for v in blobs.values())
            f32_bytes = sum(v.size * 4 for v in blobs.values())
            for comp in ("zstd", "none"):
                for method in ("ShardWriter (tensor)", "ShardWriter (binary)"):
                    best, size = time_write(keys, blobs, comp, batch, method[13:-1], repeats)
                    out.append(
                        {
                            "case": case,
                            "dtype": dtype,
                            "compression": comp,
                            "method": method,
                            "rows": n_rows,
                            "seconds": round(best, 3),
                            "MB_per_s": round(stored / best / 1e6, 1),
                            "images_per_s": round(n_rows / best, 1),
                            "disk_bytes_per_image": round(size / n_rows),
                            "disk_vs_f32": round(size / f32_bytes, 4),
                        }
                    )
                tensor = out[-2]["seconds"]
                out[-1]["tensor_over_binary_time"] = round(tensor / out[-1]["seconds"], 2)
                print(
                    f"  write {case:15s} {dtype} {comp:4s}: tensor {out[-2]['MB_per_s']:.0f} MB/s, "
                    f"binary {out[-1]['MB_per_s']:.0f} MB/s, ratio {out[-1]['tensor_over_binary_time']:.2f}; "
                    f"{out[-2]['disk_bytes_per_image']} B/image on disk",
                    flush=True,
                )
            if dtype == "float32":
                continue
            # numpy's float16 cast (the caffe engine's copy out; the torch engine casts in its own copy)
            f32 = {k: _tile(v, n_rows) for k, v in acts.items()}
            t0 = time.perf_counter()
            for v in f32.values():
                for a in range(0, n_rows, batch):
                    v[a : a + batch].astype(np.float16)
            el = time.perf_counter() - t0
            out.append(
                {
                    "case": case,
                    "dtype": "float16",
                    "compression": "-",
                    "method": "cast float32->float16",
                    "rows": n_rows,
                    "seconds": round(el, 3),
                    "images_per_s": round(n_rows / el, 1),
                    "MB_per_s": round(sum(v.nbytes for v in f32.values()) / el / 1e6, 1),
                }
            )
    return out


# --------------------------------------------------------------------------- bound


def stage_bound(
    cores: int,
    threads: int,
    producers: int,
    forward_ips: float,
    decode_ips_core: float,
    write_ips: float,
    cast_ips: float | None = None,
) -> dict[str, float]:
    """The bound of the module docstring; each term in images/s."""
    cost = threads / forward_ips + 1 / decode_ips_core + 1 / write_ips + (1 / cast_ips if cast_ips else 0.0)
    terms = {
        "forward": forward_ips,
        "decode": producers * decode_ips_core,
        "write": write_ips,
        "shared_cores": cores / cost,
    }
    limiting = min(terms, key=terms.get)
    return {
        **{k: round(v, 1) for k, v in terms.items()},
        "bound": round(terms[limiting], 1),
        "limiting": limiting,
        "core_s_per_image": round(cost, 5),
    }


def lookup_forward(stages: dict[str, Any], case: str, engine: str, batch: int) -> float | None:
    for r in stages["forward"]:
        if r.get("case") == case and r.get("engine") == engine and r.get("batch") == batch:
            return r["images_per_s"]
    return None


def lookup_write(
    stages: dict[str, Any], case: str, dtype: str, compression: str, storage: str = "tensor"
) -> float | None:
    for r in stages["write"]:
        if (r["case"], r["dtype"], r["compression"], r["method"]) == (
            case,
            dtype,
            compression,
            f"ShardWriter ({storage})",
        ):
            return r["images_per_s"]
    return None


def lookup_cast(stages: dict[str, Any], case: str) -> float | None:
    for r in stages["write"]:
        if r["case"] == case and r["method"].startswith("cast"):
            return r["images_per_s"]
    return None


def bound_for(
    stages: dict[str, Any],
    case: str,
    engine: str,
    batch: int,
    producers: int,
    dtype: str = "float32",
    compression: str = "zstd",
    storage: str = "tensor",
) -> dict[str, float] | None:
    """The stage bound for a pipeline configuration, from a stages.json; None if a stage is missing."""
    fwd_engine = "torch-cl" if engine == "torch" else engine
    fwd = lookup_forward(stages, case, fwd_engine, batch)
    model = common.CASES[case][0]
    dec = stages["decode"].get(model, {}).get("images_per_s_per_core")
    wr = lookup_write(stages, case, dtype, compression, storage)
    if wr is None and case == "nsfw-pool":  # 1026 floats per image: far from binding; fc's writer rate is a floor
        wr = lookup_write(stages, "caffenet-fc", dtype, compression, storage)
    if not (fwd and dec and wr):
        return None
    cast = lookup_cast(stages, case) if dtype == "float16" and engine == "caffe" else None
    return stage_bound(stages["machine"]["cores"], stages["threads"], producers, fwd, dec, wr, cast)


WRITE_ROWS = {"caffenet-conv1": 384, "caffenet-fc": 2048, "nsfw-pool": 2048}


def bound_now(
    case: str,
    engine: str,
    batch: int,
    producers: int,
    *,
    dtype: str = "float32",
    compression: str = "zstd",
    storage: str = "tensor",
    threads: int | None = None,
    seconds: float = 3.0,
) -> dict[str, Any]:
    """The stage bound of one configuration from its three stages measured now (module docstring).

    Forward: a fresh process, the configuration's engine (its default layout), batch and
    threads, writing the stored dtype (best of 5 windows over `seconds`); decode: one core,
    ``seconds / 2``; write: ShardWriter over the activations that forward produced, tiled to
    WRITE_ROWS[case] rows, best of 2.
    """
    from savedeep.runner.devices import usable_cpus

    cores = usable_cpus()
    threads = threads or cores
    model_name, blobs = common.CASES[case]
    model = common.MODELS[model_name]()
    paths = common.image_paths(64)
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        dump = Path(tmp) / "acts.npz"
        spec = {
            "model": str(model),
            "blobs": blobs,
            "batches": [batch],
            "engine": engine,
            "channels_last": None,
            "threads": threads,
            "seconds": seconds,
            "windows": 5,
            "images": [str(p) for p in paths],
            "dump": str(dump),
            "out_dtype": dtype,
        }
        env = {"OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        fwd = common.run_json_subprocess([__file__, "--forward-worker", json.dumps(spec)], env=env)["results"][0]
        acts = dict(np.load(dump))
    rows = WRITE_ROWS[case]
    tiled = {k: _tile(v, rows).astype(dtype) for k, v in acts.items()}
    best, _ = time_write([f"all/img_{i:05d}.jpg" for i in range(rows)], tiled, compression, batch, storage, 2)
    write = rows / best
    decode = decode_rate(model, paths, seconds / 2)["images_per_s_per_core"]
    bound = stage_bound(cores, threads, producers, fwd["images_per_s"], decode, write)
    return {
        "forward_images_per_s": fwd["images_per_s"],
        "forward_median_images_per_s": fwd["median_images_per_s"],
        "decode_images_per_s_per_core": decode,
        "write_images_per_s": round(write, 1),
        "threads": threads,
        **bound,
    }


def load_stages() -> dict[str, Any] | None:
    p = OUT / "stages.json"
    return json.loads(p.read_text()) if p.exists() else None


# --------------------------------------------------------------------------- main


def plot(stages: dict[str, Any], path: Path) -> None:
    plt = common.plt()
    cases = [c for c in CASES if any(r.get("case") == c for r in stages["forward"])]
    fig, axes = plt.subplots(1, len(cases) + 1, figsize=(5 * (len(cases) + 1), 4))
    for ax, case in zip(axes, cases):
        for eng in ("caffe", "torch-nchw", "torch-cl"):
            pts = [
                (r["batch"], r["images_per_s"])
                for r in stages["forward"]
                if r.get("case") == case and r.get("engine") == eng and "batch" in r
            ]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=eng)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("images/s")
        ax.set_title(f"forward {case}, {stages['threads']} threads")
        ax.legend()
        ax.grid(alpha=0.3)
    ax = axes[-1]
    w = [r for r in stages["write"] if r["method"] != "cast float32->float16"]
    labels = [
        f"{r['case'].replace('caffenet-', '')} {r['dtype'][5:]} {r['compression']}\n{r['method'][12:]}" for r in w
    ]
    ax.barh(
        range(len(w)), [r["MB_per_s"] for r in w], color=["C0" if r["method"].endswith("(tensor)") else "C1" for r in w]
    )
    ax.set_yticks(range(len(w)), labels, fontsize=6)
    ax.set_xlabel("MB/s of stored bytes (blue: tensor storage, orange: binary storage)")
    ax.set_title("write")
    common.save_fig(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument("--decode-script", action="store_true", help="also run benchmarks/bench_decode.py")
    p.add_argument(
        "--threads", type=int, default=None, help="consumer threads (default: the usable CPUs, as the pipeline)"
    )
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--seconds", type=float, default=5.0, help="forward time per engine and batch size (5 windows)")
    p.add_argument("--forward-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.forward_worker:
        forward_worker(json.loads(args.forward_worker))
        return
    m = common.machine()
    print(common.machine_line(m), flush=True)
    cases = args.cases.split(",")
    batches = [1, 32] if args.quick else list(BATCHES)
    seconds = 0.3 if args.quick else args.seconds
    paths = common.image_paths(64 if args.quick else 256)
    dump_dir = OUT / "stages"
    dump_dir.mkdir(parents=True, exist_ok=True)

    print("decode + preprocess, one core:", flush=True)
    decode = bench_decode(paths, 0.5 if args.quick else 4.0)
    for k, v in decode.items():
        print(f"  {k}: {v['images_per_s_per_core']} images/s per core ({v['ms_per_image']} ms/image)", flush=True)
    decode_script = None
    if args.decode_script:
        import subprocess

        subprocess.run(
            [common.PYTHON, str(ROOT / "benchmarks" / "bench_decode.py"), "--seconds", "0.3" if args.quick else "2.0"],
            check=True,
            cwd=ROOT,
        )
        decode_script = json.loads((OUT / "decode.json").read_text())

    if args.threads is None:
        from savedeep.runner.devices import usable_cpus

        args.threads = usable_cpus()
    print(f"forward, {args.threads} threads:", flush=True)
    forward = bench_forward(cases, batches, args.threads, seconds, paths, dump_dir)

    print("write:", flush=True)
    rows_by_case = {"caffenet-conv1": 64 if args.quick else 512, "caffenet-fc": 256 if args.quick else 4096}
    write = bench_write(dump_dir, {k: v for k, v in rows_by_case.items() if k in cases}, 32, 1 if args.quick else 3)

    stages = {
        "machine": m,
        "threads": args.threads,
        "quick": args.quick,
        "decode": decode,
        "decode_script": decode_script,
        "forward": forward,
        "write": write,
    }
    bounds = []
    for case in cases:
        for engine in ("caffe", "torch"):
            for producers in (1, 2):
                for dtype, comp, storage in (
                    ("float32", "zstd", "tensor"),
                    ("float16", "zstd", "tensor"),
                    ("float16", "zstd", "binary"),
                ):
                    if (dtype == "float16" or storage == "binary") and case != "caffenet-conv1":
                        continue
                    b = bound_for(stages, case, engine, 32, producers, dtype, comp, storage)
                    if b:
                        bounds.append(
                            {
                                "case": case,
                                "engine": engine,
                                "batch": 32,
                                "producers": producers,
                                "dtype": dtype,
                                "compression": comp,
                                "storage": storage,
                                **b,
                            }
                        )
    stages["bounds_batch32"] = bounds

    print()
    common.print_table(
        [r for r in forward if "batch" in r],
        ["case", "engine", "threads", "batch", "images_per_s", "median_images_per_s", "build_s"],
        "forward images/s (best of 5 windows; median)",
    )
    print()
    common.print_table(
        write,
        [
            "case",
            "dtype",
            "compression",
            "method",
            "MB_per_s",
            "images_per_s",
            "disk_bytes_per_image",
            "disk_vs_f32",
            "tensor_over_binary_time",
        ],
        "write",
    )
    print()
    common.print_table(
        bounds,
        [
            "case",
            "engine",
            "producers",
            "dtype",
            "storage",
            "forward",
            "decode",
            "write",
            "shared_cores",
            "bound",
            "limiting",
        ],
        "stage bound at batch 32 (images/s)",
    )
    common.write_json(OUT / "stages.json", stages)
    common.write_csv(OUT / "stages_forward.csv", forward)
    common.write_csv(OUT / "stages_write.csv", write)
    plot(stages, OUT / "stages.png")


if __name__ == "__main__":
    main()
