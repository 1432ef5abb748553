"""What the hardware is good at: device choice, whether bf16 pays off, and the matmul peak MFU is measured against."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import time

import torch

from pocketchat.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None


def check_compile(device: torch.device) -> None:
    """torch.compile on CPU generates C++: fail up front, not minutes into a run, when there is no compiler."""
    cxx = os.environ.get("CXX", "g++")
    if device.type == "cpu" and shutil.which(cxx) is None:
        raise UserError(f"--compile=true needs a C++ compiler on CPU ({cxx!r} not found): install g++ "
                        "(or set $CXX), or pass --compile=false")


@functools.lru_cache(maxsize=None)
def matmul_flops(device_type: str, dtype: torch.dtype, n: int = 0) -> float:
    """Measured dense matmul FLOP/s: the peak that MFU is quoted against, and the bf16-or-not probe."""
    n = n or (8192 if device_type == "cuda" else 1024)
    a = torch.randn(n, n, device=device_type, dtype=dtype)
    b = torch.randn(n, n, device=device_type, dtype=dtype)
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    a @ b
    sync()
    iters, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.2 or iters < 3:
        a @ b
        iters += 1
    sync()
    return 2 * n**3 * iters / (time.perf_counter() - start)


def autocast_dtype(device: torch.device, choice: str = "auto") -> torch.dtype | None:
    """The dtype for autocast, or None for plain fp32.

    `auto` picks bf16 on GPUs that support it, and on CPUs only where bf16 matmuls are really faster: CPUs
    without AVX512-BF16/AMX emulate bf16 and run it ~100x slower than fp32."""
    if choice == "float32":
        return None
    if choice == "bfloat16":
        return torch.bfloat16
    if choice != "auto":
        raise UserError(f"dtype must be auto, float32 or bfloat16, got {choice!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() and matmul_flops("cpu", torch.bfloat16) > 1.2 * matmul_flops("cpu", torch.float32) else None


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX. A timing probe alone misleads on a busy machine; the flag is the ground truth."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def reset_peak_rss() -> None:
    """Start a new window for `peak_rss_mib` (Linux: writing 5 to /proc/self/clear_refs resets VmHWM). Where
    that is not possible the window is the process's life so far."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    """The process's peak resident memory since `reset_peak_rss`, in MiB (CPU RAM; GPU memory is not counted)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # elsewhere: the peak of the whole process (KiB on Linux, bytes on macOS)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if os.uname().sysname == "Darwin" else 1024)


def machine_description() -> str:
    """ "Intel Xeon ... (2 cores), no GPU": the CPU model name from /proc/cpuinfo where there is one."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return f"{cpu} ({os.cpu_count()} cores), " + (", ".join(gpus) if gpus else "no GPU")
