"""The GPU check: what only a GPU machine can prove, in one run of a few minutes, a verdict per step.

Run it through ``benchmarks/gpu_check.sh`` (which installs the packed wheels on a bare
machine). ``--device cpu`` is the dry run: every step runs what it can on the CPU and
says what it could not check (``NOT CHECKED``); a GPU machine must give ``PASS`` everywhere.

Steps:
  probe     /proc GPU entries, the driver's CUDA device count, torch.cuda.device_count();
            compute mode, driver, the CPUs this process may use, /dev/shm
  pytest    ``pytest -m gpu`` (tests/test_engines_gpu.py and the GPU test of tests/test_engines.py)
  engine    the torch engine on the device against the CPU on every blob of CaffeNet (random
            weights) and open_nsfw (real weights), <= 1e-4 relative; a negative control with
            TF32 forced on must exceed it; float16 ``out=`` equal to numpy's rounding
  pipeline  ``savedeep run --gpus 0 --require-gpu`` against ``--gpus cpu`` on --images images
            (fc7, conv1 float16, conv5 pooled): outputs agree, the summary names cuda:0,
            nvidia-smi shows a compute context only in the consumer
  visible   CUDA_VISIBLE_DEVICES as an index, a UUID, empty (with --require-gpu: exit 2), absent
  bench     benchmarks/bench_gpu.py and its figures
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import numpy as np  # noqa: E402

TOLERANCE = 1e-4
VERDICTS: list[tuple[str, str, str]] = []


def verdict(step: str, status: str, detail: str) -> None:
    VERDICTS.append((step, status, detail))
    print(f"VERDICT {step}: {status} - {detail}", flush=True)


def sh(cmd: list[str], timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=None if env is None else {**os.environ, **env},
    )


def nvidia_smi(*args: str) -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        r = sh(["nvidia-smi", *args], timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


# ----------------------------------------------------------------------------------- steps


def step_probe(gpu: bool) -> None:
    from savedeep.engines import gpus
    from savedeep.runner import devices as dv

    proc = gpus.proc_gpu_count()
    probe = gpus.probe_driver()
    r = sh([sys.executable, "-c", "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"])
    torch_n = int(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip().isdigit() else None
    mode = nvidia_smi("--query-gpu=index,name,compute_mode,driver_version,uuid", "--format=csv,noheader")
    shm = dv.shm_free_bytes()
    facts = {
        "/proc/driver/nvidia/gpus": proc,
        "driver count": probe.count,
        "driver CUDA": None if probe.driver is None else gpus.cuda_version_str(probe.driver),
        "driver probe error": probe.error,
        "torch.cuda.device_count()": torch_n,
        "driver release": gpus.driver_release(),
        "nvidia-smi": mode,
        "usable CPUs": dv.usable_cpus(),
        "os.cpu_count()": os.cpu_count(),
        "cgroup CPU quota": dv.cgroup_cpu_quota(),
        "/dev/shm free GiB": None if shm is None else round(shm / 2**30, 1),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "torch CUDA runtime": gpus.torch_cuda_version(),
    }
    for k, v in facts.items():
        print(f"  {k}: {v}", flush=True)
    if not gpu:
        ok = probe.count in (0, None) and torch_n == 0
        verdict(
            "probe",
            "PASS" if ok else "FAIL",
            f"no GPU here, and every count agrees (driver: {probe.error or probe.count}; torch: {torch_n}); "
            "NOT CHECKED: driver count = torch count on GPUs, compute mode",
        )
        return
    ok = probe.count is not None and probe.count >= 1 and probe.count == torch_n
    try:
        gpus.check_driver(probe.driver, gpus.torch_cuda_version(), "torch", gpus.driver_release())
        driver_ok = "driver new enough for torch's CUDA"
    except Exception as exc:  # noqa: BLE001
        ok, driver_ok = False, str(exc)
    verdict(
        "probe",
        "PASS" if ok else "FAIL",
        f"driver counts {probe.count}, torch {torch_n}, /proc {proc}; {driver_ok}; compute mode: {mode}",
    )


def step_pytest(gpu: bool) -> None:
    r = sh(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_engines_gpu.py",
            "tests/test_engines.py",
        ],
        timeout=420,
    )
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr.strip()[-300:]
    print("\n".join(r.stdout.splitlines()[-15:]), flush=True)
    if gpu:
        ok = r.returncode == 0 and "skipped" not in tail and "passed" in tail
        verdict("pytest", "PASS" if ok else "FAIL", f"pytest -m gpu: {tail}")
    else:
        ok = r.returncode in (0, 5) and "failed" not in tail and "error" not in tail
        verdict(
            "pytest",
            "PASS" if ok else "FAIL",
            f"pytest -m gpu: {tail}; NOT CHECKED: the tests themselves skip without a GPU",
        )


def _compare(model_dir: Path, device: str, x: np.ndarray, control: bool) -> tuple[float, float | None, bool]:
    """Max relative error over every blob (device vs CPU); the same with TF32 forced on; float16 out= exact."""
    import torch

    from savedeep.engines import create_engine
    from savedeep.caffe.model import load_model
    from tests.nets import rel_err

    model = load_model(model_dir)
    blobs = list(model.net.blobs)
    cpu = create_engine("torch", model, "cpu", x.shape[0])
    ref = cpu.forward(x, blobs)
    cpu.close()
    dev = create_engine("torch", model, device, x.shape[0])
    got = dev.forward(x, blobs)
    err = max(rel_err(got[b], ref[b]) for b in blobs)
    out = {b: np.empty_like(got[b], dtype=np.float16) for b in blobs}
    dev.forward(x, blobs, out=out)
    half_ok = all(np.array_equal(out[b], got[b].astype(np.float16), equal_nan=True) for b in blobs)
    tf32_err = None
    if control:
        from savedeep.engines.torch_engine import use_exact_fp32_on_cuda

        # the negative control, what the engine must prevent: TF32 in each backend's own setting too
        # (the global alone no longer reaches cuDNN once the engine has set its convolutions to IEEE)
        torch.backends.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "tf32"
        try:
            tf = dev.forward(x, blobs)
            tf32_err = max(rel_err(tf[b], ref[b]) for b in blobs)
        finally:
            use_exact_fp32_on_cuda()
    dev.close()
    return err, tf32_err, half_ok


def step_engine(gpu: bool, device: str) -> None:
    import common

    rng = np.random.default_rng(5)
    cases = {
        "caffenet": (common.caffenet_dir(), rng.normal(scale=50, size=(8, 3, 227, 227)).astype(np.float32)),
        "open_nsfw": (common.nsfw_dir(), rng.normal(scale=50, size=(8, 3, 224, 224)).astype(np.float32)),
    }
    ok, parts = True, []
    for name, (d, x) in cases.items():
        err, tf32_err, half_ok = _compare(d, device, x, control=gpu)
        parts.append(
            f"{name} max rel err {err:.2e}"
            + (f", TF32 forced on {tf32_err:.2e}" if tf32_err is not None else "")
            + f", float16 out= {'= numpy' if half_ok else 'DIFFERS'}"
        )
        ok &= err <= TOLERANCE and half_ok
        if gpu:
            ok &= tf32_err is not None and tf32_err > TOLERANCE  # the check can fail
    verdict(
        "engine",
        "PASS" if ok else "FAIL",
        f"{device} against cpu: "
        + "; ".join(parts)
        + ("" if gpu else "; NOT CHECKED: a GPU's numbers and the TF32 negative control"),
    )


class _Contexts(threading.Thread):
    """Polls nvidia-smi for the processes holding a compute context while a run goes on."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.pids: set[int] = set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            out = nvidia_smi("--query-compute-apps=pid", "--format=csv,noheader")
            for line in (out or "").splitlines():
                if line.strip().isdigit():
                    self.pids.add(int(line.strip()))
            self.done.wait(0.5)


