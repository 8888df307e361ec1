"""Training speed: train_gpt2's own step (StepTimer), timed for each preset with its MFU, split by op kind in a
CPU profile, and torch.compile's cost and gain against eager. bench.py and benchmarks/nanogpt.py use these.
"""

import statistics
import time

import torch

from benchmarks.common import NANOGPT_CPU, flops_per_token, timed
from machine import pick_dtype, sync
from schedule import lr_factor
from train_config import PRESETS, config_from_preset
from train_gpt2 import Machine, build_trainer, train_step


class StepTimer:
    """train_gpt2's own training step (train_step: micro-batches, unscale, clip, AdamW or Muon at the
    schedule's learning rate) on a new model, timed: a change to the step is measured as it is made."""

    def __init__(self, cfg, data, vocab, device):
        machine = Machine(ddp=False, rank=0, world=1, device=device, dtype=pick_dtype(device, cfg.dtype))
        self.trainer, self.device, self.n = build_trainer(cfg, machine, data, vocab), device, 0
        self.model = self.trainer.model

    def step(self, phases=None):
        """One optimizer step; with a dict `phases`, add each phase's seconds to it (syncing a GPU)."""
        t = time.perf_counter()

        def mark(name):
            nonlocal t
            sync(self.device)
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
            t = time.perf_counter()

        cfg = self.trainer.cfg
        train_step(self.trainer, self.n, lr_factor(self.n, cfg), mark if phases is not None else None)
        self.n += 1

    def ms_per_step(self, steps, warmup=2) -> float:
        """The median of `steps` step times after `warmup` steps: robust to a shared machine's spikes."""
        for _ in range(warmup):
            self.step()
        return 1000 * statistics.median(timed(self.device, self.step) for _ in range(steps))


def bench_training(device, data, vocab, peak, quick) -> dict:
    """Each preset's real training step. On a CPU the big presets run at batch 1 (full batches take minutes)."""
    out = {}
    for name in PRESETS:
        reduced = device == "cpu" and name != "cpu"
        cfg = config_from_preset(name, device=device, **(dict(batch_size=1, grad_accum_steps=1) if reduced else {}))
        tr = StepTimer(cfg, data, vocab, device)
        steps = 2 if reduced and name == "gpt2-124m" else 5 if quick else 20
        ms = tr.ms_per_step(steps, warmup=1 if reduced else 3)
        tokens_per_sec = 1000 * cfg.batch_size * cfg.grad_accum_steps * cfg.block_size / ms
        out[name] = {
            "params": tr.model.num_params(),
            "flops_per_token": flops_per_token(tr.model),
            "batch_size": cfg.batch_size,
            "grad_accum_steps": cfg.grad_accum_steps,
            "block_size": cfg.block_size,
            "reduced_batch": reduced,
            "ms_per_step": round(ms, 2),
            "tokens_per_sec": round(tokens_per_sec),
            "mfu": round(tokens_per_sec * flops_per_token(tr.model) / peak, 4),
        }
    return out


def op_times(tr: StepTimer, steps=5) -> dict:
    """ms per step of a CPU profile's op self times, summed by kind."""
    by_kind = dict.fromkeys(["matmul", "attention", "optimizer", "other"], 0.0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            tr.step()
    for ev in prof.events():
        root = ev  # the top-level call this op ran under: a Linear, attention, an autograd node, AdamW.step...
        while root.cpu_parent is not None:
            root = root.cpu_parent
        kind = "matmul" if ev.name in ("aten::mm", "aten::addmm", "aten::bmm") else "other"
        if kind == "other" and root.name.startswith("Optimizer.step"):
            kind = "optimizer"
        elif kind == "other" and "attention" in root.name.lower():
            kind = "attention"
        by_kind[kind] += ev.self_cpu_time_total / 1000 / steps  # us -> ms per step
    return {k: round(v, 2) for k, v in by_kind.items()}


def compiled_timer(overrides: dict, data, vocab, device) -> tuple[StepTimer, float]:
    """A StepTimer of the `cpu` preset with `overrides`, compiled (as train_gpt2.py does, in build_trainer,
    on a training batch), and the seconds compiling and its first step took."""
    torch._dynamo.reset()  # a model compiled earlier in this process would make compiling look free
    t0 = time.perf_counter()
    compiled = StepTimer(config_from_preset("cpu", device=device, **overrides, compile=True), data, vocab, device)
    compiled.step()
    return compiled, time.perf_counter() - t0


def bench_compile(device, data, vocab, quick) -> dict | None:
    """--compile's cost (seconds to compile, as train_gpt2.py does: compile_or_eager, then the first
    batch) and gain (ms per step) against eager, at nanoGPT's CPU configuration and the cpu preset.
    Eager and compiled steps are timed in turns (three each), so a shared machine's load moves both."""
    if quick:
        return None
    out = {}
    for name, overrides in (("nanogpt_cpu", NANOGPT_CPU), ("cpu", {})):
        eager = StepTimer(config_from_preset("cpu", device=device, **overrides), data, vocab, device)
        compiled, compile_s = compiled_timer(overrides, data, vocab, device)
        times = {"eager": [], "compiled": []}
        for _ in range(3):
            times["eager"].append(eager.ms_per_step(15, warmup=2))
            times["compiled"].append(compiled.ms_per_step(15, warmup=2))
        row = {k: [round(x, 2) for x in v] for k, v in times.items()}
        ratio = statistics.median(a / b for a, b in zip(times["compiled"], times["eager"]))
        out[name] = {**row, "compile_seconds": round(compile_s, 1), "ratio": round(ratio, 3)}
    return out
