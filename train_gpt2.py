"""Train a character-level GPT-2 on a prepared text, keeping the best model by validation loss.

    python data/prepare.py                                   # once: tiny Shakespeare -> data/
    python train_gpt2.py --preset cpu --out-dir out          # a few minutes on a 2-core CPU
    python train_gpt2.py --preset shakespeare-char --out-dir out-sc        # a GPU (Colab T4, A100...)
    python train_gpt2.py --out-dir out --resume              # continue a run from its last evaluation
    torchrun --standalone --nproc_per_node=2 train_gpt2.py --preset cpu --grad-accum-steps 2 --out-dir out-ddp  # data parallel
    python train_gpt2.py --help                              # every flag, with its default

The out-dir holds the best-by-validation model in Hugging Face format (config.json,
model.safetensors, tokenizer.json, README.md: `GPT.from_pretrained(out_dir)`, app.py and
transformers' `pipeline("text-generation", model=out_dir)` take the folder),
resume.safetensors (the latest state: weights, optimizer, step, RNG, config), metrics.jsonl
(one JSON object per log or eval line) and loss.png.
"""

import argparse
import dataclasses
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import (
    atomic_write_text,
    read_resume_meta,
    read_resume_state,
    restore_resume_state,
    save_best_model,
    save_resume_state,
    update_model_info,
)
from cli import add_flags, arg
from data.prepare import DataError, load_meta, load_split
from hub import HubError, check_repo_id, push_model, ready_to_upload
from machine import DeviceError, autocast_context, enable_tf32, hardware_name, pick_device, pick_dtype
from model_gpt2 import (
    GPT,
    DamagedFileError,
    GPTConfig,
    ModelTooLargeError,
    check_fits,
    load_model,
    readable_safetensors,
)
from muon import build_optimizers

# the architecture's flags are GPTConfig's fields (the vocabulary's size comes from the data); a resumed run
# must keep all but dropout, which only training uses
ARCH_FIELDS = tuple(f.name for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size")
FIXED_ON_RESUME = tuple(name for name in ARCH_FIELDS if name != "dropout")


@dataclass
class TrainConfig:
    """Every field is a command-line flag: --n-layer, --learning-rate, ..."""

    # data and output
    data_dir: str = arg("data", "folder written by data/prepare.py")
    out_dir: str = arg("out", "best model + resume state + metrics go here")
    resume: bool = arg(False, "continue the run saved in out_dir")
    # model (GPT-2 architecture)
    n_layer: int = arg(4, "transformer blocks")
    n_head: int = arg(4, "attention heads per block")
    n_embd: int = arg(128, "embedding width (channels)")
    block_size: int = arg(64, "context length in characters")
    dropout: float = arg(0.0, "dropout probability in training (0 = none)")
    bias: bool = arg(True, "biases in Linears and LayerNorms, as GPT-2")
    # optimisation
    batch_size: int = arg(12, "sequences per micro-batch per process")
    grad_accum_steps: int = arg(1, "micro-batches per step, summed over all processes")
    optimizer: str = arg("adamw", "adamw (every parameter) or muon (Muon for the blocks' matrices, AdamW for the rest)")
    learning_rate: float = arg(1e-3, "peak learning rate")
    min_lr: float = arg(1e-4, "the schedule ends here (Muon's ends at the same fraction of --muon-lr)")
    muon_lr: float = arg(0.02, "Muon's peak learning rate (--optimizer muon; --learning-rate is AdamW's)")
    muon_momentum: float = arg(0.95, "Muon's momentum (Nesterov)")
    muon_weight_decay: float = arg(0.0, "Muon's decoupled weight decay")
    schedule: str = arg("cosine", "cosine (decay from the warmup's end) or wsd (constant, then linear to min_lr)")
    cooldown_frac: float = arg(0.4, "wsd: the last fraction of the steps decays linearly to min_lr")
    warmup_iters: int = arg(100, "linear warmup steps")
    max_iters: int = arg(2000, "optimizer steps in total")
    max_seconds: float = arg(
        0.0, "train for this long (at most --max-iters steps), ending the schedule in time; 0 = off"
    )
    weight_decay: float = arg(0.1, "AdamW's decoupled weight decay on matrices and embeddings")
    beta1: float = arg(0.9, "AdamW's beta1")
    beta2: float = arg(0.99, "AdamW's beta2")
    grad_clip: float = arg(1.0, "clip the global gradient norm to this (0 = off)")
    # evaluation and logging
    eval_interval: int = arg(250, "steps between evaluations (and checkpoints)")
    eval_iters: int = arg(20, "batches per split in each evaluation")
    log_interval: int = arg(10, "steps between log lines")
    sample_chars: int = arg(300, "characters of each sample printed at the end (0 = none)")
    # system
    device: str = arg("auto", "auto = cuda > mps > cpu")
    dtype: str = arg("auto", "auto = bf16 on CUDA with compute capability >= 8, fp16 on older CUDA, fp32 otherwise")
    compile: bool = arg(False, "torch.compile the model (falls back to eager if compilation fails)")
    seed: int = arg(1337, "random seed: weights, batches, dropout")
    max_nonfinite_steps: int = arg(5, "stop after this many non-finite losses in a row")
    push_to_hub: str = arg("", "ORG/NAME: push the best model to the Hub at the end")


# Flags override the preset; the preset overrides the defaults above.
PRESETS = {
    # a small model that trains on a 2-core CPU in 3 minutes (README, Results; tuned with bench.py): nanoGPT's CPU
    # shape with twice the context and a bigger batch, Muon for the blocks' matrices, a constant learning rate
    # then a linear cooldown; 1,600 steps sized for ~100 ms a step (a quiet 2-core Xeon); a slower or busier
    # machine stops at 180 s with the cooldown done
    "cpu": dict(
        n_layer=4,
        n_head=4,
        n_embd=128,
        block_size=128,
        dropout=0.0,
        batch_size=16,
        optimizer="muon",
        muon_lr=0.02,
        learning_rate=4e-3,
        min_lr=4e-4,
        schedule="wsd",
        cooldown_frac=0.4,
        warmup_iters=100,
        max_iters=1600,
        max_seconds=180,
        eval_interval=400,
        eval_iters=20,
    ),
    # nanoGPT's shakespeare-char GPU recipe: 10.7M parameters
    "shakespeare-char": dict(
        n_layer=6,
        n_head=6,
        n_embd=384,
        block_size=256,
        dropout=0.2,
        batch_size=64,
        learning_rate=1e-3,
        min_lr=1e-4,
        warmup_iters=100,
        max_iters=5000,
        eval_interval=250,
        eval_iters=200,
    ),
    # the course's GPT-2 124M (12 layers, 12 heads, 768 dim, context 1024)
    "gpt2-124m": dict(
        n_layer=12,
        n_head=12,
        n_embd=768,
        block_size=1024,
        dropout=0.2,
        batch_size=8,
        grad_accum_steps=4,
        learning_rate=3e-4,
        min_lr=3e-5,
        warmup_iters=200,
        max_iters=3000,
        eval_interval=250,
        eval_iters=50,
    ),
}


# settings of the command, never of the run: --resume doesn't take them from the saved run ...
COMMAND_ONLY = ("resume", "out_dir", "push_to_hub")
# ... nor where it runs, though a change of these is still listed in the log
MACHINE_ONLY = ("device", "compile")


class ConfigError(ValueError):
    """A bad flag, data set or out-dir, found before any work; the message says how to fix it."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped training after a whole step, its state saved; the message says how to go on."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


# ---------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """One flag per TrainConfig field, named after it, with its type, default and help."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None, help="start from a recipe; flags override it")
    add_flags(ap, TrainConfig)
    return ap


def parse_args(argv=None) -> TrainConfig:
    """Flags over defaults. The defaults are TrainConfig's, then the --preset's; with --resume, the
    saved run's settings instead of a preset: `--out-dir out --resume` continues the run as it was
    started, and only the flags typed now (say, a larger --max-iters) change it. Where it runs
    (--device, --compile) and --push-to-hub are this machine's choice, never taken from the run."""
    ap = build_parser()
    known = ap.parse_known_args(argv)[0]
    if known.preset and known.resume:
        ap.error("--preset and --resume: a resumed run keeps the settings it was saved with; drop --preset")
    if known.preset:
        ap.set_defaults(**PRESETS[known.preset])
    saved_path = Path(known.out_dir) / "resume.safetensors"
    if known.resume and saved_path.is_file():
        saved = read_resume_meta(saved_path)["config"]
        skip = COMMAND_ONLY + MACHINE_ONLY
        ap.set_defaults(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__ and k not in skip})
    args = vars(ap.parse_args(argv))
    args.pop("preset")
    return TrainConfig(**args)


