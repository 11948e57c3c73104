"""Device isolation, GPU counting (savedeep/engines/gpus.py), usable CPUs, worker counts and the window
(savedeep/runner/devices.py), on the CPU.

No GPU exists here: the CUDA driver probe runs for real in its subprocess, against
libraries that are missing or are not the driver; the GPU counts of big nodes are
given as numbers. Worker environments are checked in real spawned processes.
"""

from __future__ import annotations

import ctypes.util
import json
import logging
import multiprocessing as mp
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from savedeep.engines import gpus
from savedeep.runner import devices as dv
from savedeep.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
M = 2**20


# --------------------------------------------------------------- 1. one GPU per consumer


def _report(q) -> None:
    """In a spawned child: the environment it was exec'ed with (/proc/self/environ) and what is imported."""
    raw = Path("/proc/self/environ").read_bytes().split(b"\0")
    at_exec = dict(kv.decode().split("=", 1) for kv in raw if b"=" in kv)
    q.put(
        {
            "at_exec": {k: at_exec.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", *dv.THREAD_VARS)},
            "imported": sorted(m for m in ("torch", "caffe") if m in sys.modules),
        }
    )


def _spawn_and_report(changes: dict) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_report, args=(q,))
    dv.start_process(p, changes)
    out = q.get(timeout=60)
    p.join(30)
    q.close()
    q.join_thread()
    return out


