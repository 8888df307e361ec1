"""Benchmark training speed, generation speed and quality at a time budget on this machine.

    python bench.py                          # everything: over 10 minutes on a 2-core CPU (3 training runs of 3 minutes)
    python bench.py --nanogpt ../nanoGPT     # also time nanoGPT's own train.py (a karpathy/nanoGPT checkout) in this run
    python bench.py --quick                  # a smoke check in 1-2 minutes (one training run cut to 1/10)
    python bench.py --device cuda --json bench.json      # on a GPU; the JSON also goes to a file
    python bench.py --threads 1              # torch.set_num_threads(1) first, to compare with the default
    python bench.py --browser                # also the static Space's page in Chromium (tests/install_test_tools.sh)
    python bench.py --browser-only           # only that: ~2 minutes
    python bench.py --explain                # only the "Inside the model" pass, full window of the 10.7M model
    python bench.py --serving                # only the app under load: 1 gradio_client user alone vs 16 at once (~1 min)
    python bench.py --serving --app-dir ../other-checkout   # the same against another checkout's app.py
    python bench.py --timeline               # only: the cpu preset with and without timeline.jsonl (~6 min)
    python bench.py --timeline --max-seconds 60              # the same, each run cut to 60 s of training
    python bench.py --agreement out          # only: do batched texts equal generate_text's? (a trained model)

stdout gets one JSON document; the same numbers as a readable table go to stderr.
MFU = tokens/s x FLOPs per token / the matmul peak measured in the same run (an fp32 2048x2048
matmul on a CPU, the training dtype on a GPU). FLOPs per token = 6 N + 12 n_layer n_embd block_size
(PaLM appendix B, as in nanoGPT's estimate_mfu), N without the position embeddings.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.browser import bench_browser, browser_ready, browser_table
from benchmarks.common import matmul_peak
from benchmarks.explain import bench_explain, explain_table
from benchmarks.generation import bench_generation
from benchmarks.nanogpt import bench_nanogpt_cpu, bench_vs_nanogpt
from benchmarks.quality import bench_quality
from benchmarks.serving import batch_agreement, bench_serving, serving_table
from benchmarks.timeline import bench_timeline, timeline_table
from benchmarks.training import bench_compile, bench_training
from data.prepare import load_meta, load_split
from machine import enable_tf32, hardware_name, pick_device, pick_dtype


def table(r) -> str:
    """The JSON as a table for people."""
    n, q = r["nanogpt_cpu"], r["quality"]
    lines = [
        f"{r['device']} ({r['hardware']}), torch {r['torch']}, load average {r['load_avg_1min']}; matmul peak "
        f"{r['peak_gflops']:.0f} GFLOP/s ({r['peak_dtype']}){'   [--quick]' if r['quick'] else ''}",
        "",
        f"{'training':18} {'batch x accum x ctx':>20} {'ms/step':>10} {'tokens/s':>10} {'MFU':>7}",
    ]
    for name, t in r["training"].items():
        star = " *" if t["reduced_batch"] else ""
        shape = f"{t['batch_size']} x {t['grad_accum_steps']} x {t['block_size']}{star}"
        lines.append(f"{name:18} {shape:>20} {t['ms_per_step']:10.1f} {t['tokens_per_sec']:10,} {t['mfu']:7.1%}")
    if any(t["reduced_batch"] for t in r["training"].values()):
        lines.append("  * batch reduced on CPU: the preset's full batch would take minutes per step")
    lines += [
        "",
        f"nanoGPT CPU config (4L/4H/128, ctx 64, batch 12): {n['ms_per_step']:.1f} ms/step ({n['pct_of_peak']:.0f}% of the fp32 peak)",
        "  phases (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in n["phases_ms"].items()),
        "  " + n["notes"],
        "",
        f"{'generation':26} {'tokens':>6} {'cached tok/s':>13} {'uncached tok/s':>15} {'speed-up':>9} {'first token':>12}",
    ]
    for name, g in r["generation"].items():
        for k, v in ((k, v) for k, v in g.items() if k.endswith("_tokens")):
            lines.append(
                f"{name:26} {k.split('_')[0]:>6} {v['cached_tokens_per_sec']:13,.0f} {v['uncached_tokens_per_sec']:15,.1f} "
                f"{v['speedup']:8.1f}x {g['first_token_ms']:9.1f} ms"
            )
    for name, g in r["generation"].items():
        lines.append(
            f"  {name}: one cached token {g['decode_step_ms']:.2f} ms at half context, of which reading the "
            f"{g['weights_mb']:.0f} MB of weights (matrix-vector products alone) {g['matvec_floor_ms']:.2f} ms "
            f"({g['weight_read_gb_per_s']:.0f} GB/s); recomputing a full {g['block_size']}-token window {g['full_window_ms']:.1f} ms"
        )
    lines += same_run_lines(r)
    short = f" (shortened: {q['shortened']})" if q["shortened"] else ""
    lines += ["", f"quality: cpu preset, best val loss on the whole validation split{short}"]
    lines += [
        f"  seed {x['seed']}: {x['best_val_loss']:.4f} after {x['steps']} steps, {x['train_seconds']:.0f} s of training ({x['median_ms_per_step']:.1f} ms/step)"
        for x in q["runs"]
    ]
    lines.append(f"  mean {q['mean']:.4f} (min {q['min']:.4f}, max {q['max']:.4f}); target: {q['target']}")
    if r.get("browser"):
        lines += browser_table(r["browser"])
    return "\n".join(lines)


def same_run_lines(r) -> list:
    """The table's lines for nanoGPT's train.py and --compile, each measured beside ours in this run."""
    lines, v, c = [], r.get("vs_nanogpt"), r.get("compile")
    if v:
        turns = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(v["ms_per_step"], v["nanogpt_ms_per_step"]))
        lines += [
            "",
            f"vs nanoGPT's train.py, same run, its CPU config: ours/nanoGPT ms/step by turn {turns}; "
            f"median ratio {v['ratio']:.2f} (target <= {v['target_ratio']})",
        ]
        if v["compiled_ratio"] is not None:
            lines.append(
                f"  with --compile (compiling took {v['compile_seconds']:.0f} s, not counted): "
                + ", ".join(f"{x:.1f}" for x in v["compiled_ms_per_step"])
                + f" ms/step, median ratio {v['compiled_ratio']:.2f}"
            )
    elif r["device"] == "cpu":
        lines += ["", "vs nanoGPT's train.py: skipped (pass --nanogpt PATH, a checkout of karpathy/nanoGPT)"]
    for name, row in (c or {}).items():
        turns = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(row["compiled"], row["eager"]))
        lines.append(
            f"--compile at {name}: compiled/eager ms/step by turn {turns}; median ratio {row['ratio']:.2f}; "
            f"compiling takes {row['compile_seconds']:.0f} s"
        )
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps, 100-token generation, one short training run")
    ap.add_argument("--device", default="auto", help="auto = cuda > mps > cpu")
    ap.add_argument("--json", metavar="PATH", help="also write the JSON to this file")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--data-dir", default="data", help="folder written by data/prepare.py")
    ap.add_argument("--browser", action="store_true", help="also time the static Space's page in Chromium")
    ap.add_argument("--browser-only", action="store_true", help="only the static Space's page in Chromium")
    ap.add_argument("--explain", action="store_true", help="only the page's explain pass (Chromium, ORT, PyTorch)")
    ap.add_argument("--serving", action="store_true", help="only the serving benchmark: 1 user alone vs 16 at once")
    ap.add_argument("--app-dir", default=str(Path(__file__).parent), help="the checkout whose app.py --serving runs")
    ap.add_argument("--agreement", metavar="MODEL", help="only: batched vs alone texts of a trained model, 64 prompts")
    ap.add_argument("--timeline", action="store_true", help="only: the cpu preset with and without timeline.jsonl")
    ap.add_argument("--max-seconds", type=float, default=180, help="--timeline: each run's seconds of training")
    ap.add_argument("--nanogpt", metavar="PATH", help="a checkout of karpathy/nanoGPT: time its train.py in this run")
    args = ap.parse_args(argv)
    if (args.browser or args.browser_only or args.explain) and browser_ready():
        ap.error(f"--browser: {browser_ready()}")
    if args.explain:  # the static page's "Inside the model" pass on a full window: ~1 minute
        explain = bench_explain(load_meta(Path(args.data_dir))["vocab"])
        print(json.dumps({"load_avg_1min": round(os.getloadavg()[0], 2), "explain": explain}, indent=2))
        print("\n".join(explain_table(explain)), file=sys.stderr)
        return 0
    if args.browser_only:  # the in-browser section alone: a minute or two instead of ~9
        browser = bench_browser(load_meta(Path(args.data_dir))["vocab"])
        print(json.dumps({"load_avg_1min": round(os.getloadavg()[0], 2), "browser": browser}, indent=2))
        print("\n".join(browser_table(browser)), file=sys.stderr)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = pick_device(args.device)
    except ValueError as e:
        ap.error(str(e))
    if args.nanogpt and not (Path(args.nanogpt) / "train.py").is_file():
        ap.error(f"--nanogpt {args.nanogpt}: no train.py there; pass a checkout of karpathy/nanoGPT")
    enable_tf32(device)  # as train_gpt2 does
    meta, data = load_meta(Path(args.data_dir)), load_split(Path(args.data_dir), "train")
    if args.agreement:  # prompts from the validation split, which the model never trained on
        text = "".join(meta["vocab"][i] for i in load_split(Path(args.data_dir), "val").tolist())
        print(json.dumps(batch_agreement(args.agreement, text), indent=2))
        return 0
    if args.timeline:
        timeline = bench_timeline(device, args.data_dir, args.max_seconds)
        print(json.dumps({"load_avg_1min": round(os.getloadavg()[0], 2), "timeline": timeline}, indent=2))
        print("\n" + timeline_table(timeline), file=sys.stderr)
        return 0
    if args.serving:
        serving = bench_serving(meta["vocab"], Path(args.app_dir).resolve())
        result = {"load_avg_1min": round(os.getloadavg()[0], 2), "serving": serving}
        print(json.dumps(result, indent=2))
        print("\n" + serving_table(serving), file=sys.stderr)
        return 0
    peak_dtype = pick_dtype(device)  # fp32 on a CPU; bf16 (fp16 before Ampere) on a GPU, as training uses
    t0, peak = time.perf_counter(), matmul_peak(device, peak_dtype)
    result = {
        "device": device,
        "hardware": hardware_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "quick": args.quick,
        "peak_dtype": str(peak_dtype).removeprefix("torch."),
        "peak_gflops": round(peak / 1e9, 1),
        "training": bench_training(device, data, meta["vocab"], peak, args.quick),
        "nanogpt_cpu": bench_nanogpt_cpu(device, data, meta["vocab"], peak, args.quick),
        "vs_nanogpt": bench_vs_nanogpt(device, data, meta["vocab"], args.data_dir, args.nanogpt, args.quick),
        "compile": bench_compile(device, data, meta["vocab"], args.quick),
        "generation": bench_generation(device, meta["vocab"], args.quick),
        "quality": bench_quality(device, args.data_dir, args.quick),
        "browser": bench_browser(meta["vocab"]) if args.browser else None,
    }
    # other work on a shared machine slows every number down: the load average says how much there was
    result.update(bench_seconds=round(time.perf_counter() - t0, 1), load_avg_1min_end=round(os.getloadavg()[0], 2))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print("\n" + table(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
