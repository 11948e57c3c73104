"""Which GPUs this machine has and which CUDA each engine needs: discovery only, no planning.

Everything here runs in the parent without importing torch or pycaffe and
without creating a CUDA context (a parent holding one would sit on GPU 0 and,
under EXCLUSIVE_PROCESS, lock the consumers out).

- :func:`count_gpus` asks the CUDA driver (``cuInit`` + ``cuDeviceGetCount``
  through ctypes) in a short subprocess, which honours ``CUDA_VISIBLE_DEVICES``,
  cgroup/container device restrictions and MIG; where the driver library cannot
  be loaded it falls back to ``/proc/driver/nvidia/gpus``.
- :func:`resolve_devices` turns the config's ``gpus`` into device names;
  :func:`check_driver` / :func:`runtime_for` refuse a driver too old for the
  engine's CUDA runtime before anything starts.
- :func:`consumer_provenance` (in a consumer) is what the manifest records of
  its GPU.

Split from the run's CPU and worker planning (:mod:`savedeep.runner.devices`),
which imports it: the engines need the discovery (pycaffe's device count) and
must not import the runner.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from savedeep.errors import ConfigError

log = logging.getLogger(__name__)

PROC_GPUS = Path("/proc/driver/nvidia/gpus")
PROC_DRIVER_VERSION = Path("/proc/driver/nvidia/version")
CUDA_LIBS = ("libcuda.so.1", "libcuda.so")
PROBE_TIMEOUT_S = 60.0

# ---------------------------------------------------------------------------------------- GPUs


# Runs in `python -I -S -c`: only ctypes and json, never torch or pycaffe, and the context (if
# cuInit makes one) dies with the subprocess. Prints one JSON object.
_PROBE = r"""
import ctypes, json, sys
libs = json.loads(sys.argv[1])
out = {"lib": None, "count": None, "driver": None, "error": None}
errors = []
for name in libs:
    try:
        cu = ctypes.CDLL(name)
    except OSError as exc:
        errors.append(f"cannot load {name}: {exc}")
        continue
    out["lib"] = name
    try:
        get_version, init, get_count = cu.cuDriverGetVersion, cu.cuInit, cu.cuDeviceGetCount
    except AttributeError as exc:
        out["error"] = f"{name} is not the CUDA driver: {exc}"
        break
    v = ctypes.c_int(0)
    if get_version(ctypes.byref(v)) == 0:
        out["driver"] = v.value
    rc = init(0)
    if rc == 100:      # CUDA_ERROR_NO_DEVICE: the driver works and shows this process no GPU
        out["count"] = 0
    elif rc != 0:
        out["error"] = f"cuInit failed with CUDA error {rc}"
    else:
        n = ctypes.c_int(0)
        rc = get_count(ctypes.byref(n))
        if rc == 0:
            out["count"] = n.value
        else:
            out["error"] = f"cuDeviceGetCount failed with CUDA error {rc}"
    break
else:
    out["error"] = "; ".join(errors) or "no library to try"
print(json.dumps(out))
"""


@dataclass(frozen=True)
class DriverProbe:
    """What the CUDA driver said in the probe subprocess: device count and driver CUDA version, or why not."""

    count: int | None  # CUDA devices visible to this process; None: the driver could not tell
    driver: int | None  # cuDriverGetVersion, e.g. 12040 for CUDA 12.4; None: unknown
    lib: str | None
    error: str | None


def probe_driver(
    libs: Sequence[str] = CUDA_LIBS, timeout: float = PROBE_TIMEOUT_S, env: Mapping[str, str] | None = None
) -> DriverProbe:
    """Ask the CUDA driver for its device count and version, in a subprocess (never in this process)."""
    try:
        r = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _PROBE, json.dumps(list(libs))],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(os.environ if env is None else env),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return DriverProbe(None, None, None, f"the CUDA probe did not finish: {exc}")
    return parse_probe(r.returncode, r.stdout, r.stderr)


def parse_probe(returncode: int, stdout: str, stderr: str) -> DriverProbe:
    """The DriverProbe from the probe subprocess's exit status and output."""
    line = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    try:
        d = json.loads(line)
        if not isinstance(d, dict):
            raise ValueError(line)
    except ValueError:
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
        return DriverProbe(None, None, None, f"the CUDA probe failed ({how}): {stderr.strip()[-300:] or line!r}")
    count = d.get("count")
    driver = d.get("driver")
    return DriverProbe(
        count if isinstance(count, int) and count >= 0 else None,
        driver if isinstance(driver, int) and driver > 0 else None,
        d.get("lib"),
        d.get("error"),
    )