def _savedeep_run(
    images: Path,
    out: Path,
    gpus: str,
    extra_env: dict | None = None,
    require: bool = True,
    blobs: str | None = None,
    config: Path | None = None,
) -> subprocess.CompletedProcess:
    import common

    cmd = [sys.executable, "-m", "savedeep", "run"]
    if config is not None:
        cmd.append(str(config))
    else:
        cmd += ["-m", str(common.caffenet_dir()), "-b", blobs or "fc7", "-i", str(images)]
    cmd += ["-o", str(out), "--gpus", gpus, "--no-progress", "--overwrite", "--no-pickle", "--batch-size", "32"]
    if require and gpus != "cpu":
        cmd.append("--require-gpu")
    env = dict(os.environ)
    for k, v in (extra_env or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=ROOT, env=env)


def step_pipeline(gpu: bool, n_images: int, work: Path) -> None:
    import yaml

    import common
    import savedeep
    from tests.nets import rel_err

    images = common.make_images(n_images)
    cfg = work / "check.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": str(common.caffenet_dir()),
                "images": str(images),
                "blobs": [
                    "fc7",
                    {"name": "conv1", "dtype": "float16"},
                    {"name": "conv5", "reduce": {"pool": "mean", "grid": 2}},
                ],
            }
        )
    )
    outs, texts = {}, {}
    watcher = _Contexts() if gpu else None
    for tag, gpus in (("cpu", "cpu"), ("dev", "0" if gpu else "cpu")):
        if tag == "dev" and watcher is not None:
            watcher.start()
        t0 = time.perf_counter()
        r = _savedeep_run(images, work / tag / "acts.pk", gpus, config=cfg)
        if tag == "dev" and watcher is not None:
            watcher.done.set()
            watcher.join(5)
        texts[tag] = r.stdout + r.stderr
        print(f"  --gpus {gpus}: exit {r.returncode} in {time.perf_counter() - t0:.1f} s", flush=True)
        print("    " + "\n    ".join(r.stderr.strip().splitlines()[-6:]), flush=True)
        if r.returncode != 0:
            verdict("pipeline", "FAIL", f"--gpus {gpus} exited {r.returncode}: {r.stderr.strip()[-800:]}")
            return
        outs[tag] = work / tag / "acts.parquet"
    errs = {}
    for b, tol in (("fc7", TOLERANCE), ("conv1", 1e-3), ("conv5", TOLERANCE)):  # conv1 is float16: 1 ulp flips
        a = savedeep.load_array(outs["dev"], b).astype(np.float32)
        c = savedeep.load_array(outs["cpu"], b).astype(np.float32)
        errs[b] = (rel_err(a, c), tol)
    agree = all(e <= t for e, t in errs.values())
    detail = ", ".join(f"{b} {e:.2e}" for b, (e, _) in errs.items())
    manifest = json.loads((outs["dev"] / "_manifest.json").read_text())
    devs = manifest.get("devices", [])
    if not gpu:
        ok = agree and [d["device"] for d in devs] == ["cpu"] and "devices: cpu" in texts["dev"]
        verdict(
            "pipeline",
            "PASS" if ok else "FAIL",
            f"{n_images} images, cpu against cpu: {detail}; NOT CHECKED: "
            "--gpus 0 --require-gpu, the summary naming cuda:0, contexts in nvidia-smi",
        )
        return
    names_cuda = "devices: cuda:0" in texts["dev"]
    consumer = {d.get("pid") for d in devs}
    # this checker's own context (its engine step ran torch on cuda:0 in this process) is not the run's
    others = watcher.pids - {os.getpid()} if watcher is not None else set()
    only_consumer = bool(others) and others <= consumer
    ok = agree and names_cuda and only_consumer
    verdict(
        "pipeline",
        "PASS" if ok else "FAIL",
        f"{n_images} images, cuda:0 against cpu: {detail}; summary names cuda:0: {names_cuda}; contexts seen in "
        f"pids {sorted(watcher.pids)} (this checker: {os.getpid()}), consumer pid {sorted(consumer)}; device {devs[0] if devs else None}",
    )


