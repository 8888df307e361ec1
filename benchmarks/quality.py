"""Quality at a time budget: the cpu preset trained as train_gpt2.py trains it, one run per seed, and its best
val loss on the whole validation split.
"""

import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path

from train_config import PRESETS, config_from_preset
from train_gpt2 import train


def bench_quality(device, data_dir, quick) -> dict:
    """The cpu preset's best val loss (whole validation split) within its own schedule, per seed."""
    seeds = [1337] if quick else [1337, 1338, 1339]
    shortened = {"max_iters": PRESETS["cpu"]["max_iters"] // 10} if quick else {}
    runs = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):  # stdout is for the JSON
            cfg = config_from_preset(
                "cpu",
                data_dir=str(data_dir),
                out_dir=f"{tmp}/run",
                sample_chars=0,
                seed=seed,
                device=device,
                **shortened,
            )
            summary = train(cfg, progress=False)
            records = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
        ms = statistics.median(r["ms_per_step"] for r in records if r.get("ms_per_step"))
        runs.append(
            {
                "seed": seed,
                "best_val_loss": round(summary["best_val_loss"], 4),
                "steps": summary["steps"],
                "train_seconds": round(summary["train_seconds"], 1),
                "median_ms_per_step": round(ms, 2),
            }
        )
    losses = [r["best_val_loss"] for r in runs]
    return {
        "preset": "cpu",
        "config": PRESETS["cpu"],
        "shortened": shortened or None,
        "runs": runs,
        "mean": round(statistics.mean(losses), 4),
        "min": min(losses),
        "max": max(losses),
        "target": "mean best val loss <= 1.56 within 180 s of training on a 2-core CPU, over 3 seeds",
    }