def config_from_preset(preset: str | None = None, **overrides) -> TrainConfig:
    """The Python API's equivalent of `--preset NAME --flag value ...`."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    return TrainConfig(**{**(PRESETS[preset] if preset else {}), **overrides})


# ---------------------------------------------------------------------------- checks


def model_config(cfg: TrainConfig, vocab_size: int) -> GPTConfig:
    """The GPTConfig that cfg's architecture flags describe, for a vocabulary of vocab_size characters."""
    try:
        return GPTConfig(vocab_size=vocab_size, **{name: getattr(cfg, name) for name in ARCH_FIELDS})
    except ValueError as e:
        raise ConfigError(f"{e} (set with --{str(e).split()[0].replace('_', '-')})") from e


def check_config(cfg: TrainConfig, world_size: int) -> None:
    for f in dataclasses.fields(TrainConfig):  # nan passes every comparison below, and inf breaks the schedule
        if f.type is float and not math.isfinite(getattr(cfg, f.name)):
            raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number, got {getattr(cfg, f.name)}")
    positive = ("batch_size", "grad_accum_steps", "max_iters", "eval_interval", "eval_iters", "log_interval")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.learning_rate > 0 or not 0 <= cfg.min_lr <= cfg.learning_rate:
        raise ConfigError(
            f"need 0 < --learning-rate and 0 <= --min-lr <= --learning-rate, got {cfg.learning_rate} and {cfg.min_lr}"
        )
    if cfg.warmup_iters < 0 or cfg.grad_clip < 0 or cfg.weight_decay < 0:
        raise ConfigError("--warmup-iters, --grad-clip and --weight-decay must be >= 0")
    if not (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1):
        raise ConfigError(f"--beta1 and --beta2 must be in [0, 1), got {cfg.beta1} and {cfg.beta2}")
    if cfg.grad_accum_steps % world_size:
        raise ConfigError(
            f"--grad-accum-steps {cfg.grad_accum_steps} must be a multiple of the number of processes ({world_size}): "
            "it counts micro-batches per step over all processes"
        )
    if cfg.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype must be auto, float32, bfloat16 or float16, got {cfg.dtype!r}")
    check_schedule_and_optimizer(cfg)
    if cfg.push_to_hub:  # fail now, not after hours of training
        try:
            check_repo_id(cfg.push_to_hub, "--push-to-hub")
            ready_to_upload(None)
        except HubError as e:
            raise ConfigError(str(e)) from e


def check_memory(gpt_config: GPTConfig, cfg: TrainConfig, device: str) -> None:
    """Refuse a model that cannot train in this machine's memory, before anything is allocated: the
    weights, gradients, AdamW state and activations all follow from the flags."""
    on_cpu = not device.startswith("cuda")
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if on_cpu else 1  # torchrun's CPU processes share RAM
    fix = "Choose a smaller --n-layer, --n-embd, --block-size or --batch-size (or a --preset)."
    try:
        check_fits(gpt_config, device, True, cfg.batch_size, processes, what="this model", fix=fix)
    except ModelTooLargeError as e:
        raise ConfigError(str(e)) from None