@pytest.mark.parametrize(
    "parent, expected",
    [
        (None, ["0", "1", "2"]),
        ("3,1,2", ["3", "1", "2"]),
        (
            "GPU-8a1b2c3d-0000-1111-2222-333344445555,GPU-deadbeef-aaaa-bbbb-cccc-ddddeeeeffff,GPU-0f",
            ["GPU-8a1b2c3d-0000-1111-2222-333344445555", "GPU-deadbeef-aaaa-bbbb-cccc-ddddeeeeffff", "GPU-0f"],
        ),
        ("MIG-5c3e-1,MIG-5c3e-2, MIG-5c3e-3", ["MIG-5c3e-1", "MIG-5c3e-2", "MIG-5c3e-3"]),
    ],
)
def test_each_consumer_is_spawned_seeing_only_its_own_gpu(parent, expected, monkeypatch):
    if parent is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", parent)
    seen = []
    for i in range(3):
        got = _spawn_and_report(dv.worker_env("consumer", f"cuda:{i}", 2))
        seen.append(got["at_exec"]["CUDA_VISIBLE_DEVICES"])
        assert got["at_exec"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert all(got["at_exec"][v] == "2" for v in dv.THREAD_VARS)
        assert got["imported"] == []
    assert seen == expected
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == parent  # the parent's environment is restored
    # inside, the consumer's GPU is device 0
    assert [gpus.local_device(f"cuda:{i}") for i in range(3)] == ["cuda:0"] * 3 and gpus.local_device("cpu") == "cpu"


def test_producers_writers_and_cpu_consumers_see_no_gpu_and_one_thread(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    for role, device, threads in (("producer", None, 1), ("writer", None, 1), ("consumer", "cpu", 3)):
        got = _spawn_and_report(dv.worker_env(role, device, threads))["at_exec"]
        assert got["CUDA_VISIBLE_DEVICES"] == "", role
        assert all(got[v] == str(threads) for v in dv.THREAD_VARS), (role, got)


def test_a_gpu_id_beyond_cuda_visible_devices_is_refused():
    with pytest.raises(ConfigError, match="positions within"):
        dv.worker_env("consumer", "cuda:2", 1, {"CUDA_VISIBLE_DEVICES": "GPU-a,GPU-b"})


def test_visible_entries_follow_cuda_parsing():
    assert gpus.visible_entries({}) is None
    assert gpus.visible_entries({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert gpus.visible_entries({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert gpus.visible_entries({"CUDA_VISIBLE_DEVICES": "2,-1,3"}) == ["2"]  # CUDA stops at the first invalid
    assert gpus.visible_entries({"CUDA_VISIBLE_DEVICES": " GPU-a , MIG-b "}) == ["GPU-a", "MIG-b"]


def test_caffe_engine_selects_the_device_before_gpu_mode():
    """set_mode_gpu builds Caffe's per-thread cuBLAS/cuRAND state on the current device: set_device first.

    pycaffe here is a CPU build, whose set_device aborts: a stand-in records the calls (a GPU cannot exist here).
    """
    from types import SimpleNamespace

    from savedeep.engines import parse_device
    from savedeep.engines.caffe_engine import select_device

    calls = []
    fake = SimpleNamespace(
        set_device=lambda i: calls.append(("set_device", i)),
        set_mode_gpu=lambda: calls.append(("set_mode_gpu",)),
        set_mode_cpu=lambda: calls.append(("set_mode_cpu",)),
    )
    select_device(fake, parse_device("cuda:0"))
    assert calls == [("set_device", 0), ("set_mode_gpu",)]
    calls.clear()
    select_device(fake, parse_device("cpu"))
    assert calls == [("set_mode_cpu",)]


# ------------------------------------------------------------------- 2. counting CUDA devices


def test_driver_probe_runs_in_a_subprocess_and_reports_a_missing_library(tmp_path):
    probe = gpus.probe_driver([str(tmp_path / "libcuda.so.1")])
    assert probe.count is None and probe.driver is None
    assert "cannot load" in probe.error and "libcuda.so.1" in probe.error


def test_driver_probe_reports_a_library_without_the_driver_api():
    libc = ctypes.util.find_library("c")
    probe = gpus.probe_driver([libc])
    assert probe.count is None and probe.lib == libc and "is not the CUDA driver" in probe.error


def test_driver_probe_output_that_is_not_json_is_an_error():
    assert "killed by signal 11" in gpus.parse_probe(-11, "", "Segmentation fault").error
    assert gpus.parse_probe(
        0, '{"count": 3, "driver": 12040, "lib": "libcuda.so.1", "error": null}\n', ""
    ) == gpus.DriverProbe(3, 12040, "libcuda.so.1", None)


def test_count_falls_back_to_proc_and_honours_visible_devices(tmp_path, monkeypatch):
    proc = tmp_path / "gpus"
    for bus in ("0000:01:00.0", "0000:41:00.0", "0000:81:00.0"):
        (proc / bus).mkdir(parents=True)
    missing = [str(tmp_path / "nolib.so")]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    got = gpus.count_gpus(missing, proc)
    assert (got.count, got.source) == (3, "/proc") and "cannot load" in got.note
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-x")
    assert gpus.count_gpus(missing, proc).count == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpus.count_gpus(missing, proc).count == 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    none = gpus.count_gpus(missing, tmp_path / "absent")
    assert (none.count, none.source) == (0, "none")


def test_counting_never_imports_torch_or_caffe_in_the_parent():
    code = (
        "import sys, savedeep.runner.devices as d; d.count_gpus(); d.runtime_for('torch'); d.runtime_for('caffe'); "
        "print(sorted(m for m in ('torch', 'caffe') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_gpu_when_gpus_were_asked_for_is_a_warning(caplog):
    caplog.set_level(logging.INFO, "savedeep")
    none = gpus.GpuCount(0, "none", note="no /proc/driver/nvidia")
    assert gpus.resolve_devices("all", False, 1, none, has_gpu_files=True) == ["cpu"]
    assert [r.levelno for r in caplog.records] == [logging.WARNING] and "no /proc/driver/nvidia" in caplog.text
    caplog.clear()
    assert gpus.resolve_devices("all", False, 2, none, has_gpu_files=False) == ["cpu", "cpu"]
    assert [r.levelno for r in caplog.records] == [logging.INFO]  # a laptop: the CPU is what 'all' means
    caplog.clear()
    gpus.resolve_devices((0,), False, 1, none, has_gpu_files=False)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    with pytest.raises(ConfigError, match="drop --require-gpu"):
        gpus.resolve_devices("all", True, 1, none, has_gpu_files=True)


def test_a_missing_gpu_id_is_explained_as_a_position_in_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-a,GPU-b")
    with pytest.raises(
        ConfigError, match=r"GPU \[2\] does not exist.*positions within CUDA_VISIBLE_DEVICES.*GPU-a,GPU-b"
    ):
        gpus.resolve_devices((0, 2), False, 1, gpus.GpuCount(2, "driver"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(ConfigError, match="PCI bus order as nvidia-smi"):
        gpus.resolve_devices((5,), False, 1, gpus.GpuCount(2, "driver"))


def test_device_order_is_pci_bus_unless_set():
    env: dict[str, str] = {}
    gpus.set_device_order(env)
    assert env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    env = {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}
    gpus.set_device_order(env)
    assert env == {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}


# ------------------------------------------------------------------------------ 3. usable CPUs


def test_usable_cpus_follow_the_affinity_mask():
    code = "from savedeep.runner.devices import usable_cpus; print(usable_cpus())"
    out = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
    assert dv.usable_cpus() == min(len(os.sched_getaffinity(0)), dv.usable_cpus(quota=None))


def test_usable_cpus_follow_the_cgroup_quota(tmp_path):
    # a Slurm job of 16 CPUs on a 128-core node (cgroup v2: the job's cpu.max, its parent unlimited)
    proc = tmp_path / "cgroup"
    proc.write_text("0::/slurm/job_7/step_0\n")
    root = tmp_path / "fs"
    (root / "slurm" / "job_7" / "step_0").mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")
    (root / "slurm" / "job_7" / "cpu.max").write_text("1600000 100000\n")
    assert dv.cgroup_cpu_quota(proc, root) == 16.0
    assert dv.usable_cpus(set(range(128)), 16.0) == 16
    assert dv.usable_cpus(set(range(128)), 1.5) == 2
    assert dv.usable_cpus(set(range(4)), 16.0) == 4
    assert dv.usable_cpus(set(range(128)), None) == 128
    # cgroup v1
    proc.write_text("4:cpu,cpuacct:/job\n")
    (root / "cpu,cpuacct" / "job").mkdir(parents=True)
    (root / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us").write_text("250000\n")
    (root / "cpu,cpuacct" / "job" / "cpu.cfs_period_us").write_text("100000\n")
    assert dv.cgroup_cpu_quota(proc, root) == 2.5
    (root / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us").write_text("-1\n")
    assert dv.cgroup_cpu_quota(proc, root) is None


@pytest.mark.slow  # a real run: seconds
def test_a_run_uses_the_cpus_of_its_affinity(caffenet_dir, photos, tmp_path):
    """`taskset -c 0`: one usable CPU, so one thread for the one CPU consumer (os.cpu_count() would say 2)."""
    images = tmp_path / "imgs"
    images.mkdir()
    for p in photos[:3]:
        (images / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out" / "acts.pk"
    r = subprocess.run(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            "-m",
            "savedeep",
            "run",
            "-m",
            str(caffenet_dir),
            "-b",
            "fc7",
            "-i",
            str(images),
            "-o",
            str(out),
            "--gpus",
            "cpu",
            "--no-progress",
            "--batch-size",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "out" / "acts.log").read_text()
    assert "batch 2; 1 usable CPU(s) (affinity, cgroup quota), 1 thread(s) per consumer" in log
    assert "ready on cpu (torch engine; CUDA_VISIBLE_DEVICES='', as cpu; 1 threads, OMP_NUM_THREADS=1)" in log
    # cpu_consumers auto, through the preflight: one core, so one consumer of one thread; its memory is logged
    assert "cpu_consumers auto: 1 x 1 thread(s), 1 producer(s), 1 writer(s) on 1 cores" in log
    assert "CPU consumers: 1; each holds about" in log
    assert r.stderr.count("cpu_consumers auto:") == 1, r.stderr  # once: the preflight returns it, the run logs it
    # the consumer's start-up, split, measured from the parent's spawn
    startup = re.search(
        r"start-up: (\S+) s from spawn to the first batch forwarded \(process start and imports "
        r"\S+ s, model files read \S+ s, torch imported and the engine built \S+ s, waiting for the "
        r"first batch \S+ s, first forward \S+ s\)",
        log,
    )
    assert startup and float(startup.group(1)) > 0, log
    manifest = json.loads((tmp_path / "out" / "acts.parquet" / "_manifest.json").read_text())
    assert [(d["device"], d["threads"], d["CUDA_VISIBLE_DEVICES"]) for d in manifest["devices"]] == [("cpu", 1, "")]


# ------------------------------------------------------------------ 4. workers and the window


def _caffenet_fc7_rings(gpus: int, cores: int, free: int | None = 64 * 2**30):
    devices = [f"cuda:{i}" for i in range(gpus)]
    w = dv.plan_workers(cores, devices, "auto", "auto", "auto", batches=10_000, shards=1_000)
    in_bytes, out_bytes = 32 * 3 * 227 * 227 * 4, 32 * 4096 * 4  # CaffeNet input and fc7, batch 32
    return w, dv.size_rings(in_bytes, out_bytes, w.producers, gpus, w.writers, None, free)


@pytest.mark.parametrize("gpus, cores, producers, writers", [(8, 64, 48, 8), (8, 128, 112, 8), (4, 32, 24, 4)])
def test_every_producer_of_a_big_node_can_work(gpus, cores, producers, writers):
    w, rings = _caffenet_fc7_rings(gpus, cores)
    assert (w.producers, w.writers) == (producers, writers)
    assert rings.producers == producers and not rings.note
    # every producer holds a credit and an input slot while the consumers and writers have theirs
    assert rings.out_slots >= producers + 2 * gpus + 2 * writers
    assert producers + 2 * gpus <= rings.in_slots <= rings.out_slots  # no input slot beyond the window
    assert w.consumer_threads == max(1, (cores - producers - writers) // gpus)


def test_producers_are_capped_to_what_the_shared_memory_allows(caplog):
    w, rings = _caffenet_fc7_rings(8, 128, free=2 * 2**30)
    in_bytes, out_bytes = 32 * 3 * 227 * 227 * 4, 32 * 4096 * 4
    assert w.producers == 112 and 1 < rings.producers < 112
    assert rings.in_slots == rings.producers + 16 and rings.out_slots >= rings.producers + 32
    assert rings.in_slots * in_bytes + rings.out_slots * out_bytes <= 2 * 2**30 - dv.SHM_RESERVE
    assert f"enough for {rings.producers} of 112 producers" in caplog.text


def test_a_fixed_ring_caps_the_producers(caplog):
    rings = dv.size_rings(M, M, 48, 8, 8, 40, None)
    assert (rings.in_slots, rings.out_slots, rings.producers) == (40, 40, 8)
    assert "window credits for 8 of 48 producers" in caplog.text


def test_cpu_consumers_share_the_cores():
    assert dv.plan_workers(16, ["cpu", "cpu"], "auto", "auto", "auto", 100, 10) == dv.Workers(13, 1, 8, 16)
    assert dv.plan_workers(2, ["cpu"], 4, 2, 3, 1, 1) == dv.Workers(1, 1, 3, 2)


# ------------------------------------------------ 5b. cpu_consumers: auto (NOTE [cpu_consumers: auto])

FC = dv.CpuLoad(forward_s=16e-3, decode_s=1.2e-3, write_s=0.2e-3, memory_per_consumer=900 * M)  # CaffeNet fc6+fc7
CONV = dv.CpuLoad(forward_s=2.3e-3, decode_s=1.2e-3, write_s=4.1e-3, memory_per_consumer=900 * M)  # conv1 float16


def _plan(cores, load, available=256 * 2**30, **kw):
    p = dv.plan_cpu(cores, load, available, 10_000, 1_000, **kw)
    return p.consumers, p.threads, p.producers, p.writers


def test_on_two_cores_the_forward_gets_single_thread_consumers_and_a_write_heavy_run_one():
    """The configurations measured best on 2 cores (RESULTS.md rounds 4 and 5)."""
    assert _plan(2, FC) == (2, 1, 1, 1)
    assert _plan(2, CONV) == (1, 1, 1, 1)
    assert _plan(1, FC) == (1, 1, 1, 1)


@pytest.mark.parametrize("cores", [4, 8, 16, 24, 64, 128])
def test_the_stages_split_the_cores_by_their_cost_and_consumers_stay_few(cores):
    for load in (FC, CONV):
        consumers, threads, producers, writers = _plan(cores, load)
        forward_cores = round(cores * load.forward_s / (load.forward_s + load.decode_s + load.write_s))
        assert consumers <= dv.MAX_CPU_CONSUMERS
        assert forward_cores - threads < consumers * threads <= forward_cores  # the forward's cores, less a remainder
        assert consumers * threads + producers + writers <= cores + 2  # rounding up producers and writers
    assert _plan(16, FC) == (7, 2, 2, 1)
    assert _plan(64, FC) == (7, 8, 5, 1)
    assert _plan(16, CONV)[3] > _plan(16, FC)[3]  # a conv blob needs writers


def test_memory_caps_the_consumers_and_their_threads_go_to_the_others():
    consumers, threads, _, _ = _plan(16, FC, available=4 * 900 * M)  # half of it holds 2 consumers
    assert (consumers, threads) == (2, 7)
    p = dv.plan_cpu(16, FC, 4 * 900 * M, 10_000, 1_000)
    assert "capped from 7 by memory" in p.note and "each holds about 900 MiB" in p.note
    assert "1,800 MiB in all of 3,600 MiB available" in p.note
    assert _plan(16, FC, available=100 * M)[:2] == (1, 15)  # never fewer than one
    assert _plan(16, FC, available=None)[:2] == (7, 2)  # unknown memory: no cap


def test_a_run_too_small_to_pay_for_a_consumers_start_gets_fewer_with_the_threads():
    """Each consumer costs ~1.3 core-s to start (RESULTS.md round 7); the demo's 14 images need 0.2 core-s of forward."""
    p = dv.plan_cpu(2, FC, 256 * 2**30, 2, 1, images=14)
    assert (p.consumers, p.threads) == (1, 2) and "capped from 2 by the work" in p.note
    assert dv.plan_cpu(2, FC, 256 * 2**30, 32, 1, images=1000).consumers == 2  # 16 core-s pays for two
    p = dv.plan_cpu(16, FC, None, 13, 1, images=400)  # 6.4 core-s pays for 4 of the 7
    assert (p.consumers, p.threads) == (4, 3)
    assert dv.plan_cpu(16, FC, None, 10_000, 1_000, images=10_000).consumers == 7  # a long run: no cap
    assert dv.plan_cpu(2, FC, None, 2, 1, consumer_threads=1, images=14).consumers == 2  # threads given: kept


def test_settings_given_are_kept_and_capped_by_the_work():
    assert _plan(16, FC, consumer_threads=4) == (3, 4, 2, 1)
    assert _plan(16, FC, producers=5, writers=3)[2:] == (5, 3)
    p = dv.plan_cpu(64, CONV, None, batches=3, shards=2)
    assert (p.consumers, p.producers, p.writers) == (3, 3, 2)


def test_forward_macs_count_the_layers_up_to_the_last_blob(caffenet_dir):
    from savedeep.caffe.model import load_model

    net = load_model(caffenet_dir, weights=False).net
    conv1 = 96 * 55 * 55 * 3 * 11 * 11
    assert dv.forward_macs(net, ["conv1"]) == conv1
    assert dv.forward_macs(net, ["conv1", "norm1"]) == conv1
    fc6, fc7 = 4096 * 256 * 6 * 6, 4096 * 4096
    total = dv.forward_macs(net, ["fc7", "conv1"])
    assert total - dv.forward_macs(net, ["pool5"]) == fc6 + fc7
    conv2 = 256 * 27 * 27 * 48 * 5 * 5  # group 2: each output sees half the input channels
    assert dv.forward_macs(net, ["conv2"]) - conv1 == conv2


def test_available_memory_is_the_smaller_of_meminfo_and_the_cgroup_limit(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n")
    cg = tmp_path / "cg"
    cg.mkdir()
    assert dv.available_memory_bytes(meminfo, cg) == 20000000 * 1024
    (cg / "memory.max").write_text("max\n")
    assert dv.available_memory_bytes(meminfo, cg) == 20000000 * 1024
    (cg / "memory.max").write_text(f"{8 * 2**30}\n")
    (cg / "memory.current").write_text(f"{2**30}\n")
    assert dv.available_memory_bytes(meminfo, cg) == 7 * 2**30
    assert dv.available_memory_bytes(tmp_path / "none", tmp_path / "none") is None


def test_plan_devices_uses_the_rule_for_auto_and_logs_the_memory_of_a_number(caffenet_dir, tmp_path):
    import savedeep
    from savedeep.caffe.model import load_model
    from savedeep.data.output import ColumnSpec

    net = load_model(caffenet_dir, weights=False).net
    cols = [ColumnSpec("fc6", (4096,), "float32"), ColumnSpec("fc7", (4096,), "float32")]
    load = dv.cpu_load("torch", net, ["fc6", "fc7"], cols, 244 * 10**6, 32)
    cfg = savedeep.load_config(
        None, model=caffenet_dir, images=tmp_path, output=tmp_path / "a.pk", gpus="cpu", blobs=["fc6", "fc7"]
    )
    assert cfg.cpu_consumers == "auto"
    cores = dv.usable_cpus()
    want = dv.plan_cpu(cores, load, dv.available_memory_bytes(), 100, 10)
    devices, workers = dv.plan_devices(cfg, 100, 10, load)
    assert devices == ["cpu"] * want.consumers and workers.consumer_threads == want.threads
    assert (workers.producers, workers.writers) == (want.producers, want.writers)
    assert "cpu_consumers auto:" in workers.note and "each holds about" in workers.note  # the run logs it once
    devices, workers = dv.plan_devices(cfg.replace(cpu_consumers=3), 100, 10, load)
    assert devices == ["cpu"] * 3 and "CPU consumers: 3; each holds about" in workers.note
    assert dv.plan_devices(cfg, 100, 10)[0] == ["cpu"]  # no load known: one consumer


# ----------------------------------------------------------------- 6. driver against runtime


def test_a_driver_too_old_for_the_runtime_stops_the_run_naming_both():
    with pytest.raises(ConfigError) as exc:
        gpus.check_driver(12040, "13.0", "torch 2.13.0", "550.54.15")
    msg = str(exc.value)
    assert "550.54.15" in msg and "CUDA up to 12.4" in msg and "CUDA 13.0" in msg and ">= 580" in msg
    assert "update the NVIDIA driver" in msg and "cu124" in msg
    with pytest.raises(
        ConfigError, match=r"CUDA up to 12\.8, but this pycaffe is built for CUDA 13\.0.*rebuild pycaffe"
    ):
        gpus.check_driver(12080, "13.0", "this pycaffe", None)
    gpus.check_driver(13000, "13.0", "torch", None)
    gpus.check_driver(12080, "12.1", "torch", None)  # minor-version compatibility
    gpus.check_driver(None, "13.0", "torch", None)
    gpus.check_driver(12040, None, "torch (CPU build)", None)


def test_torch_cuda_version_is_read_without_importing_torch():
    import torch

    assert gpus.torch_cuda_version() == torch.version.cuda


# ------------------------------------------------------------------------------ 7. TF32 off


def test_exact_fp32_is_the_global_precision():
    code = textwrap.dedent("""
        import torch
        from savedeep.engines.torch_engine import use_exact_fp32_on_cuda
        b = torch.backends
        # torch 2.11's defaults, or a user's own code: a backend's own TF32 is not undone by the global
        b.cudnn.conv.fp32_precision = b.cudnn.rnn.fp32_precision = b.cuda.matmul.fp32_precision = "tf32"
        b.mkldnn.matmul.fp32_precision = "tf32"
        use_exact_fp32_on_cuda()
        print([b.fp32_precision, b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision,
               b.cuda.matmul.fp32_precision, b.mkldnn.matmul.fp32_precision, torch.get_float32_matmul_precision()])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['ieee', 'ieee', 'ieee', 'ieee', 'ieee', 'highest']"


# ------------------------------------------------------------------------------ 8. set-up stamp


def _stamp(scripts: Path, *args: str) -> str:
    out = subprocess.run(
        ["bash", str(scripts / "setup.sh"), "--print-stamp", *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_setup_stamp_changes_with_the_arch_and_the_cuda_patch(tmp_path):
    import shutil

    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    shutil.copyfile(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    s = tmp_path / "scripts"
    stamps = {
        _stamp(s),
        _stamp(s, "--cuda"),
        _stamp(s, "--cuda", "--arch", "sm_90"),
        _stamp(s, "--cuda", "--arch", "sm_80"),
    }
    assert len(stamps) == 4
    before = _stamp(s, "--cuda", "--arch", "sm_90")
    with open(s / "patch_caffe_cuda.sh", "a") as f:
        f.write("\n# changed\n")
    assert _stamp(s, "--cuda", "--arch", "sm_90") != before
    # the source patch of every build (the protobuf read limit) is part of the stamp of both flavours
    cpu_before, cuda_before = _stamp(s), _stamp(s, "--cuda", "--arch", "sm_90")
    with open(s / "patch_caffe_source.sh", "a") as f:
        f.write("\n# changed\n")
    assert _stamp(s) != cpu_before and _stamp(s, "--cuda", "--arch", "sm_90") != cuda_before
    assert _stamp(s, "--cuda", "--arch", "sm_90") == _stamp(s, "--cuda", "--arch", "sm_90")


# ----------------------------------------------------------------- 10. a dead worker, events flowing


def _chatter(events, seconds: float) -> None:
    """A live worker that keeps the parent busy: an event every 20 ms."""
    import time

    from savedeep.runner.messages import WorkerStats

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        events.put(WorkerStats(role="writer", index=0, busy_s=0.0, wall_s=0.0, items=0))
        time.sleep(0.02)


def _die() -> None:
    os._exit(3)


@pytest.mark.slow  # a real run: seconds
def test_a_dead_worker_is_noticed_while_events_keep_coming():
    from savedeep.errors import WorkerError
    from savedeep.runner.pipeline import Run
    from savedeep._workers._loop import Channels

    ctx = mp.get_context("spawn")
    ch = Channels(
        tasks=None,
        ready=ctx.Queue(),
        done=[],
        events=ctx.Queue(),
        free_in=None,
        free_out=None,
        logs=None,
        window=None,
        stop=None,
        current=ctx.Array("q", [-1, -1], lock=False),
        parent_pid=os.getpid(),
    )
    chatter = ctx.Process(target=_chatter, args=(ch.events, 120.0), daemon=True)
    dead = ctx.Process(target=_die, daemon=True)
    chatter.start()
    dead.start()
    dead.join(60)
    run = Run.__new__(Run)
    run.ch, run.feeder, run.bar, run.stats, run.device_info = ch, None, None, [], {}
    run.rows = run.failures = 0
    run.procs = [(chatter, "writer", 0), (dead, "consumer", 0)]
    run.row_of = {("writer", 0): 0, ("consumer", 0): 1}
    try:
        with pytest.raises(WorkerError, match=r"consumer 0 on cuda:0 .* exited with code 3"):
            run._supervise(["cuda:0"], 0)
        assert chatter.is_alive()  # noticed while the other worker was still sending events
    finally:
        chatter.kill()
        chatter.join(10)
        for q in (ch.events, ch.ready):
            q.cancel_join_thread()
            q.close()


# ------------------------------------------------------------------------------ 9. provenance


def test_gpu_identity_without_the_driver_says_why(tmp_path):
    assert "cannot be loaded" in gpus.gpu_identity(0, [str(tmp_path / "libcuda.so.1")])["error"]
    assert "cuInit" in gpus.gpu_identity(0, [ctypes.util.find_library("c")])["error"]
    assert gpus._uuid_str(bytes(range(16))) == "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f"
    cpu = gpus.consumer_provenance("torch", "cpu", "cpu", 2)
    assert cpu["device"] == "cpu" and cpu["threads"] == 2 and "name" not in cpu


# ------------------------------------------------------------------------------ the GPU check


def test_gpu_check_dry_run_gives_verdicts_and_says_what_it_cannot_check(tmp_path):
    """benchmarks/gpu_check.sh --device cpu, its quick steps: a verdict each, PASS, with what needs a GPU named."""
    env = {**os.environ, "OUT": str(tmp_path)}
    r = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--steps", "probe,visible"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "VERDICT probe: PASS" in r.stdout and "VERDICT visible: PASS" in r.stdout
    assert "NOT CHECKED" in r.stdout and "empty + --require-gpu: exit 2" in r.stdout
    verdicts = json.loads((tmp_path / "gpu_check.json").read_text())["verdicts"]
    assert [(v["step"], v["status"]) for v in verdicts] == [("probe", "PASS"), ("visible", "PASS")]
