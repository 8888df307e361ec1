"""The learning-rate schedule and the time budget: each step's learning rate (a linear warmup, then cosine
or warmup-stable-decay), and how many steps fit in --max-seconds with the schedule still ending cooled.

train_gpt2.py's plan_step asks these before every step; bench.py's step timer uses lr_factor.
"""

import math

from train_config import TrainConfig


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