def check_schedule_and_optimizer(cfg: TrainConfig) -> None:
    choices = {"optimizer": ("adamw", "muon"), "schedule": ("cosine", "wsd")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"--{name} must be {' or '.join(allowed)}, got {getattr(cfg, name)!r}")
    if not (cfg.muon_lr > 0 and 0 <= cfg.muon_momentum < 1 and cfg.muon_weight_decay >= 0):
        raise ConfigError("need --muon-lr > 0, 0 <= --muon-momentum < 1 and --muon-weight-decay >= 0")
    if not 0 <= cfg.cooldown_frac <= 1:
        raise ConfigError(f"--cooldown-frac is a fraction of the steps, from 0 to 1; got {cfg.cooldown_frac}")
    if not 0 <= cfg.max_seconds < math.inf:
        raise ConfigError(f"--max-seconds must be >= 0 (0 = no time budget), got {cfg.max_seconds}")


def check_out_dir(out_dir: Path, resume: bool) -> None:
    """Refuse to overwrite anything: a fresh run needs an empty or new folder; --resume needs a run."""
    if resume:
        if not (out_dir / "resume.safetensors").is_file():
            raise ConfigError(
                f"--resume: {out_dir} holds no training run (no resume.safetensors). Drop --resume to start one."
            )
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out-dir {out_dir} is a file; choose a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if (out_dir / "resume.safetensors").exists() or (out_dir / "config.json").exists():
            raise ConfigError(
                f"{out_dir} already holds a training run: pass --resume to continue it, or choose another --out-dir"
            )
        raise ConfigError(f"{out_dir} is not empty and holds other files; choose an empty or new --out-dir")


# ---------------------------------------------------------------------------- data


def batch_starts(n_tokens: int, block_size: int, batch_size: int, seed_words: list[int]) -> np.ndarray:
    """Random window starts, a pure function of the seed words: batches need no saved state, so a
    resumed run and every process of a distributed run draw exactly the batches they should."""
    return np.random.default_rng(seed_words).integers(0, n_tokens - block_size, size=batch_size)


def make_batch(data: np.ndarray, starts: np.ndarray, block_size: int, device: str):
    """(B, T) inputs and the (B, T) next characters as targets."""
    windows = np.stack([data[s : s + block_size + 1] for s in starts]).astype(np.int64)
    xy = torch.from_numpy(windows)
    if device.startswith("cuda"):
        xy = xy.pin_memory().to(device, non_blocking=True)
    else:
        xy = xy.to(device)
    return xy[:, :-1], xy[:, 1:]


def lr_factor(it: int, cfg: TrainConfig, max_iters: int | None = None) -> float:
    """The schedule as a fraction of each group's peak learning rate. Linear warmup (non-zero at
    step 0), then cosine: decay to min_lr at max_iters; wsd: constant, then a linear cooldown whose
    last step (max_iters - 1) runs at min_lr. max_iters: the run's length, --max-iters unless a time
    budget set it."""
    max_iters = cfg.max_iters if max_iters is None else max_iters
    floor = cfg.min_lr / cfg.learning_rate
    if it < cfg.warmup_iters:
        return (it + 1) / (cfg.warmup_iters + 1)
    if cfg.schedule == "wsd":
        start = cooldown_start(cfg, max_iters)
        if it < start:
            return 1.0
        return floor + (1 - floor) * max(0, max_iters - 1 - it) / max(1, max_iters - 1 - start)
    if it >= max_iters:
        return floor
    ratio = (it - cfg.warmup_iters) / max(1, max_iters - cfg.warmup_iters)
    return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1 - floor)


def get_lr(it: int, cfg: TrainConfig, max_iters: int | None = None) -> float:
    """AdamW's learning rate at step it (Muon's is lr_factor x --muon-lr)."""
    return cfg.learning_rate * lr_factor(it, cfg, max_iters)


def cooldown_start(cfg: TrainConfig, max_iters: int) -> int:
    """The first step whose learning rate depends on the run's length: a time budget may move
    max_iters until then (wsd: the cooldown's start; cosine: the warmup's end)."""
    if cfg.schedule == "wsd":
        return max_iters - round(cfg.cooldown_frac * max_iters)
    return cfg.warmup_iters


def steps_in_budget(cfg: TrainConfig, step: int, spent: float, pace: float) -> int:
    """The run's length that ends by --max-seconds: spent seconds so far, pace seconds per step."""
    fit = step + int(max(0.0, cfg.max_seconds - spent) / max(pace, 1e-9))
    return max(step + 1, min(cfg.max_iters, fit))


@torch.no_grad()
def estimate_loss(model, batches, autocast) -> float:
    """Mean loss over a fixed list of (x, y) batches, in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    losses = []
    for x, y in batches:
        with autocast:
            losses.append(model(x, y)[1].item())
    model.train(was_training)
    return float(np.mean(losses))


@torch.no_grad()
def evaluate_split(model, data: np.ndarray, block_size: int, batch_size: int, device: str, autocast) -> float:
    """Loss per character over a whole split: consecutive non-overlapping windows, each character
    predicted once (the first characters of each window see a shorter context)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    starts = list(range(0, len(data) - 1, block_size))
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        lengths = [min(block_size, len(data) - 1 - s) for s in chunk]
        for length in sorted(set(lengths)):  # the last window may be shorter
            group = [s for s, n in zip(chunk, lengths) if n == length]
            x, y = make_batch(data, np.array(group), length, device)
            with autocast:
                logits = model(x)[0]
            total += torch.nn.functional.cross_entropy(
                logits.float().flatten(0, 1), y.flatten(), reduction="sum"
            ).item()
            count += y.numel()
    model.train(was_training)
    return total / count


# ---------------------------------------------------------------------------- training


