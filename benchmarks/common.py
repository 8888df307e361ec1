"""What every benchmark shares: timing on a device (waiting for a GPU), the matmul peak that MFU divides by,
FLOPs per token, percentiles, and the model shapes the benchmarks compare (nanoGPT's).
"""

import statistics
import time

import torch

from machine import sync
from model_gpt2 import GPT

NANOGPT_CPU = dict(
    n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0, bias=False, optimizer="adamw"
)  # nanoGPT's train.py: no biases
SHAKESPEARE_CHAR = dict(n_layer=6, n_head=6, n_embd=384, block_size=256)  # nanoGPT's 10.7M model


def timed(device, fn, *args):
    """Seconds that fn(*args) takes, waiting for a GPU to finish."""
    sync(device)
    t0 = time.perf_counter()
    fn(*args)
    sync(device)
    return time.perf_counter() - t0


def matmul_peak(device, dtype, n=2048) -> float:
    """FLOP/s of an n x n matmul: the most this device does on the densest op there is."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def run(k):
        for _ in range(k):
            a @ b

    run(1)  # warm up (thread pool, cuBLAS handle)
    reps = 1  # enough matmuls per timing that a GPU's launch and sync overheads do not count
    while timed(device, run, reps) < 0.05:
        reps *= 2
    # the best of 10: a peak is what the device can do, and a shared machine only ever slows a timing down
    return 2 * n**3 * reps / min(timed(device, run, reps) for _ in range(10))


def flops_per_token(model: GPT) -> int:
    c = model.config
    return 6 * model.num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * c.block_size


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def median_seconds(device, fn, reps=30) -> float:
    fn()  # warm up
    return statistics.median(timed(device, fn) for _ in range(reps))
