"""What a run writes besides its checkpoints: the log (a progress bar or plain lines, and metrics.jsonl,
one JSON object per log or eval line), loss.png, drawn from metrics.jsonl, and timeline.jsonl, one sample of the
same prompt at step 0 and at every evaluation (its format: timeline.py).

train_gpt2.py writes these as it trains; gpt2_training.ipynb draws loss_figure.
"""

import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from batches import estimate_loss
from checkpoint import atomic_write_text
from model_gpt2 import CharTokenizer
from timeline import TIMELINE
from train_config import ConfigError, TrainConfig, tokens_per_step

TIMELINE_TEMPERATURE = 0.8  # the samples' temperature: the one finish() and the model card sample at


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


class Timeline:
    """timeline.jsonl: at step 0 and at each evaluation, the model's sample of the same prompt, with the same length,
    temperature and seed (--timeline-prompt, --timeline-chars, --seed), so the rows differ only by what it learned.

    The sample draws from its own seeded torch.Generator and runs in eval mode (GPT.stream restores the mode), so
    training's random numbers (dropout) and its batches are the same with or without it. Each row rewrites the
    file atomically: a crash leaves it whole, and a resume trims it as metrics.jsonl (trim_logs)."""

    def __init__(self, cfg: TrainConfig, vocab: str, out_dir: Path, enabled: bool):
        self.cfg, self.path = cfg, out_dir / TIMELINE
        self.prompt = timeline_prompt(cfg.timeline_prompt, vocab)
        self.enabled = enabled and bool(self.prompt)

    def record(self, model, step: int, seconds: float, losses: dict) -> None:
        """One row: the losses just measured and the model's sample at this step."""
        if not self.enabled or not all(math.isfinite(loss) for loss in losses.values()):
            return  # weights that give no finite loss give no text either (and the run is about to stop)
        cfg = self.cfg
        text = model.generate_text(self.prompt, cfg.timeline_chars, temperature=TIMELINE_TEMPERATURE, seed=cfg.seed)
        row = {
            "step": step,
            "tokens": step * tokens_per_step(cfg),
            "seconds": round(seconds, 2),
            "train_loss": finite_or_none(losses["train"]),  # null, not NaN: every JSON reader takes the file
            "val_loss": finite_or_none(losses["val"]),
            "prompt": self.prompt,
            "text": text,
            "chars": cfg.timeline_chars,
            "temperature": TIMELINE_TEMPERATURE,
            "seed": cfg.seed,
        }
        old = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        atomic_write_text(self.path, old + json.dumps(row) + "\n")

    def record_start(self, model, step: int, eval_batches: dict, autocast) -> float:
        """Step 0's row: the untrained model, its losses measured on the evaluation's batches (a resumed run
        has it already). Returns the seconds it took: a time budget counts them, once, apart from the steps'
        pace (they would make the first steps look slow, and a budgeted run plan too few)."""
        t = time.perf_counter()
        if self.enabled and step == 0:
            losses = {name: estimate_loss(model, batches, autocast) for name, batches in eval_batches.items()}
            self.record(model, 0, 0.0, losses)
        return time.perf_counter() - t


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def timeline_prompt(prompt: str, vocab: str) -> str:
    """The prompt the timeline samples ("" = no timeline). The default, ROMEO:, falls back to the text's start
    (a new line) when the data lacks its characters; a prompt typed with characters the data lacks is refused."""
    unknown = [ch for ch in dict.fromkeys(prompt) if ch not in vocab]
    if not unknown:
        return prompt
    if prompt == TrainConfig.timeline_prompt:
        return CharTokenizer(vocab).start_text
    shown = ", ".join(repr(ch) for ch in unknown[:10])
    raise ConfigError(
        f"--timeline-prompt {prompt!r} has characters the data's vocabulary lacks ({shown}): the model could not read "
        "them. Use only characters of the training text, or --timeline-prompt '' for no timeline"
    )


def trim_logs(out_dir: Path, step: int) -> None:
    """metrics.jsonl and timeline.jsonl as they were at the state a run resumes from."""
    for name in ("metrics.jsonl", TIMELINE):
        if (out_dir / name).exists():
            trim_metrics(out_dir / name, step)


def trim_metrics(path: Path, step: int) -> None:
    """Forget the JSON lines written after the state a run resumes from."""
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