class Logger:
    """A tqdm bar on a terminal, plain lines otherwise; every record also goes to metrics.jsonl."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, start_step: int, enabled: bool, progress: bool | None):
        self.enabled, self.cfg, self.start_step = enabled, cfg, start_step
        self.path = out_dir / "metrics.jsonl"
        self.bar = None
        self.t0, self.steps_since = time.perf_counter(), 0  # training throughput since the last log line
        if not enabled:
            return
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.max_iters, initial=start_step, unit="step", dynamic_ncols=True)

    def record(self, rec: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if "val_loss" in rec:
            self.print(
                f"step {rec['step']}: train loss {rec['train_loss']:.4f}, val loss {rec['val_loss']:.4f}"
                + (" (best, saved)" if rec.get("saved") else "")
            )
        elif self.bar is not None:
            self.bar.set_postfix(
                loss=f"{rec['train_loss']:.4f}", lr=f"{rec['lr']:.2e}", tok_s=f"{rec['tokens_per_sec']:,.0f}"
            )
        else:
            self.print(
                f"step {rec['step']}: loss {rec['train_loss']:.4f}, lr {rec['lr']:.2e}, {rec['tokens_per_sec']:,.0f} tokens/s, {rec['ms_per_step']:.1f} ms/step"
            )

    def step(self, step: int, loss: torch.Tensor | None, lr: float, last_step: int) -> None:
        """A step done (loss None: its update was skipped); every log_interval steps, a log line."""
        if self.bar is not None:
            self.bar.update(1)
        if loss is None:
            return
        self.steps_since += 1
        if step % self.cfg.log_interval == 0 or step == last_step:
            dt = time.perf_counter() - self.t0
            tokens_per_sec = self.steps_since * tokens_per_step(self.cfg) / dt
            self.record(
                {
                    "step": step,
                    "train_loss": loss.item(),
                    "lr": lr,
                    "tokens_per_sec": tokens_per_sec,
                    "ms_per_step": 1000 * dt / self.steps_since,
                }
            )
            self.t0, self.steps_since = time.perf_counter(), 0

    @contextmanager
    def paused(self):
        """Time spent inside (evaluations, checkpoints) does not count as training throughput."""
        t = time.perf_counter()
        yield
        self.t0 += time.perf_counter() - t

    def print(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


@dataclass
class Machine:
    """Where a run executes, decided once: its processes (one, or torchrun's), device and precision."""

    ddp: bool
    rank: int
    world: int
    device: str
    dtype: torch.dtype

    @property
    def master(self) -> bool:  # only rank 0 writes files and prints
        return self.rank == 0

    @property
    def autocast(self):
        return autocast_context(self.device, self.dtype)


@dataclass
class Trainer:
    """What one training step needs: the model, what the step calls (compiled, DDP-wrapped), the
    optimizers, the GradScaler and the training tokens. bench.py times its step too."""

    cfg: TrainConfig
    machine: Machine
    model: GPT
    forward: torch.nn.Module
    optimizers: list
    scaler: torch.amp.GradScaler
    train_data: np.ndarray


@dataclass
class Run:
    """A run in progress: its trainer, where it writes, and what the loop carries from step to step."""

    trainer: Trainer
    out_dir: Path
    vocab: str
    dataset: str
    val_data: np.ndarray
    eval_batches: dict
    log: "Logger"
    step: int = 0
    max_iters: int = 0  # --max-iters, or fewer to fit --max-seconds
    best_val: float = math.inf
    bad_steps: int = 0
    spent_before: float = 0.0  # training seconds of the run before a resume
    t_start: float = 0.0

    def seconds(self) -> float:
        return self.spent_before + time.perf_counter() - self.t_start


def train(cfg: TrainConfig, progress: bool | None = None) -> dict:
    """Train as the command line does; returns a summary (best val loss, steps, training seconds, out_dir)."""
    # every check before any work
    world = int(os.environ.get("WORLD_SIZE", 1)) if "RANK" in os.environ else 1
    check_config(cfg, world)
    meta, train_data, val_data = load_data(cfg)
    resume = check_resume(cfg, meta)
    machine = set_up_machine(cfg)
    run = start_run(cfg, machine, meta, train_data, val_data, resume, progress)
    signals, restore_signals = catch_stop_signals()
    try:
        while run.step < run.max_iters:
            factor = plan_step(run)  # the learning rate's share of its peak; a time budget may end the run here
            if run.step >= run.max_iters:
                break
            loss, finite = train_step(run.trainer, run.step, factor)  # micro-batches, unscale, clip, step
            check_finite(run, loss, finite)
            run.step += 1
            run.log.step(run.step, loss if finite else None, cfg.learning_rate * factor, run.max_iters)
            if run.step % cfg.eval_interval == 0 or run.step == run.max_iters:
                with run.log.paused():  # evaluation time is not training throughput
                    evaluate_and_save(run)
            if run.step < run.max_iters and all_agree(bool(signals), machine.ddp, machine.device):
                stop_at(run, finite, signals[0] if signals else signal.SIGTERM)
        train_seconds = run.seconds() - run.spent_before
    finally:
        restore_signals()
        run.log.close()
        if machine.ddp:
            dist.destroy_process_group()
    return finish(run, train_seconds)


def load_data(cfg: TrainConfig):
    """meta.json and the two splits of cfg.data_dir, each checked to hold more than one context."""
    meta = load_meta(Path(cfg.data_dir))
    train_data, val_data = load_split(Path(cfg.data_dir), "train"), load_split(Path(cfg.data_dir), "val")
    for name, data in (("train", train_data), ("val", val_data)):
        if len(data) <= cfg.block_size + 1:
            raise ConfigError(
                f"the {name} split has {len(data)} tokens, too few for --block-size {cfg.block_size}; "
                "use a smaller --block-size or a longer text"
            )
    return meta, train_data, val_data


def check_resume(cfg: TrainConfig, meta: dict) -> tuple[dict, dict] | None:
    """Every check of a resume in one place: the out-dir holds a run (or, without --resume, nothing), and
    the run's architecture, optimizer and vocabulary are this run's. Returns the saved (meta, tensors)."""
    out_dir = Path(cfg.out_dir)
    check_out_dir(out_dir, cfg.resume)
    if not cfg.resume:
        return None
    saved_meta, tensors = read_resume_state(out_dir / "resume.safetensors")
    saved = saved_meta["config"]
    changed = [
        f"--{k.replace('_', '-')} (saved {saved[k]}, given {getattr(cfg, k)})"
        for k in FIXED_ON_RESUME
        if saved[k] != getattr(cfg, k)
    ]
    if changed:
        raise ConfigError(
            f"--resume: the run in {out_dir} has a different architecture: {', '.join(changed)}. "
            "Pass the saved values or choose another --out-dir."
        )
    if saved.get("optimizer", "adamw") != cfg.optimizer:
        raise ConfigError(
            f"--resume: the run in {out_dir} was trained with --optimizer {saved.get('optimizer', 'adamw')}; "
            f"its saved state does not fit {cfg.optimizer}. Drop --optimizer, or start a new run in another --out-dir."
        )
    if saved_meta["vocab"] != meta["vocab"]:
        raise ConfigError(
            f"--resume: the data in {cfg.data_dir} has a different vocabulary ({meta['vocab_size']} characters) "
            f"from the model in {out_dir} ({len(saved_meta['vocab'])}). Resume with the data it was trained on."
        )
    return saved_meta, tensors


def set_up_machine(cfg: TrainConfig) -> Machine:
    """The processes (torchrun sets RANK and WORLD_SIZE), the device of this one, and the precision."""
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    device = pick_device(cfg.device)
    if ddp:
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    enable_tf32(device)
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    return Machine(ddp, rank, world, device, pick_dtype(device, cfg.dtype))


def build_trainer(cfg: TrainConfig, machine: Machine, train_data: np.ndarray, vocab: str) -> Trainer:
    """A new model (the same initial weights on every process), its optimizers and GradScaler."""
    gpt_config = model_config(cfg, len(vocab))
    check_memory(gpt_config, cfg, machine.device)
    torch.manual_seed(cfg.seed)
    model = GPT(gpt_config, vocab=vocab).to(machine.device)
    device_type = machine.device.split(":")[0]
    optimizers = build_optimizers(model, cfg, device_type)  # [AdamW] or [AdamW, Muon]
    scaler = torch.amp.GradScaler(device_type, enabled=machine.dtype == torch.float16)

    def wrap(module):  # DDP all-reduces the gradients of every process's backward
        if not machine.ddp:
            return module
        return DDP(module, device_ids=[int(machine.device.split(":")[1])] if device_type == "cuda" else None)

    if cfg.compile:
        batch = make_batch(train_data, np.zeros(cfg.batch_size, dtype=np.int64), cfg.block_size, machine.device)
        forward = compile_or_eager(model, batch, machine.autocast, wrap)
    else:
        forward = wrap(model)
    return Trainer(cfg, machine, model, forward, optimizers, scaler, train_data)


def start_run(cfg, machine: Machine, meta: dict, train_data, val_data, resume, progress) -> Run:
    """The trainer, restored from the saved state when resuming; the log; the fixed evaluation batches."""
    trainer = build_trainer(cfg, machine, train_data, meta["vocab"])
    out_dir = Path(cfg.out_dir)
    run = Run(
        trainer,
        out_dir,
        meta["vocab"],
        meta.get("name", Path(cfg.data_dir).name),
        val_data,
        eval_batches(cfg, train_data, val_data, machine.device),
        log=None,
        max_iters=cfg.max_iters,
    )
    if resume is not None:
        saved_meta, tensors = resume
        restore_resume_state(tensors, saved_meta, trainer.model, trainer.optimizers, trainer.scaler)
        run.step, run.best_val = saved_meta["step"], saved_meta["best_val_loss"]
        if not readable_safetensors(out_dir / "model.safetensors"):  # lost or damaged: the next evaluation rewrites it
            run.best_val = math.inf
        if cfg.max_seconds > 0:
            run.spent_before = saved_meta.get("train_seconds", 0.0)
            if (
                saved_meta["config"]["max_iters"] == cfg.max_iters
            ):  # the length the budget fitted, unless asked for more
                run.max_iters = min(cfg.max_iters, saved_meta.get("max_iters", cfg.max_iters))
    # dropout masks differ between processes; only rank 0's RNG was saved, the others restart theirs
    if resume is None or machine.rank:
        torch.manual_seed(cfg.seed + 7919 * machine.rank + run.step)
    run.log = Logger(cfg, out_dir, run.step, enabled=machine.master, progress=progress)
    if machine.master:
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            trim_metrics(out_dir / "metrics.jsonl", run.step)
        print_header(run, resume[0] if resume else None)
    trainer.forward.train()
    run.t_start = time.perf_counter()
    return run


def eval_batches(cfg: TrainConfig, train_data, val_data, device: str) -> dict:
    """Fixed evaluation batches: the same ones at every evaluation, so losses are comparable."""
    out = {}
    for split_id, (name, data) in enumerate((("train", train_data), ("val", val_data))):
        seeds = ([cfg.seed, 2**32 - 1, split_id, i] for i in range(cfg.eval_iters))
        out[name] = [
            make_batch(data, batch_starts(len(data), cfg.block_size, cfg.batch_size, s), cfg.block_size, device)
            for s in seeds
        ]
    return out


def trim_metrics(path: Path, step: int) -> None:
    """Forget the log lines written after the state a run resumes from."""
    lines = path.read_text().splitlines() if path.exists() else []
    atomic_write_text(path, "".join(line + "\n" for line in lines if json.loads(line)["step"] <= step))


def print_header(run: Run, saved_meta: dict | None) -> None:
    """What runs where: device, precision, processes, batch; the model; what changed since a resume."""
    cfg, m, log = run.trainer.cfg, run.trainer.machine, run.log
    amp = {torch.float32: "off (fp32)", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + GradScaler"}
    log.print(
        f"device {m.device} ({hardware_name(m.device)}), dtype {str(m.dtype).replace('torch.', '')}, AMP "
        f"{amp[m.dtype]}, {m.world} process(es), grad accumulation {cfg.grad_accum_steps} x batch {cfg.batch_size} "
        f"x context {cfg.block_size} = {tokens_per_step(cfg):,} tokens/step"
    )
    budget = f" or {cfg.max_seconds:g} s of training" if cfg.max_seconds > 0 else ""
    log.print(
        f"model: {run.trainer.model.num_params() / 1e6:.2f}M parameters, {cfg.n_layer} layers, {cfg.n_head} heads, "
        f"{cfg.n_embd} dim; {'resuming at step ' + str(run.step) if saved_meta else 'starting'} -> {cfg.max_iters} "
        f"steps{budget}; {cfg.optimizer}, {cfg.schedule} schedule"
    )
    if saved_meta is not None:
        saved = saved_meta["config"]
        changed = [
            f"--{k.replace('_', '-')} {saved[k]} -> {v}"
            for k, v in asdict(cfg).items()
            if k not in COMMAND_ONLY and k in saved and saved[k] != v
        ]
        if changed:
            log.print("changed since the run was saved: " + ", ".join(changed))


def tokens_per_step(cfg: TrainConfig) -> int:
    return cfg.batch_size * cfg.block_size * cfg.grad_accum_steps  # over all processes


def plan_step(run: Run) -> float:
    """The learning rate of the next step as a share of its peak. Under --max-seconds the run's length
    follows the measured pace until the cooldown starts (every process takes the slowest one's clock, so
    all stop at the same step); run.max_iters <= run.step then means no time is left."""
    cfg, m = run.trainer.cfg, run.trainer.machine
    if cfg.max_seconds <= 0:
        return lr_factor(run.step, cfg, run.max_iters)
    seconds = time.perf_counter() - run.t_start
    if m.ddp:
        t = torch.tensor([seconds], dtype=torch.float64, device=m.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        seconds = t.item()
    steps_done = run.step - (run.log.start_step if run.log else 0)
    pace = seconds / steps_done if steps_done > 0 else 0.0  # evaluations included
    run.max_iters = fit_to_budget(cfg, run.step, run.max_iters, run.spent_before + seconds, pace)
    return min(lr_factor(run.step, cfg, run.max_iters), budget_factor(cfg, run.spent_before + seconds))


def train_step(trainer: Trainer, step: int, factor: float, mark=None) -> tuple[torch.Tensor, bool]:
    """One optimizer step at `factor` x each group's peak learning rate: the micro-batches of this
    process (each loss divided by their count over all processes), then unscale, clip and step, unless
    the loss is not finite (then the update is skipped). Returns (mean loss, finite). mark(name), if
    given, is called after each phase (data, forward, backward, optimizer): bench.py times them."""
    cfg, m = trainer.cfg, trainer.machine
    mark = mark or (lambda name: None)
    for opt in trainer.optimizers:
        for group in opt.param_groups:
            group["lr"] = group["peak_lr"] * factor
    accum = cfg.grad_accum_steps // m.world  # micro-batches per process
    loss_sum = torch.zeros((), device=m.device)
    for micro in range(accum):
        global_micro = m.rank * accum + micro  # process r takes micro-batches r*accum ... r*accum+accum-1
        seeds = [cfg.seed, step, global_micro]
        x, y = make_batch(
            trainer.train_data,
            batch_starts(len(trainer.train_data), cfg.block_size, cfg.batch_size, seeds),
            cfg.block_size,
            m.device,
        )
        mark("data")
        # DDP all-reduces the gradients only on the last micro-step
        sync = nullcontext() if (not m.ddp or micro == accum - 1) else trainer.forward.no_sync()
        with sync:
            with m.autocast:
                loss = trainer.forward(x, y)[1] / accum  # the gradient is the mean over micro-batches
            mark("forward")
            trainer.scaler.scale(loss).backward()
            mark("backward")
        loss_sum += loss.detach()
    if m.ddp:
        dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
    finite = bool(torch.isfinite(loss_sum))  # one host sync per step; GradScaler's step syncs anyway
    if finite:
        clip_and_step(trainer.model, trainer.optimizers, trainer.scaler, cfg.grad_clip)
    else:
        for opt in trainer.optimizers:
            opt.zero_grad(set_to_none=True)
    mark("optimizer")
    return loss_sum, finite


def check_finite(run: Run, loss: torch.Tensor, finite: bool) -> None:
    """A non-finite loss skipped its update (the step still counts, its evaluation still runs); too many
    in a row stop the run with what out_dir holds and how to go on."""
    if finite:
        run.bad_steps = 0
        return
    run.bad_steps += 1
    warnings.warn(
        f"step {run.step}: non-finite loss ({loss.item()}), update skipped ({run.bad_steps} in a row)", stacklevel=1
    )
    if run.bad_steps >= run.trainer.cfg.max_nonfinite_steps:
        raise FloatingPointError(divergence_message(run.out_dir, run.step, run.bad_steps))


def evaluate_and_save(run: Run) -> None:
    """Loss on the fixed batches; the model when validation improved; the resume state when finite."""
    t, m = run.trainer, run.trainer.machine
    losses = {name: estimate_loss(t.model, batches, m.autocast) for name, batches in run.eval_batches.items()}
    improved = losses["val"] < run.best_val  # never "improves" on a nan
    if improved:
        run.best_val = losses["val"]
        t.model.train_info = train_info(run, losses)
    finite = math.isfinite(losses["val"]) and math.isfinite(losses["train"])
    if m.master:
        if improved:
            save_best_model(t.model, run.out_dir)
        if finite:  # non-finite losses mean broken weights: keep the last good state to resume from
            save_resume_state(run.out_dir / "resume.safetensors", t.model, t.optimizers, t.scaler, resume_meta(run))
        else:
            warnings.warn(f"step {run.step}: evaluation is not finite; resume.safetensors kept as it was", stacklevel=1)
    run.log.record(
        {
            "step": run.step,
            "train_loss": losses["train"],
            "val_loss": losses["val"],
            "lr": get_lr(run.step, t.cfg, run.max_iters),
            "tokens_per_sec": None,
            "saved": improved,
        }
    )


def resume_meta(run: Run) -> dict:
    """The JSON half of the resume state (the tensors are the model's and the optimizers')."""
    cfg = run.trainer.cfg
    return {
        "step": run.step,
        "best_val_loss": run.best_val,
        "config": asdict(cfg),
        "vocab": run.vocab,
        "world_size": run.trainer.machine.world,
        "max_iters": run.max_iters,
        "train_seconds": run.seconds(),
    }


def train_info(run: Run, losses: dict) -> dict:
    """The facts about training saved with the best model (config.json's train_info, the model card)."""
    cfg, m = run.trainer.cfg, run.trainer.machine
    return {
        "step": run.step,
        "val_loss": round(losses["val"], 4),
        "train_loss": round(losses["train"], 4),
        "tokens_seen": run.step * tokens_per_step(cfg),
        "hardware": hardware_name(m.device),
        "world_size": m.world,
        "dtype": str(m.dtype).replace("torch.", ""),
        "dataset": run.dataset,
        "train_config": asdict(cfg),
    }


def stop_at(run: Run, finite: bool, signum: int):
    """After SIGINT/SIGTERM: save the state at this step (unless its loss was not finite: the last good one
    stays), then stop with the command that continues the run."""
    t, cfg = run.trainer, run.trainer.cfg
    resume = run.out_dir / "resume.safetensors"
    if t.machine.master:
        if finite:
            save_resume_state(resume, t.model, t.optimizers, t.scaler, resume_meta(run))
        plot_losses(run.out_dir)
    name = signal.Signals(signum).name
    if not resume.is_file():  # a non-finite first step: nothing good to save
        raise Interrupted(f"{name} at step {run.step}: no good state to save yet; start the run again.", signum)
    saved = read_resume_meta(resume)["step"] if t.machine.master else run.step
    best = (
        f", the best model so far (val loss {run.best_val:.4f}) in {run.out_dir}" if math.isfinite(run.best_val) else ""
    )
    raise Interrupted(
        f"{name} at step {run.step} of {cfg.max_iters}: the training state at step {saved} is saved in {resume}"
        f"{best}. Continue with:\n    {resume_command(cfg, t.machine.world)}",
        signum,
    )


def finish(run: Run, train_seconds: float) -> dict:
    """The best model scored on the whole validation split, the loss plot, the card, samples, the push."""
    cfg, m = run.trainer.cfg, run.trainer.machine
    summary = {
        "out_dir": str(run.out_dir),
        "steps": run.step,
        "best_val_loss_estimate": run.best_val,
        "train_seconds": train_seconds,
    }
    if not m.master:
        return summary
    best = load_model(run.out_dir, m.device)
    full_val = evaluate_split(best, run.val_data, cfg.block_size, cfg.batch_size * 4, m.device, m.autocast)
    plot_losses(run.out_dir)
    update_model_info(run.out_dir, val_loss_full=round(full_val, 4))
    summary["best_val_loss"] = full_val
    print(
        f"best model: val loss {full_val:.4f} on the whole validation split ({len(run.val_data):,} characters), "
        f"at step {best.train_info['step']}; saved in {run.out_dir}; training took {train_seconds:.0f} s"
    )
    for i in range(2 if cfg.sample_chars > 0 else 0):
        print(f"--- sample {i + 1} (temperature 0.8) ---")
        print(best.generate_text(best.tokenizer.start_text, cfg.sample_chars, temperature=0.8, seed=cfg.seed + i))
    if cfg.push_to_hub:
        push_model(run.out_dir, cfg.push_to_hub)
    return summary


def divergence_message(out_dir: Path, step: int, bad_steps: int) -> str:
    """What a diverged run left in out_dir, read from the folder itself, and how to go on."""
    msg = f"{bad_steps} non-finite losses in a row at step {step}: training diverged. "
    fix = "lower --learning-rate (or --grad-clip)"
    resume = out_dir / "resume.safetensors"
    if not resume.is_file():
        return msg + (
            f"No evaluation finished before, so no model was saved in {out_dir}: {fix} and start again "
            f"with another --out-dir (or after deleting {out_dir})."
        )
    saved = read_resume_meta(resume)
    if (out_dir / "model.safetensors").is_file():
        msg += f"The best model (val loss {saved['best_val_loss']:.4f}) is intact in {out_dir}. "
    command = f"python train_gpt2.py --out-dir {out_dir} --resume --learning-rate LR"
    return msg + f"resume.safetensors holds the last good state (step {saved['step']}): {fix}, then `{command}`."


def catch_stop_signals():
    """While training, SIGINT (Ctrl-C) and SIGTERM (a preempted cloud machine, torchrun's shutdown) do not
    kill the process mid-update: they ask the loop to stop after the current step. Returns the list of
    signals received (empty until one comes) and the function that puts the previous handlers back."""
    received = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return received, lambda: None

    def ask_to_stop(signum, frame):
        if not received:
            print(f"\n{signal.Signals(signum).name}: stopping after this step", file=sys.stderr, flush=True)
        received.append(signum)

    previous = {sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    return received, lambda: [signal.signal(sig, handler) for sig, handler in previous.items()]


def all_agree(flag: bool, ddp: bool, device: str) -> bool:
    """True on every process when it is true on any: all stop at the same step, or none does."""
    if not ddp:
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t)


def resume_command(cfg: TrainConfig, world: int) -> str:
    """The command that continues this run: --resume takes every setting but where it runs."""
    launcher = f"torchrun --standalone --nproc_per_node={world} " if world > 1 else "python "
    flags = [f"--out-dir {shlex.quote(cfg.out_dir)}", "--resume"]
    flags += [f"--device {cfg.device}"] if cfg.device != "auto" else []
    flags += ["--compile"] if cfg.compile else []
    flags += [f"--push-to-hub {cfg.push_to_hub}"] if cfg.push_to_hub else []
    script = sys.argv[0] if sys.argv[0].endswith("train_gpt2.py") else "train_gpt2.py"
    return launcher + " ".join([shlex.quote(script), *flags])


def clip_and_step(model, optimizers, scaler, grad_clip: float):
    """Unscale, clip, step, zero; returns the true (unscaled) gradient norm before clipping (None if off).
    optimizers: one optimizer or a list (AdamW and Muon), stepped together.

    With fp16 the gradients are multiplied by the GradScaler's scale; unscale_ every optimizer first
    so that clipping compares the real norm with grad_clip. scaler.step skips the update when the
    scaled gradients overflowed (and update() then lowers the scale)."""
    optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
    for opt in optimizers:
        scaler.unscale_(opt)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip > 0 else None
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return norm


def fit_to_budget(cfg: TrainConfig, step: int, max_iters: int, spent: float, pace: float) -> int:
    """The run's length under --max-seconds, before step `step`, `spent` seconds in, at `pace`
    seconds per step (0: not measured yet). Until the cooldown starts it follows the pace; then it
    stays, so the schedule ends cooled on the step it planned. If the machine slows down after
    that, the run ends on the last step that still fits (budget_factor has cooled it by then)."""
    if spent >= cfg.max_seconds:
        return step
    if pace == 0:
        return max_iters
    if spent + 2 * pace > cfg.max_seconds:  # no step fits after this one
        return step + 1
    if step >= max(cooldown_start(cfg, max_iters), 10):  # (10 steps at least, to measure a pace)
        return max_iters
    return steps_in_budget(cfg, step, spent, pace)


def budget_factor(cfg: TrainConfig, spent: float) -> float:
    """The time budget's own cooldown: a ceiling on lr_factor that falls linearly to min_lr over the
    budget's last cooldown_frac. On a steady machine it runs about a step behind the planned
    cooldown, so the planned one rules; on one slowing down, this one ends the run cooled in time."""
    floor = cfg.min_lr / cfg.learning_rate
    span, left = cfg.cooldown_frac * cfg.max_seconds, cfg.max_seconds - spent
    if left >= span:
        return 1.0
    return floor + (1 - floor) * max(0.0, left) / span


def compile_or_eager(model, batch, autocast=None, wrap=lambda module: module):
    """wrap(torch.compile(model)), or wrap(model) with a warning when compilation is unavailable or fails.

    Compiled once, here, by a forward and backward on `batch` (inputs, targets), one of training's own
    batches, under training's `autocast` and through `wrap` (DDP), as training calls it: a warm-up of
    another shape, stride (training's batches are views of one (B, T + 1) tensor), precision or
    wrapper would make the first real step compile it again, inside the run's time budget (and a
    model compiled outside DDP misses DDP's graph splits). Evaluation and sampling run the model itself."""
    forward = None
    try:
        forward = wrap(torch.compile(model, dynamic=False))
        with autocast or nullcontext():
            loss = forward(*batch)[1]
        loss.backward()  # compilation happens on the first call: fail here, not mid-run
        model.zero_grad(set_to_none=True)
        return forward
    except Exception as e:  # noqa: BLE001 - any compiler failure means "run eagerly"
        warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); training eagerly", stacklevel=1)
        del forward  # the failed wrapper goes (with its DDP hooks) before the model is wrapped again
        model.zero_grad(set_to_none=True)
        return wrap(model)


def train_or_resume(cfg: TrainConfig, progress: bool | None = None) -> dict | None:
    """A run that can be started again (a notebook after a disconnect): a new run in an empty out-dir, the
    unfinished run in it resumed, or a finished one left as it is (returns None; its model is in out_dir)."""
    state_path = Path(cfg.out_dir) / "resume.safetensors"
    done = read_resume_meta(state_path)["step"] if state_path.is_file() else None
    if done is None:
        print(f"training a new model in {cfg.out_dir}")
        return train(cfg, progress)
    if done < cfg.max_iters:
        print(f"{cfg.out_dir} holds a run that stopped at step {done}: resuming it up to step {cfg.max_iters}")
        return train(dataclasses.replace(cfg, resume=True), progress)
    print(
        f"{cfg.out_dir} already holds a finished run ({done} steps): its model is used as it is. "
        "Choose another out_dir, or a larger max_iters, to train more."
    )
    return None


def plot_losses(out_dir: Path) -> Path | None:
    """loss.png: train and val loss against step, from metrics.jsonl."""
    try:
        fig = loss_figure(out_dir)
    except ImportError:
        print("matplotlib is not installed: no loss.png (pip install matplotlib)")
        return None
    path = out_dir / "loss.png"
    fig.savefig(path, dpi=100)
    return path


def loss_figure(out_dir: Path):
    """The loss curves as a bare matplotlib Figure (not pyplot, so a notebook's backend is left alone)."""
    from matplotlib.figure import Figure

    recs = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["train_loss"]) for r in recs if "val_loss" not in r]
    val = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train (batch)", alpha=0.5)
    if val:
        ax.plot(*zip(*val), "o-", label="val (fixed batches)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    try:
        cfg = parse_args(argv)
        train(cfg)
    except (ConfigError, DataError, DeviceError, DamagedFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"stopped: {e}", file=sys.stderr)
        return 128 + e.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    except KeyboardInterrupt:  # outside the training loop: every file is written whole or not at all
        print("interrupted before training began or after it ended; each file written is complete", file=sys.stderr)
        return 130
    except HubError as e:
        print(
            f"error: training finished, but the push failed: {e}. Push later with `python hub.py push {cfg.out_dir} {cfg.push_to_hub}`.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
