"""Against nanoGPT: our step at nanoGPT's CPU configuration (where its time goes), nanoGPT's own train.py
timed in the same run (bench.py --nanogpt PATH), and nanoGPT's generate() for the generation benchmark.
"""

import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import NANOGPT_CPU, flops_per_token
from benchmarks.training import StepTimer, compiled_timer, op_times
from data.prepare import load_meta, load_split
from train_config import config_from_preset


def bench_nanogpt_cpu(device, data, vocab, peak, quick) -> dict:
    """nanoGPT's CPU configuration: time per step, and where that time goes."""
    tr = StepTimer(config_from_preset("cpu", device=device, **NANOGPT_CPU), data, vocab, device)
    steps, tokens = (10 if quick else 40), NANOGPT_CPU["batch_size"] * NANOGPT_CPU["block_size"]
    ms = tr.ms_per_step(steps, warmup=5)
    phases = {}
    for _ in range(steps):
        tr.step(phases)
    # the same model on 1 x 8 tokens has almost no arithmetic left: what remains is the fixed cost
    # of a step (op dispatch, autograd bookkeeping, the optimizer's per-tensor work)
    tiny = config_from_preset("cpu", device=device, **{**NANOGPT_CPU, "batch_size": 1, "block_size": 8})
    fixed_ms = StepTimer(tiny, data, vocab, device).ms_per_step(steps, warmup=5)
    notes = (
        f"{fixed_ms:.1f} of {ms:.1f} ms per step is fixed cost (the same step on 1 x 8 tokens): op dispatch, autograd "
        "and the optimizer's per-tensor work."
    )
    by_kind, matmul_rate = None, None
    if device == "cpu":  # a CPU profile times the ops themselves; on a GPU it would time kernel launches
        by_kind = op_times(tr)
        matmul_rate = 6 * tr.model.num_params(non_embedding=True) * tokens / (by_kind["matmul"] / 1000)
        share = by_kind["matmul"] / ms
        limit = (
            "they limit it"
            if share > 0.5
            else "the many small memory-bound ops around them, and per-op overhead, limit it"
        )
        notes += (
            f" Profiled self time per step: matmuls {by_kind['matmul']:.1f} ms (~{matmul_rate / 1e9:.0f} GFLOP/s, "
            f"{matmul_rate / peak:.0%} of the 2048x2048 peak), attention {by_kind['attention']:.1f} ms, AdamW "
            f"{by_kind['optimizer']:.1f} ms, other ops (LayerNorm, GELU, copies, clipping, loss, elementwise) "
            f"{by_kind['other']:.1f} ms. The matmuls are {share:.0%} of the step: {limit}."
        )
    return {
        "config": NANOGPT_CPU,
        "ms_per_step": round(ms, 2),
        "tokens_per_sec": round(1000 * tokens / ms),
        "pct_of_peak": round(100 * 1000 * tokens / ms * flops_per_token(tr.model) / peak, 1),
        "phases_ms": {k: round(1000 * v / steps, 2) for k, v in phases.items()},
        "fixed_cost_ms": round(fixed_ms, 2),
        "profile_ms": by_kind,
        "matmul_gflops": round(matmul_rate / 1e9, 1) if matmul_rate else None,
        "notes": notes,
    }


def nanogpt_flags(iters: int) -> list:
    """nanoGPT's CPU recipe (its README), cut to `iters` steps; lr_decay_iters keeps its schedule's shape."""
    return [
        "--device=cpu",
        "--compile=False",
        "--eval_iters=20",
        "--log_interval=1",
        "--block_size=64",
        "--batch_size=12",
        "--n_layer=4",
        "--n_head=4",
        "--n_embd=128",
        f"--max_iters={iters}",
        "--lr_decay_iters=2000",
        "--dropout=0.0",
    ]


