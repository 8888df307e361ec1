"""The machine, decided in one place: which device, which precision, how to name the hardware, and
whether a model fits in its memory.

    from machine import pick_device, pick_dtype, autocast_context
    device = pick_device("auto")          # cuda > mps > cpu; a device asked for by name must exist
    dtype = pick_dtype(device)            # fp32 on CPU/MPS; bf16 on Ampere+ GPUs, fp16 (+ GradScaler) before
    with autocast_context(device, dtype):
        ...

Training, sampling, the benchmark and the notebooks import these, and model_gpt2.py its memory guard
(check_fits, which takes a GPTConfig); nothing here runs at import.
"""

import contextlib
import platform
from contextlib import nullcontext
from pathlib import Path

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


# ---------------------------------------------------------------------------- memory
# A config.json can come from any Hub repo, and a flag can ask for any size: the memory a model needs
# follows from its shape alone, so a model that cannot fit is refused before anything is allocated.


class ModelTooLargeError(ValueError):
    """A model that would not fit in this machine's memory, refused before anything was allocated."""


def count_params(config) -> int:
    """GPT(config).num_params() without building it: the embeddings (lm_head tied to wte), then
    per block 12 C^2 weights (qkv 3, proj 1, MLP 4 + 4) and 13 C biases and LayerNorm parameters."""
    C = config.n_embd
    per_vector = 2 if config.bias else 1  # a LayerNorm's weight (and bias)
    block = 12 * C * C + (9 * C if config.bias else 0) + 2 * per_vector * C
    return (config.vocab_size + config.block_size) * C + config.n_layer * block + per_vector * C


def estimate_memory(config, training: bool, batch_size: int = 1, bytes_per_value: int = 4) -> int:
    """Bytes a process needs for this model, a deliberately low estimate (refuse only what surely fails).
    Inference: the weights twice (loading reads them, then copies them in) and the KV cache.
    Training: weights, gradients and AdamW's two moments (4 copies), plus the activations kept for
    the backward pass, ~16 values per position and layer and 3 per logit. Each layer's Python
    modules also take ~40 KB whatever its size (measured): a million tiny layers fill memory too."""
    params, modules = count_params(config), 32_000 * config.n_layer
    positions = batch_size * config.block_size
    if not training:
        kv_cache = 2 * config.n_layer * positions * config.n_embd
        return modules + bytes_per_value * (2 * params + kv_cache)
    activations = positions * (16 * config.n_layer * config.n_embd + 3 * config.vocab_size)
    return modules + bytes_per_value * (4 * params + activations)


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes free for a new allocation on `device` (the GPU's free memory; for the CPU and MPS the
    system's MemAvailable, lowered by a container's cgroup limit); None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    free = []
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as f:
            free.append(1024 * int(next(line.split()[1] for line in f if line.startswith("MemAvailable:"))))
    for limit, usage in (("memory.max", "memory.current"), ("memory.limit_in_bytes", "memory.usage_in_bytes")):
        with contextlib.suppress(OSError, ValueError):  # cgroup v2, then v1; "max" means no limit
            cg = Path("/sys/fs/cgroup")
            free.append(int(cg.joinpath(limit).read_text()) - int(cg.joinpath(usage).read_text()))
    if not free:
        with contextlib.suppress(ImportError):  # macOS, Windows
            import psutil

            free.append(psutil.virtual_memory().available)
    return min(free) if free else None


def check_fits(
    config, device="cpu", training: bool = False, batch_size: int = 1, processes: int = 1, what="", fix=""
) -> None:
    """Raise ModelTooLargeError saying how much memory `config` needs (in each of `processes` sharing the
    device) and how much this machine has."""
    need, have = processes * estimate_memory(config, training, batch_size), available_memory(device)
    if have is None or need <= have:
        return
    task = "train" if training else "load"
    contents = "weights, gradients, optimizer state, activations" if training else "weights, KV cache"
    raise ModelTooLargeError(
        f"{what or 'this model'} ({count_params(config) / 1e6:,.0f}M parameters: {config.n_layer} layers, "
        f"{config.n_embd} dim) needs about {need / 1e9:,.1f} GB to {task} ({contents}); this machine has "
        f"{have / 1e9:,.1f} GB available on {torch.device(device).type}. {fix or 'Use a smaller model.'}"
    )
