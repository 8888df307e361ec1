"""Shared fixtures. No test needs the network or a GPU. Shared helpers (not fixtures) are in helpers.py.

Tiny Shakespeare is read from data/input.txt (where `python data/prepare.py` puts it).
"""

import os
from pathlib import Path

import pytest

# One thread per process: the test models are tiny (more threads only add synchronisation), results
# stay bit-for-bit reproducible, and the training subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach huggingface.co from a test
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402
from helpers import ROOT, make_tiny_model, require  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    path = ROOT / "data" / "input.txt"
    require(path.is_file(), "tiny Shakespeare not found: run `python data/prepare.py` (it downloads data/input.txt)")
    return path


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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, shakespeare_vocab) -> Path:
    """A small random-weight model with the tiny Shakespeare vocabulary, saved in Hugging Face format."""
    out = tmp_path_factory.mktemp("tiny_model")
    make_tiny_model(shakespeare_vocab).save_pretrained(out)
    return out