def step_visible(gpu: bool, work: Path) -> None:
    import common

    images = common.make_images(64)
    results, ok = [], True
    uuid = None
    if gpu:
        out = nvidia_smi("--query-gpu=uuid", "--format=csv,noheader")
        uuid = out.splitlines()[0].strip() if out else None
    cases = [
        ("index '0'", {"CUDA_VISIBLE_DEVICES": "0"}, "0"),
        ("uuid", {"CUDA_VISIBLE_DEVICES": uuid}, uuid),
        ("absent", {"CUDA_VISIBLE_DEVICES": None}, "0"),
    ]
    for name, env, expect in cases:
        if not gpu:
            results.append(f"{name}: NOT CHECKED")
            continue
        if expect is None:
            results.append(f"{name}: no UUID from nvidia-smi")
            ok = False
            continue
        r = _savedeep_run(images, work / "vis" / "acts.pk", "0", env)
        man = json.loads((work / "vis" / "acts.parquet" / "_manifest.json").read_text()) if r.returncode == 0 else {}
        seen = [d.get("CUDA_VISIBLE_DEVICES") for d in man.get("devices", [])]
        good = r.returncode == 0 and seen == [expect]
        ok &= good
        results.append(f"{name}: exit {r.returncode}, consumer saw {seen}" + ("" if good else f" (want [{expect!r}])"))
    r = _savedeep_run(images, work / "vis" / "acts.pk", "0", {"CUDA_VISIBLE_DEVICES": ""})
    good = r.returncode == 2 and "sees none" in r.stderr
    ok &= good
    results.append(f"empty + --require-gpu: exit {r.returncode}" + ("" if good else f": {r.stderr.strip()[-300:]}"))
    verdict("visible", "PASS" if ok else "FAIL", "; ".join(results))


