"""Shared fixtures. No test needs the network or a GPU.

Tiny Shakespeare is read from data/input.txt (where .ci/run and the README put it) or, on the
developers' machines, from ../shared/data/tinyshakespeare/input.txt.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# One thread per process: the test models are tiny (more threads only add synchronisation), results
# stay bit-for-bit reproducible, and the training subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach huggingface.co from a test
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402

from model_gpt2 import GPT, GPTConfig  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

SHAKESPEARE_CANDIDATES = [
    ROOT / "data" / "input.txt",
    ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt",
]


def require(condition: bool, reason: str):
    """Skip when an external tool is missing, except under CI=true where everything must run."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run every test: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    for p in SHAKESPEARE_CANDIDATES:
        if p.is_file():
            return p
    require(False, "tiny Shakespeare not found: put it at data/input.txt")


@pytest.fixture(scope="session")
def shakespeare_text(shakespeare_path) -> str:
    return shakespeare_path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory, shakespeare_text) -> Path:
    """tiny Shakespeare prepared (train.bin, val.bin, meta.json) in a temporary folder."""
    from data.prepare import prepare

    out = tmp_path_factory.mktemp("data")
    prepare(shakespeare_text, out)
    return out


@pytest.fixture(scope="session")
def shakespeare_vocab(shakespeare_text) -> str:
    return "".join(sorted(set(shakespeare_text)))


def make_tiny_model(vocab: str, seed: int = 0, **overrides) -> GPT:
    cfg = dict(block_size=32, vocab_size=len(vocab), n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return GPT(GPTConfig(**cfg), vocab=vocab, train_info={"val_loss": 3.21, "tokens_seen": 12345, "step": 10})


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, shakespeare_vocab) -> Path:
    """A small random-weight model with the tiny Shakespeare vocabulary, saved in Hugging Face format."""
    out = tmp_path_factory.mktemp("tiny_model")
    make_tiny_model(shakespeare_vocab).save_pretrained(out)
    return out


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
