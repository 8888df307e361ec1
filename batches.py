"""Batches: random training windows drawn from the seed alone (no state to save), the fixed evaluation
batches, and the losses measured on them.

train_gpt2.py draws each step's micro-batches and evaluates with these.
"""

import numpy as np
import torch

from train_config import TrainConfig


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