def step_bench(gpu: bool, device: str, copy_to: Path | None, bench_images: int = 1000) -> None:
    cmd = [sys.executable, str(HERE / "bench_gpu.py"), "--device", device]
    cmd += ["--images", str(bench_images), "--seconds", "1.5"] if gpu else ["--quick"]
    if copy_to:
        cmd += ["--copy-to", str(copy_to)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=480, cwd=ROOT)
    print("\n".join("  " + line for line in r.stdout.strip().splitlines()[-30:]), flush=True)
    if r.returncode != 0:
        verdict("bench", "FAIL", f"bench_gpu.py exited {r.returncode}: {r.stderr.strip()[-600:]}")
        return
    data = json.loads((HERE / "out" / "gpu.json").read_text())
    ran_on = data.get("end_to_end_devices")
    want = ["cuda:0"] if gpu else ["cpu"]
    ok = ran_on == want and not any("error" in r for r in data.get("end_to_end", []))
    verdict(
        "bench",
        "PASS" if ok else "FAIL",
        f"end to end on {ran_on}; producers needed {data.get('producers_needed')}"
        + ("" if gpu else "; NOT CHECKED: GPU figures (a CPU check of the script only)"),
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda:0", help="cuda:0, or cpu for the dry run")
    p.add_argument(
        "--images", type=int, default=None, help="images of the pipeline step (1000 on a GPU, 40 on the CPU)"
    )
    p.add_argument("--steps", default="probe,pytest,engine,pipeline,visible,bench")
    p.add_argument(
        "--bench-images",
        type=int,
        default=1000,
        help="images of bench_gpu.py's end-to-end runs "
        "(at an H100's speed 1,000 are too few batches for a steady rate)",
    )
    p.add_argument(
        "--copy-to", type=Path, default=None, help="copy gpu_check.json and gpu.json here (the device's $OUT)"
    )
    args = p.parse_args()
    gpu = args.device != "cpu"
    n_images = args.images or (1000 if gpu else 40)
    work = HERE / "out" / "gpu_check"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    print(f"gpu_check on {args.device}: steps {args.steps}", flush=True)
    for step in args.steps.split(","):
        t = time.perf_counter()
        print(f"--- {step}", flush=True)
        try:
            {
                "probe": lambda: step_probe(gpu),
                "pytest": lambda: step_pytest(gpu),
                "engine": lambda: step_engine(gpu, args.device),
                "pipeline": lambda: step_pipeline(gpu, n_images, work),
                "visible": lambda: step_visible(gpu, work),
                "bench": lambda: step_bench(gpu, args.device, args.copy_to, args.bench_images),
            }[step]()
        except Exception:  # noqa: BLE001 - a step that crashes is a FAIL, and the others still run
            verdict(step, "FAIL", traceback.format_exc(limit=3).strip().replace("\n", " | ")[-800:])
        print(f"    ({time.perf_counter() - t:.1f} s)", flush=True)
    print(f"\n=== gpu_check on {args.device}, {time.perf_counter() - t0:.0f} s", flush=True)
    for step, status, _detail in VERDICTS:
        print(f"VERDICT {step}: {status}", flush=True)
    result = {
        "device": args.device,
        "verdicts": [{"step": s, "status": st, "detail": d} for s, st, d in VERDICTS],
        "total_s": round(time.perf_counter() - t0, 1),
    }
    (HERE / "out" / "gpu_check.json").write_text(json.dumps(result, indent=1))
    if args.copy_to:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HERE / "out" / "gpu_check.json", args.copy_to / "gpu_check.json")
    return 1 if any(st == "FAIL" for _, st, _ in VERDICTS) else 0


if __name__ == "__main__":
    sys.exit(main())
