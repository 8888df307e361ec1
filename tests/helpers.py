"""What the tests share besides fixtures: the repo root, tiny models, free ports, and servers
started as processes. pytest finds this module through `pythonpath` in pyproject.toml."""

import os
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from model_gpt2 import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
# Debian's chromium, driven by Playwright; no background traffic (the machine has no network)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def train_tiny(data_dir: Path, out_dir: Path, **overrides) -> Path:
    """A real (short) training run of a tiny model in the cpu preset's recipe; returns out_dir."""
    from train_config import config_from_preset
    from train_gpt2 import train

    settings = dict(max_iters=20, eval_interval=10, eval_iters=2, n_layer=1, n_embd=32, n_head=2, block_size=32)
    cfg = config_from_preset(
        "cpu", data_dir=str(data_dir), out_dir=str(out_dir), sample_chars=0, **(settings | overrides)
    )
    train(cfg, progress=False)
    return out_dir


def require(condition: bool, reason: str):
    """Skip when an external tool is missing, except under CI=true where everything must run."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run every test: {reason}")
    pytest.skip(reason)


def make_tiny_model(vocab: str, seed: int = 0, **overrides) -> GPT:
    cfg = dict(block_size=32, vocab_size=len(vocab), n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return GPT(GPTConfig(**cfg), vocab=vocab, train_info={"val_loss": 3.21, "tokens_seen": 12345, "step": 10})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen) -> None:
    """Terminate a server the tests started; kill it if it does not stop within 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def server_process(cmd: list[str], ready: Callable[[], bool], log: Path, timeout: float = 120, **popen):
    """Start `cmd` (its output to `log`), wait until ready() is true, yield the process, stop it after.

    ready() is polled every 0.2 s; an exception from it counts as "not yet". If the process exits or the
    timeout passes first, the test fails with the log's tail."""
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, **popen)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    break
            except Exception:  # noqa: BLE001 - connection refused, a reset, a timeout: not up yet
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                state = f"exited with {proc.returncode}" if proc.poll() is not None else f"no answer in {timeout:.0f} s"
                tail = log.read_text(errors="replace")[-3000:]
                pytest.fail(f"{' '.join(map(str, cmd[:3]))} did not start ({state}); log tail:\n{tail}")
            time.sleep(0.2)
        yield proc
    finally:
        stop_process(proc)
