"""What a run writes besides its checkpoints: the log (a progress bar or plain lines, and metrics.jsonl,
one JSON object per log or eval line) and loss.png, drawn from metrics.jsonl.

train_gpt2.py writes these as it trains; gpt2_training.ipynb draws loss_figure.
"""

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from checkpoint import atomic_write_text
from train_config import TrainConfig, tokens_per_step


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


def trim_metrics(path: Path, step: int) -> None:
    """Forget the log lines written after the state a run resumes from."""
    lines = path.read_text().splitlines() if path.exists() else []
    atomic_write_text(path, "".join(line + "\n" for line in lines if json.loads(line)["step"] <= step))


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
