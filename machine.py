"""The machine, decided in one place: which device, which precision, how to name the hardware.

    from machine import pick_device, pick_dtype, autocast_context
    device = pick_device("auto")          # cuda > mps > cpu; a device asked for by name must exist
    dtype = pick_dtype(device)            # fp32 on CPU/MPS; bf16 on Ampere+ GPUs, fp16 (+ GradScaler) before
    with autocast_context(device, dtype):
        ...

Training, sampling, the benchmark and the notebooks import these; nothing here runs at import.
"""

import platform
from contextlib import nullcontext

import torch


class DeviceError(ValueError):
    """A device asked for that this machine does not have; the message says what it has."""


def pick_device(requested: str = "auto") -> str:
    """auto = cuda > mps > cpu; a device asked for by name must exist here (DeviceError otherwise)."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    kind, _, index = requested.partition(":")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if kind not in available or (index and not (kind == "cuda" and index.isdigit())):
        raise DeviceError(f"--device {requested!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    if not available[kind]:
        raise DeviceError(f"--device {requested}: this machine has no {kind.upper()} device; use --device cpu or auto")
    if index and int(index) >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise DeviceError(f"--device {requested}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    return requested


def pick_dtype(device: str, requested: str = "auto") -> torch.dtype:
    """fp32 on CPU/MPS (a CPU without bf16 units runs bf16 far slower); bf16 on Ampere+, else fp16."""
    if requested != "auto":
        return getattr(torch, requested)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    return torch.float32


def autocast_context(device: str, dtype: torch.dtype):
    """Mixed precision where it applies (a 16-bit dtype), a do-nothing context otherwise."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def enable_tf32(device: str) -> None:
    """On CUDA, let fp32 matmuls use TF32 tensor cores (Ampere+): several times faster, ample precision here."""
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def sync(device: str) -> None:
    """Wait for the device's queued work (a timing must not stop the clock before the GPU is done)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def hardware_name(device: str) -> str:
    """What the model card and the logs call the hardware: the GPU's name, or the CPU's model and threads."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    if device != "cpu":
        return device
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:  # not Linux
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"