def proc_gpu_count(root: Path = PROC_GPUS) -> int | None:
    """Physical NVIDIA GPUs listed by the kernel driver, or None where /proc has no such entry."""
    try:
        return len(os.listdir(root))
    except OSError:
        return None


def visible_entries(env: Mapping[str, str] | None = None) -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` as a list of entries (indices, ``GPU-<uuid>``, ``MIG-<uuid>``); None if unset."""
    raw = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    entries = [e.strip() for e in raw.split(",")]
    out: list[str] = []
    for e in entries:
        # CUDA stops at the first invalid entry: empty, or a negative index such as -1
        if not e or re.fullmatch(r"-\d+", e):
            break
        out.append(e)
    return out


def nvidia_device_files(dev: Path = Path("/dev")) -> bool:
    """Whether this machine has NVIDIA device files (/dev/nvidia0, ...): a GPU node, whatever CUDA says."""
    try:
        return any(re.fullmatch(r"nvidia\d+", p.name) for p in dev.iterdir())
    except OSError:
        return False


@dataclass(frozen=True)
class GpuCount:
    """CUDA devices this process may use, and how that was found out."""

    count: int
    source: str  # "driver", "/proc", "CUDA_VISIBLE_DEVICES", "none"
    driver: int | None = None  # the driver's CUDA version (cuDriverGetVersion) when known
    note: str = ""  # why the driver was not used, when it was not


def count_gpus(libs: Sequence[str] = CUDA_LIBS, proc: Path = PROC_GPUS) -> GpuCount:
    """CUDA devices visible to this process, counted by the driver in a subprocess; /proc as a fallback."""
    visible = visible_entries()
    if visible is not None and not visible:
        return GpuCount(0, "CUDA_VISIBLE_DEVICES", note="CUDA_VISIBLE_DEVICES hides every GPU")
    probe = probe_driver(libs)
    if probe.count is not None:
        return GpuCount(probe.count, "driver", probe.driver)
    n = proc_gpu_count(proc)
    if n is None:
        return GpuCount(0, "none", probe.driver, note=probe.error or "")
    if visible is not None:
        n = min(n, len(visible))
    return GpuCount(n, "/proc", probe.driver, note=probe.error or "")


def device_index(device: str) -> int | None:
    """The N of ``cuda:N``; None for the CPU."""
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else None


def local_device(device: str) -> str:
    """The device a consumer uses inside its process: ``cuda:0`` (it sees only its own GPU) or ``cpu``."""
    return "cuda:0" if device.startswith("cuda") else "cpu"


def resolve_devices(
    gpus: str | tuple[int, ...],
    require_gpu: bool,
    cpu_consumers: int,
    available: GpuCount | int | None = None,
    has_gpu_files: bool | None = None,
) -> list[str]:
    """The device of each consumer: ``cuda:N`` per GPU asked for, or ``cpu`` x cpu_consumers.

    ``N`` is a position in this process's ``CUDA_VISIBLE_DEVICES`` (all GPUs when it is unset,
    in PCI bus order: the numbers nvidia-smi shows).
    """
    if gpus == "cpu":
        if require_gpu:
            raise ConfigError(
                "require_gpu is set but gpus is 'cpu'; ask for GPUs (--gpus 0,1 or all) or drop --require-gpu"
            )
        return ["cpu"] * cpu_consumers
    found = (
        count_gpus()
        if available is None
        else (available if isinstance(available, GpuCount) else GpuCount(available, "given"))
    )
    n = found.count
    asked = gpus if gpus == "all" else ",".join(map(str, gpus))
    if n == 0:
        why = found.note or "no CUDA device"
        if require_gpu:
            raise ConfigError(
                f"GPUs were asked for (gpus: {asked}) but this process sees none ({why}); run on a GPU node, "
                "check CUDA_VISIBLE_DEVICES, or drop --require-gpu to fall back to the CPU"
            )
        gpu_node = nvidia_device_files() if has_gpu_files is None else has_gpu_files
        if gpus != "all" or gpu_node:
            log.warning(
                "GPUs were asked for (gpus: %s) but this process sees none (%s): running %d consumer(s) "
                "on the CPU instead; use --require-gpu to stop instead",
                asked,
                why,
                cpu_consumers,
            )
        else:
            log.info("no GPU visible: %d CPU consumer(s)", cpu_consumers)
        return ["cpu"] * cpu_consumers
    # the config's only strings are "cpu" (returned above) and "all"; anything else is a tuple of ids
    ids = list(range(n)) if isinstance(gpus, str) else list(gpus)
    bad = [i for i in ids if i >= n or i < 0]
    if bad:
        vis = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ConfigError(
            f"gpus: GPU {bad} does not exist; this process sees {n} GPU(s): 0..{n - 1}. GPU ids are positions "
            "within CUDA_VISIBLE_DEVICES ("
            + (f"now {vis!r}" if vis is not None else "unset: every GPU, in PCI bus order as nvidia-smi numbers them")
            + ")"
        )
    return [f"cuda:{i}" for i in ids]


def set_device_order(env: dict[str, str] | None = None) -> None:
    """CUDA_DEVICE_ORDER=PCI_BUS_ID when unset, so that GPU ids are nvidia-smi's (CUDA's default is fastest first)."""
    (os.environ if env is None else env).setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")


def driver_release(path: Path = PROC_DRIVER_VERSION) -> str | None:
    """The kernel driver's release (e.g. '550.54.15') from /proc, or None."""
    try:
        m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9]+\.[0-9.]+)", path.read_text())
    except OSError:
        return None
    return m.group(1) if m else None


# ------------------------------------------------------------------ driver against runtime

# The oldest driver of each CUDA major release (minor-version compatibility within a major).
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580"}


def cuda_version_str(v: int) -> str:
    """12040 -> '12.4' (the encoding of cuDriverGetVersion / cudaRuntimeGetVersion)."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def torch_cuda_version() -> str | None:
    """``torch.version.cuda`` read from torch/version.py without importing torch; None for a CPU build."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        try:
            text = (Path(loc) / "version.py").read_text()
        except OSError:
            continue
        m = re.search(r"^cuda\s*(?::\s*[^=]+)?=\s*['\"]([0-9.]+)['\"]", text, re.M)
        return m.group(1) if m else None
    return None


def caffe_has_cuda(caffe: Any) -> bool:
    """Whether this pycaffe (the module, or its package directory) was compiled with CUDA.

    A CPU_ONLY build aborts the process on set_device. Reads the package's libraries only:
    the parent asks this without importing caffe.
    """
    pkg = caffe if isinstance(caffe, Path) else Path(caffe.__file__).resolve().parent
    candidates = list(pkg.glob("*.so*")) + list(pkg.glob("**/libcaffe*.so*"))
    for libs in pkg.parent.glob("*.libs"):  # auditwheel puts bundled libraries beside the package
        candidates += list(libs.glob("libcaffe*.so*"))
    # A CUDA build imports cuBLAS and the CUDA runtime; their symbol names sit in the
    # library's dynamic string table (also after auditwheel renames the libraries).
    markers = (b"cublasCreate_v2", b"cudaGetDeviceCount", b"libcudart")
    for path in candidates:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if any(m in data for m in markers):
            return True
    return False


def caffe_cuda_version() -> str | None:
    """The CUDA runtime a CUDA build of pycaffe links (the nvidia-cuda-runtime wheel), without importing caffe."""
    import importlib.metadata as md
    import importlib.util

    try:
        spec = importlib.util.find_spec("caffe")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    if not caffe_has_cuda(Path(spec.origin).resolve().parent):
        return None  # a CPU-only build: no CUDA runtime to match
    for dist in (
        "nvidia-cuda-runtime",
        "nvidia-cuda-runtime-cu13",
        "nvidia-cuda-runtime-cu12",
        "nvidia-cuda-runtime-cu11",
    ):
        try:
            v = md.version(dist)
        except md.PackageNotFoundError:
            continue
        m = re.match(r"(\d+)\.(\d+)", v)
        if m:
            return f"{m.group(1)}.{m.group(2)}"
    return None


def check_driver(driver: int | None, runtime: str | None, what: str, release: str | None = None) -> None:
    """ConfigError when the driver's CUDA version is older than the runtime's major release needs."""
    if driver is None or not runtime:
        return
    major = int(runtime.split(".")[0])
    if driver // 1000 >= major:
        return
    need = MIN_DRIVER.get(major)
    older = (
        f"pip install torch --index-url https://download.pytorch.org/whl/cu{driver // 1000}{(driver % 1000) // 10}"
        if what.startswith("torch")
        else f"rebuild pycaffe (scripts/setup.sh --cuda) with a CUDA {driver // 1000}.x toolkit"
    )
    raise ConfigError(
        f"the NVIDIA driver{f' {release}' if release else ''} supports CUDA up to {cuda_version_str(driver)}, but "
        f"{what} is built for CUDA {runtime}" + (f", which needs driver >= {need}" if need else "") + ": update the "
        f"NVIDIA driver, or use a build for CUDA {driver // 1000}.x ({older}), or run with --gpus cpu"
    )


def runtime_for(engine: str) -> tuple[str | None, str]:
    """The CUDA runtime version the engine's library was built for, and what it is, in words."""
    if engine == "torch":
        import importlib.metadata as md

        try:
            ver = md.version("torch")
        except md.PackageNotFoundError:
            ver = "?"
        return torch_cuda_version(), f"torch {ver}"
    return caffe_cuda_version(), "this pycaffe"


# ------------------------------------------------------------------ provenance (in a consumer)


def _uuid_str(raw: bytes, prefix: str = "GPU-") -> str:
    h = raw.hex()
    return f"{prefix}{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def gpu_identity(ordinal: int = 0, libs: Sequence[str] = CUDA_LIBS) -> dict[str, object]:
    """Name, UUID and driver CUDA version of this process's GPU ``ordinal``, from the CUDA driver API.

    Only for a consumer, which owns its GPU (it initialises the driver in this process).
    """
    import ctypes

    for name in libs:
        try:
            cu = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if cu.cuInit(0) != 0:
                return {"error": "cuInit failed"}
            dev = ctypes.c_int(0)
            if cu.cuDeviceGet(ctypes.byref(dev), ordinal) != 0:
                return {"error": f"cuDeviceGet({ordinal}) failed"}
            buf = ctypes.create_string_buffer(256)
            cu.cuDeviceGetName(buf, 256, dev)
            uuid = ctypes.create_string_buffer(16)
            get_uuid = getattr(cu, "cuDeviceGetUuid_v2", None) or cu.cuDeviceGetUuid
            out: dict[str, object] = {"name": buf.value.decode(errors="replace")}
            if get_uuid(uuid, dev) == 0:
                out["uuid"] = _uuid_str(uuid.raw)
            v = ctypes.c_int(0)
            if cu.cuDriverGetVersion(ctypes.byref(v)) == 0:
                out["driver_cuda"] = cuda_version_str(v.value)
            out["driver"] = driver_release()
            return out
        except AttributeError as exc:
            return {"error": f"{name}: {exc}"}
    return {"error": "the CUDA driver library cannot be loaded"}


def consumer_provenance(engine: str, device: str, local: str, threads: int | None) -> dict[str, object]:
    """What the manifest records of one consumer: its device and, on a GPU, the GPU and CUDA versions."""
    info: dict[str, object] = {
        "device": device,
        "engine": engine,
        "pid": os.getpid(),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "threads": threads,
    }
    if not local.startswith("cuda"):
        return info
    info["local_device"] = local
    info.update(gpu_identity(0))
    if engine == "torch":
        import torch

        info["cuda_runtime"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        try:
            info["torch_uuid"] = str(torch.cuda.get_device_properties(0).uuid)
        except (AttributeError, RuntimeError):
            pass
    else:
        info["cuda_runtime"] = caffe_cuda_version()
        info["cudnn"] = "not used (pycaffe is built with USE_CUDNN := 0)"
    return info
