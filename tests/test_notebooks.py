"""The notebooks run top to bottom and are committed clean.

The slow tests execute each notebook with papermill (small parameters, CPU, no network), in a
fresh kernel whose working directory is pytest's tmp folder: every relative path a notebook
writes lands there, never in the repo, and the repo's modules are found through PYTHONPATH.
Any cell that raises fails the test.
"""

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from helpers import free_port

from model_gpt2 import load_model

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(
    {"gpt_dev.ipynb", "gpt2_training.ipynb", "gpt2_gradio.ipynb"} | {p.name for p in ROOT.glob("*.ipynb")}
)
COLAB_URL = "https://colab.research.google.com/github/YOUR_NAME/char-gpt/blob/main/"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
# a 1-layer model: the notebook's whole path (data, training, plot, samples) in seconds
TINY = {
    "n_layer": 1,
    "n_embd": 32,
    "n_head": 2,
    "block_size": 32,
    "eval_interval": 10,
    "eval_iters": 2,
    "sample_chars": 50,
}


def run_notebook(name: str, tmp_path: Path, monkeypatch, **parameters):
    """Execute ROOT/name with papermill; return the executed notebook (raises on any cell error)."""
    import papermill

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the kernel inherits this environment
    # tiny models: one thread is faster, and two threads on a busy 2-core machine can be 50x slower
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    out = tmp_path / f"executed-{name}"
    papermill.execute_notebook(
        str(ROOT / name), str(out), parameters=parameters, cwd=str(work), kernel_name="python3", progress_bar=False
    )
    return nbformat.read(out, as_version=4)


def output_text(nb) -> str:
    """Everything the code cells printed (stdout, stderr and plain-text results)."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


# ---------------------------------------------------------------------------- committed notebooks


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_clean(name):
    """No outputs in git, a papermill parameters cell, an Open-in-Colab badge and a Colab setup cell."""
    path = ROOT / name
    assert path.is_file(), f"{name} is missing"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not dirty, f"{name}: code cells {dirty} have outputs or execution counts; clear them before committing"
    assert any("parameters" in c.metadata.get("tags", []) for c in code), f"{name}: no cell tagged `parameters`"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and COLAB_URL + name in first.source and BADGE in first.source
    assert "google.colab" in code[0].source, f"{name}: the first code cell must set the repo up on Colab"


def test_colab_setup_installs_only_what_a_notebook_names():
    """setup("torch") installs nothing on Colab (it has torch); setup() all of requirements.txt Colab lacks."""
    from colab_setup import colab_requirements

    everything = colab_requirements()
    gradio = [line for line in everything if line.startswith("gradio")]
    assert len(gradio) == 1 and not any(line.startswith(("torch", "numpy")) for line in everything)
    assert colab_requirements("torch") == []
    assert colab_requirements("torch", "Gradio") == gradio
    with pytest.raises(ValueError, match="not in requirements.txt: grado"):
        colab_requirements("grado")


# ---------------------------------------------------------------------------- executed notebooks


@pytest.mark.slow
def test_gpt_dev_notebook_runs(tmp_path, monkeypatch, shakespeare_path):
    run_notebook(
        "gpt_dev.ipynb",
        tmp_path,
        monkeypatch,
        data_path=str(shakespeare_path),
        max_iters=30,
        bigram_iters=30,
        eval_iters=2,
        eval_interval=10,
    )


@pytest.mark.slow
def test_training_notebook_trains_resumes_and_keeps_a_finished_run(tmp_path, monkeypatch, shakespeare_path):
    data_dir, out_dir = tmp_path / "text", tmp_path / "model"
    data_dir.mkdir()
    shutil.copy(shakespeare_path, data_dir / "input.txt")  # as on Colab after the download: prepared by the notebook
    params = dict(
        preset="cpu", device="cpu", max_iters=30, overrides=TINY, data_dir=str(data_dir), out_dir=str(out_dir)
    )

    nb = run_notebook("gpt2_training.ipynb", tmp_path, monkeypatch, **params)
    text = output_text(nb)
    assert "1,115,394 characters, a vocabulary of 65 characters" in text
    assert "train split: 1,003,854 tokens, validation split: 111,540 tokens" in text
    assert "device: cpu" in text and "AMP: off" in text
    assert "training a new model" in text
    assert images(nb) >= 1, "the loss plot is not shown inline"
    assert "--- sample 2 ---" in text
    assert "Not pushed to the Hub: set hub_repo_id" in text
    model = load_model(out_dir)
    assert (model.config.n_layer, model.config.n_embd) == (1, 32)
    assert "val_loss_full" in model.train_info
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20, 30]

    # an unfinished run (asked for more steps) is resumed, not restarted or refused
    nb = run_notebook("gpt2_training.ipynb", tmp_path, monkeypatch, **{**params, "max_iters": 40})
    assert "stopped at step 30: resuming it up to step 40" in output_text(nb)
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20, 30, 40]

    # a finished run is loaded, not trained again
    weights = (out_dir / "model.safetensors").stat().st_mtime_ns
    nb = run_notebook("gpt2_training.ipynb", tmp_path, monkeypatch, **{**params, "max_iters": 40})
    text = output_text(nb)
    assert "already holds a finished run (40 steps)" in text and "--- sample 2 ---" in text
    assert (out_dir / "model.safetensors").stat().st_mtime_ns == weights


@pytest.mark.slow
def test_gradio_notebook_generates_and_serves(tmp_path, monkeypatch, tiny_model_dir):
    nb = run_notebook("gpt2_gradio.ipynb", tmp_path, monkeypatch, model=str(tiny_model_dir), port=free_port())
    text = output_text(nb)
    assert "validation loss: 3.21 nats per character" in text  # the facts come from the model's train_info
    assert "the app is running at http://127.0.0.1:" in text
    # the API call printed the prompt and its 50 new characters
    api_cell = next(c for c in nb.cells if "client.predict" in c.source)
    printed = "".join(o.get("text", "") for o in api_cell.outputs if o.output_type == "stream" and o.name == "stdout")
    assert printed.startswith("ROMEO:") and len(printed) == len("ROMEO:") + 50 + len("\n")
    assert "No Space deployed: set space_id" in text
    assert "app stopped" in text
