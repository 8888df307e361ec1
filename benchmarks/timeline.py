"""The timeline's cost: the cpu preset trained as train_gpt2.py trains it (its --max-seconds kept), with and without
timeline.jsonl, in the same run, and one timeline sample timed on its own. bench.py --timeline runs it.
"""

import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

from batches import estimate_loss, eval_batches
from data.prepare import load_meta, load_split
from machine import autocast_context, pick_dtype
from model_gpt2 import load_model
from train_config import config_from_preset
from train_gpt2 import train


def bench_timeline(device, data_dir, max_seconds: float = 180, seed: int = 1337) -> dict:
    """Best val loss (whole validation split) and steps of the cpu preset without and with the timeline, then the
    seconds one timeline row takes (a 200-character sample; step 0's also measures the two losses)."""
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, prompt in (("without", ""), ("with", "ROMEO:")):
            cfg = config_from_preset(
                "cpu",
                data_dir=str(data_dir),
                out_dir=f"{tmp}/{name}",
                sample_chars=0,
                seed=seed,
                device=device,
                max_seconds=max_seconds,
                timeline_prompt=prompt,
            )
            with contextlib.redirect_stdout(sys.stderr):  # stdout is for the JSON
                summary = train(cfg, progress=False)
            runs[name] = {
                "best_val_loss": round(summary["best_val_loss"], 4),
                "steps": summary["steps"],
                "train_seconds": round(summary["train_seconds"], 1),
            }
        rows = Path(tmp, "with", "timeline.jsonl").read_text().count("\n")
        model = load_model(f"{tmp}/with", device)
    # one row's work, as Timeline.record does it (step 0's row also measures the losses on the evaluation batches)
    sample = [
        timed(lambda: model.generate_text("ROMEO:", cfg.timeline_chars, temperature=0.8, seed=seed)) for _ in range(5)
    ]
    data = Path(data_dir)
    batches = eval_batches(cfg, load_split(data, "train"), load_split(data, "val"), device)
    autocast = autocast_context(device, pick_dtype(device, cfg.dtype))
    losses = [timed(lambda: [estimate_loss(model, b, autocast) for b in batches.values()]) for _ in range(3)]
    per_row, step0 = statistics.median(sample), statistics.median(losses)
    cost = rows * per_row + step0
    return {
        "preset": "cpu",
        "max_seconds": max_seconds,
        "vocab": len(load_meta(data)["vocab"]),
        "runs": runs,
        "rows": rows,
        "sample_seconds": round(per_row, 3),
        "step0_losses_seconds": round(step0, 3),
        "cost_seconds": round(cost, 2),
        "cost_share_of_budget": round(cost / max_seconds, 4),
        "target": "steps at most 2% fewer, val loss no worse beyond seed noise; cost <= 2% of 180 s",
    }


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def timeline_table(r: dict) -> str:
    w, wo = r["runs"]["with"], r["runs"]["without"]
    return "\n".join(
        [
            f"timeline: cpu preset, --max-seconds {r['max_seconds']:g}, same run, best val loss on the whole validation split",
            f"  without: {wo['best_val_loss']:.4f} after {wo['steps']} steps ({wo['train_seconds']:.0f} s)",
            f"  with:    {w['best_val_loss']:.4f} after {w['steps']} steps ({w['train_seconds']:.0f} s), {r['rows']} rows",
            f"  one row: {r['sample_seconds']:.3f} s (a 200-character sample); step 0's losses {r['step0_losses_seconds']:.3f} s;"
            f" in all {r['cost_seconds']:.2f} s = {r['cost_share_of_budget']:.1%} of the budget",
        ]
    )
