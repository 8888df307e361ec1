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
(one JSON object per log or eval line), loss.png and timeline.jsonl (a sample at each evaluation: timeline.py).

This file is the loop (train() reads as its outline) and main(); the pieces it calls live in their
own modules: train_config.py (flags, presets, checks), batches.py, schedule.py (learning rate, time
budget), run_log.py (metrics.jsonl, loss.png, timeline.jsonl), stop_signals.py (Ctrl-C, SIGTERM), checkpoint.py.
"""

import dataclasses
import math
import os
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from batches import batch_starts, estimate_loss, eval_batches, evaluate_split, make_batch
from checkpoint import (
    OutDirInUse,
    divergence_message,
    lock_out_dir,
    read_resume_meta,
    read_resume_state,
    restore_resume_state,
    save_best_model,
    save_resume_state,
    update_model_info,
)
from data.prepare import DataError, load_meta, load_split
from hub import HubError, push_model
from machine import DeviceError, autocast_context, enable_tf32, hardware_name, pick_device, pick_dtype
from model_files import WRITE_FAILURES, DamagedFileError, cannot_write, readable_safetensors
from model_gpt2 import GPT, load_model
from muon import build_optimizers
from run_log import Logger, Timeline, plot_losses, timeline_prompt, trim_logs
from schedule import budget_factor, fit_to_budget, get_lr, lr_factor
from stop_signals import Interrupted, all_agree, catch_stop_signals, resume_command
from train_config import (
    COMMAND_ONLY,
    FIXED_ON_RESUME,
    ConfigError,
    TrainConfig,
    check_config,
    check_memory,
    check_out_dir,
    model_config,
    parse_args,
    tokens_per_step,
)

# ---------------------------------------------------------------------------- training


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
    timeline: "Timeline"
    step: int = 0
    max_iters: int = 0  # --max-iters, or fewer to fit --max-seconds
    best_val: float = math.inf
    bad_steps: int = 0
    spent_before: float = 0.0  # training seconds of the run before a resume
    t_start: float = 0.0
    evaluated: int = -1  # the last step evaluated (a resume state is saved at one)

    def seconds(self) -> float:
        return self.spent_before + time.perf_counter() - self.t_start


def train(cfg: TrainConfig, progress: bool | None = None) -> dict:
    """Train as the command line does; returns a summary (best val loss, steps, training seconds, out_dir)."""
    # every check before any work
    world = int(os.environ.get("WORLD_SIZE", 1)) if "RANK" in os.environ else 1
    check_config(cfg, world)
    meta, train_data, val_data = load_data(cfg)
    master = int(os.environ.get("RANK", 0)) == 0
    with lock_out_dir(Path(cfg.out_dir), enabled=master):  # a second run on this folder is refused
        resume = check_resume(cfg, meta)
        machine = set_up_machine(cfg)
        run = start_run(cfg, machine, meta, train_data, val_data, resume, progress)
        train_seconds = train_loop(run)
        return finish(run, train_seconds)


def train_loop(run: Run) -> float:
    """Steps, evaluations and checkpoints until the last step, a time budget or a stop signal; returns
    the seconds spent training."""
    cfg, machine = run.trainer.cfg, run.trainer.machine
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
        if run.evaluated != run.step:  # the time budget ran out between evaluations: the last step is scored too
            with run.log.paused():
                evaluate_and_save(run)
        return run.seconds() - run.spent_before
    finally:
        restore_signals()
        run.log.close()
        if machine.ddp:
            dist.destroy_process_group()


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
    timeline_prompt(cfg.timeline_prompt, meta["vocab"])  # its characters are the data's (or it is refused)
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
        timeline=Timeline(cfg, meta["vocab"], out_dir, machine.master),
        max_iters=cfg.max_iters,
    )
    if resume is not None:
        saved_meta, tensors = resume
        restore_resume_state(tensors, saved_meta, trainer.model, trainer.optimizers, trainer.scaler)
        run.step, run.best_val = saved_meta["step"], saved_meta["best_val_loss"]
        run.evaluated = run.step
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
            trim_logs(out_dir, run.step)  # metrics.jsonl and timeline.jsonl
        print_header(run, resume[0] if resume else None)
    trainer.forward.train()
    with run.log.paused():  # step 0's sample for timeline.jsonl: in the time budget, not in the pace of a step
        spent = run.timeline.record_start(trainer.model, run.step, run.eval_batches, machine.autocast)
    run.spent_before += 0.0 if machine.ddp else spent  # (under torchrun the others wait for it: their clocks count it)
    run.t_start = time.perf_counter()
    return run


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
    run.evaluated = run.step
    losses = {name: estimate_loss(t.model, batches, m.autocast) for name, batches in run.eval_batches.items()}
    improved = losses["val"] < run.best_val  # never "improves" on a nan
    if improved:
        run.best_val = losses["val"]
        t.model.train_info = train_info(run, losses)
    finite = math.isfinite(losses["val"]) and math.isfinite(losses["train"])
    if m.master:
        run.timeline.record(t.model, run.step, run.seconds(), losses)  # before the resume state: no step lost
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


def main(argv=None) -> int:
    try:
        cfg = parse_args(argv)
        train(cfg)
    except (ConfigError, DataError, DeviceError, DamagedFileError, OutDirInUse) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in WRITE_FAILURES:
            raise
        print(f"error: {cannot_write(e)}. Each file written before is whole.", file=sys.stderr)
        return 1
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
