"""A training run's settings: TrainConfig (every field a --flag), the presets, the command line, and
every check of the settings made before any work.

    from train_config import config_from_preset
    cfg = config_from_preset("cpu", out_dir="out", max_iters=400)   # = --preset cpu --out-dir out --max-iters 400

train_gpt2.py parses and checks its command line with these; bench.py, the tests and
gpt2_training.ipynb build their configs with config_from_preset.
"""

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from checkpoint import LOCK_FILE, read_resume_meta
from cli import add_flags, arg
from hub import HubError, check_repo_id, ready_to_upload
from machine import ModelTooLargeError, check_fits
from model_gpt2 import GPTConfig

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
    timeline_prompt: str = arg(
        "ROMEO:", "timeline.jsonl: this prompt sampled at step 0 and every evaluation ('' = none; see timeline.py)"
    )
    timeline_chars: int = arg(200, "characters of each timeline sample")
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


# ---------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """One flag per TrainConfig field, named after it, with its type, default and help."""
    ap = argparse.ArgumentParser(  # the description: train_gpt2.py's opening line
        description="Train a character-level GPT-2 on a prepared text, keeping the best model by validation loss.",
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
    positive = (
        "batch_size",
        "grad_accum_steps",
        "max_iters",
        "eval_interval",
        "eval_iters",
        "log_interval",
        "timeline_chars",
    )
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
    if out_dir.is_dir() and any(p.name != LOCK_FILE for p in out_dir.iterdir()):
        if (out_dir / "resume.safetensors").exists() or (out_dir / "config.json").exists():
            raise ConfigError(
                f"{out_dir} already holds a training run: pass --resume to continue it, or choose another --out-dir"
            )
        raise ConfigError(f"{out_dir} is not empty and holds other files; choose an empty or new --out-dir")


def tokens_per_step(cfg: TrainConfig) -> int:
    return cfg.batch_size * cfg.block_size * cfg.grad_accum_steps  # over all processes