def run_nanogpt(checkout: Path, data_dir: Path, iters: int) -> list:
    """nanoGPT's own train.py on our prepared tiny Shakespeare (the same 65 characters and 90/10 split
    its prepare.py makes, so nothing is downloaded); returns the ms of each iteration it logged."""
    meta = load_meta(data_dir)
    if meta["vocab_size"] > 2**16:
        raise ValueError("nanoGPT reads token ids as uint16: this vocabulary is too large")
    with tempfile.TemporaryDirectory() as tmp:  # its cwd: data/, configurator.py and out-dir live there
        folder = Path(tmp, "data", "shakespeare_char")
        folder.mkdir(parents=True)
        for split in ("train", "val"):
            np.asarray(load_split(data_dir, split), dtype=np.uint16).tofile(folder / f"{split}.bin")
        vocab = meta["vocab"]
        with open(folder / "meta.pkl", "wb") as f:  # its format; it reads only vocab_size
            pickle.dump(
                {"vocab_size": len(vocab), "itos": dict(enumerate(vocab)), "stoi": {c: i for i, c in enumerate(vocab)}},
                f,
            )
        shutil.copy(checkout / "configurator.py", tmp)
        cmd = [sys.executable, str(checkout / "train.py"), str(checkout / "config" / "train_shakespeare_char.py")]
        proc = subprocess.run([*cmd, *nanogpt_flags(iters)], cwd=tmp, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"nanoGPT's train.py failed: {proc.stderr[-1500:]}")
    return [float(ms) for ms in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", proc.stdout, re.M)]


def bench_vs_nanogpt(device, data, vocab, data_dir, checkout, quick) -> dict | None:
    """Our step and nanoGPT's train.py at its CPU configuration, in this run, in turns: ours, then
    nanoGPT's, three times; the ratio is taken turn by turn and the median reported, so a change
    in a shared machine's load moves both sides of a ratio. Medians of per-step times; nanoGPT's
    first 5 iterations (warm-up, its evaluation at iteration 0) are left out. The full run also
    times our --compile step in each turn (compiled once, before the turns: compile_seconds)."""
    if checkout is None or device != "cpu":
        return None
    steps, turns = (10, 1) if quick else (50, 3)
    cfg = config_from_preset("cpu", device=device, **NANOGPT_CPU)
    compiled, compile_s = None, None
    if not quick:
        compiled, compile_s = compiled_timer(NANOGPT_CPU, data, vocab, device)
    ours, theirs, ours_compiled = [], [], []
    for _ in range(turns):
        ours.append(StepTimer(cfg, data, vocab, device).ms_per_step(steps, warmup=5))
        theirs.append(statistics.median(run_nanogpt(Path(checkout), Path(data_dir), steps + 5)[5:]))
        if compiled is not None:
            ours_compiled.append(compiled.ms_per_step(steps, warmup=2))
    ratios = [a / b for a, b in zip(ours, theirs)]
    compiled_ratios = [a / b for a, b in zip(ours_compiled, theirs)]
    return {
        "config": NANOGPT_CPU,
        "steps": steps,
        "ms_per_step": [round(x, 2) for x in ours],
        "nanogpt_ms_per_step": [round(x, 2) for x in theirs],
        "ratios": [round(x, 3) for x in ratios],
        "ratio": round(statistics.median(ratios), 3),
        "target_ratio": 0.85,
        "compiled_ms_per_step": [round(x, 2) for x in ours_compiled],
        "compile_seconds": compile_s and round(compile_s, 1),
        "compiled_ratio": round(statistics.median(compiled_ratios), 3) if compiled_ratios else None,
        "nanogpt_command": "python train.py config/train_shakespeare_char.py " + " ".join(nanogpt_flags(steps + 5)),
    }


@torch.no_grad()
def nanogpt_generate(model, idx, max_new_tokens, generator, temperature=1.0):
    """nanoGPT's generate(): crop the context to block_size and run all of it through the model for every token."""
    for _ in range(max_new_tokens):
        idx_cond = idx if idx.size(1) <= model.config.block_size else idx[:, -model.config.block_size :]
        logits = model(idx_cond)[0][:, -1, :] / temperature
        probs = torch.softmax(logits, dim=-1)
        idx = torch.cat((idx, torch.multinomial(probs, num_samples=1, generator=generator)), dim=1)
    return idx
