"""Benchmark training speed, generation speed and quality at a time budget on this machine.

    python bench.py                          # everything: over 10 minutes on a 2-core CPU (3 training runs of 3 minutes)
    python bench.py --nanogpt ../nanoGPT     # also time nanoGPT's own train.py (a karpathy/nanoGPT checkout) in this run
    python bench.py --quick                  # a smoke check in 1-2 minutes (one training run cut to 1/10)
    python bench.py --device cuda --json bench.json      # on a GPU; the JSON also goes to a file
    python bench.py --threads 1              # torch.set_num_threads(1) first, to compare with the default
    python bench.py --browser                # also the static Space's page in Chromium (tests/install_test_tools.sh)
    python bench.py --browser-only           # only that: ~2 minutes
    python bench.py --serving                # only the app under load: 1 gradio_client user alone vs 16 at once (~1 min)
    python bench.py --serving --app-dir ../other-checkout   # the same against another checkout's app.py
    python bench.py --agreement out          # only: do batched texts equal generate_text's? (a trained model)

stdout gets one JSON document; the same numbers as a readable table go to stderr.
MFU = tokens/s x FLOPs per token / the matmul peak measured in the same run (an fp32 2048x2048
matmul on a CPU, the training dtype on a GPU). FLOPs per token = 6 N + 12 n_layer n_embd block_size
(PaLM appendix B, as in nanoGPT's estimate_mfu), N without the position embeddings.
"""

import argparse
import contextlib
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from data.prepare import load_meta, load_split
from machine import enable_tf32, hardware_name, pick_device, pick_dtype, sync
from model_gpt2 import GPT
from train_gpt2 import PRESETS, Machine, build_trainer, config_from_preset, lr_factor, model_config, train, train_step

NANOGPT_CPU = dict(
    n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0, bias=False, optimizer="adamw"
)  # nanoGPT's train.py: no biases
SHAKESPEARE_CHAR = dict(n_layer=6, n_head=6, n_embd=384, block_size=256)  # nanoGPT's 10.7M model


def timed(device, fn, *args):
    """Seconds that fn(*args) takes, waiting for a GPU to finish."""
    sync(device)
    t0 = time.perf_counter()
    fn(*args)
    sync(device)
    return time.perf_counter() - t0


def matmul_peak(device, dtype, n=2048) -> float:
    """FLOP/s of an n x n matmul: the most this device does on the densest op there is."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def run(k):
        for _ in range(k):
            a @ b

    run(1)  # warm up (thread pool, cuBLAS handle)
    reps = 1  # enough matmuls per timing that a GPU's launch and sync overheads do not count
    while timed(device, run, reps) < 0.05:
        reps *= 2
    # the best of 10: a peak is what the device can do, and a shared machine only ever slows a timing down
    return 2 * n**3 * reps / min(timed(device, run, reps) for _ in range(10))


def flops_per_token(model: GPT) -> int:
    c = model.config
    return 6 * model.num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * c.block_size


class StepTimer:
    """train_gpt2's own training step (train_step: micro-batches, unscale, clip, AdamW or Muon at the
    schedule's learning rate) on a new model, timed: a change to the step is measured as it is made."""

    def __init__(self, cfg, data, vocab, device):
        machine = Machine(ddp=False, rank=0, world=1, device=device, dtype=pick_dtype(device, cfg.dtype))
        self.trainer, self.device, self.n = build_trainer(cfg, machine, data, vocab), device, 0
        self.model = self.trainer.model

    def step(self, phases=None):
        """One optimizer step; with a dict `phases`, add each phase's seconds to it (syncing a GPU)."""
        t = time.perf_counter()

        def mark(name):
            nonlocal t
            sync(self.device)
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
            t = time.perf_counter()

        cfg = self.trainer.cfg
        train_step(self.trainer, self.n, lr_factor(self.n, cfg), mark if phases is not None else None)
        self.n += 1

    def ms_per_step(self, steps, warmup=2) -> float:
        """The median of `steps` step times after `warmup` steps: robust to a shared machine's spikes."""
        for _ in range(warmup):
            self.step()
        return 1000 * statistics.median(timed(self.device, self.step) for _ in range(steps))


def bench_training(device, data, vocab, peak, quick) -> dict:
    """Each preset's real training step. On a CPU the big presets run at batch 1 (full batches take minutes)."""
    out = {}
    for name in PRESETS:
        reduced = device == "cpu" and name != "cpu"
        cfg = config_from_preset(name, device=device, **(dict(batch_size=1, grad_accum_steps=1) if reduced else {}))
        tr = StepTimer(cfg, data, vocab, device)
        steps = 2 if reduced and name == "gpt2-124m" else 5 if quick else 20
        ms = tr.ms_per_step(steps, warmup=1 if reduced else 3)
        tokens_per_sec = 1000 * cfg.batch_size * cfg.grad_accum_steps * cfg.block_size / ms
        out[name] = {
            "params": tr.model.num_params(),
            "flops_per_token": flops_per_token(tr.model),
            "batch_size": cfg.batch_size,
            "grad_accum_steps": cfg.grad_accum_steps,
            "block_size": cfg.block_size,
            "reduced_batch": reduced,
            "ms_per_step": round(ms, 2),
            "tokens_per_sec": round(tokens_per_sec),
            "mfu": round(tokens_per_sec * flops_per_token(tr.model) / peak, 4),
        }
    return out


def op_times(tr: StepTimer, steps=5) -> dict:
    """ms per step of a CPU profile's op self times, summed by kind."""
    by_kind = dict.fromkeys(["matmul", "attention", "optimizer", "other"], 0.0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            tr.step()
    for ev in prof.events():
        root = ev  # the top-level call this op ran under: a Linear, attention, an autograd node, AdamW.step...
        while root.cpu_parent is not None:
            root = root.cpu_parent
        kind = "matmul" if ev.name in ("aten::mm", "aten::addmm", "aten::bmm") else "other"
        if kind == "other" and root.name.startswith("Optimizer.step"):
            kind = "optimizer"
        elif kind == "other" and "attention" in root.name.lower():
            kind = "attention"
        by_kind[kind] += ev.self_cpu_time_total / 1000 / steps  # us -> ms per step
    return {k: round(v, 2) for k, v in by_kind.items()}


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


def compiled_timer(overrides: dict, data, vocab, device) -> tuple[StepTimer, float]:
    """A StepTimer of the `cpu` preset with `overrides`, compiled (as train_gpt2.py does, in build_trainer,
    on a training batch), and the seconds compiling and its first step took."""
    torch._dynamo.reset()  # a model compiled earlier in this process would make compiling look free
    t0 = time.perf_counter()
    compiled = StepTimer(config_from_preset("cpu", device=device, **overrides, compile=True), data, vocab, device)
    compiled.step()
    return compiled, time.perf_counter() - t0


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


def bench_compile(device, data, vocab, quick) -> dict | None:
    """--compile's cost (seconds to compile, as train_gpt2.py does: compile_or_eager, then the first
    batch) and gain (ms per step) against eager, at nanoGPT's CPU configuration and the cpu preset.
    Eager and compiled steps are timed in turns (three each), so a shared machine's load moves both."""
    if quick:
        return None
    out = {}
    for name, overrides in (("nanogpt_cpu", NANOGPT_CPU), ("cpu", {})):
        eager = StepTimer(config_from_preset("cpu", device=device, **overrides), data, vocab, device)
        compiled, compile_s = compiled_timer(overrides, data, vocab, device)
        times = {"eager": [], "compiled": []}
        for _ in range(3):
            times["eager"].append(eager.ms_per_step(15, warmup=2))
            times["compiled"].append(compiled.ms_per_step(15, warmup=2))
        row = {k: [round(x, 2) for x in v] for k, v in times.items()}
        ratio = statistics.median(a / b for a, b in zip(times["compiled"], times["eager"]))
        out[name] = {**row, "compile_seconds": round(compile_s, 1), "ratio": round(ratio, 3)}
    return out


@torch.no_grad()
def nanogpt_generate(model, idx, max_new_tokens, generator, temperature=1.0):
    """nanoGPT's generate(): crop the context to block_size and run all of it through the model for every token."""
    for _ in range(max_new_tokens):
        idx_cond = idx if idx.size(1) <= model.config.block_size else idx[:, -model.config.block_size :]
        logits = model(idx_cond)[0][:, -1, :] / temperature
        probs = torch.softmax(logits, dim=-1)
        idx = torch.cat((idx, torch.multinomial(probs, num_samples=1, generator=generator)), dim=1)
    return idx


def median_seconds(device, fn, reps=30) -> float:
    fn()  # warm up
    return statistics.median(timed(device, fn) for _ in range(reps))


@torch.inference_mode()
def decode_costs(model: GPT, device) -> dict:
    """What one cached token costs against recomputing a full window, and the floor under it.

    The floor: the model's matrix-vector products alone (every weight read once), with nothing
    else of the decode step around them. On a CPU that is memory bandwidth; the rest of the step
    is ~100 small ops (LayerNorm, attention, GELU, adds, cache writes) and their dispatch.
    """
    c = model.config
    cache = model._new_cache(1)
    model(torch.zeros((1, c.block_size // 2), dtype=torch.long, device=device), kv_cache=cache)  # half-full cache
    tok = torch.zeros(1, dtype=torch.long, device=device)

    def step():
        model.decode_step(tok, cache)
        cache.pos -= 1  # the same position again: a steady context length

    mats = [
        (m.weight, torch.randn(m.in_features, device=device)) for m in model.modules() if isinstance(m, torch.nn.Linear)
    ]
    weights_mb = sum(w.numel() * w.element_size() for w, _ in mats) / 1e6
    floor = median_seconds(device, lambda: [torch.mv(w, x) for w, x in mats], reps=50)
    window = torch.zeros((1, c.block_size), dtype=torch.long, device=device)
    return {
        "decode_step_ms": round(1000 * median_seconds(device, step, reps=50), 3),
        "matvec_floor_ms": round(1000 * floor, 3),
        "weights_mb": round(weights_mb, 1),
        "weight_read_gb_per_s": round(weights_mb / 1000 / floor, 1),
        "full_window_ms": round(1000 * median_seconds(device, lambda: model(window), reps=5), 2),
    }


def bench_generation(device, vocab, quick) -> dict:
    """KV-cached model.stream() against nanoGPT's full recompute, on random weights (speed does not depend on them)."""
    cpu_arch = {k: PRESETS["cpu"][k] for k in SHAKESPEARE_CHAR}
    out = {}
    for name, arch in (("shakespeare-char (10.7M)", SHAKESPEARE_CHAR), ("cpu preset", cpu_arch)):
        torch.manual_seed(0)
        model = GPT(model_config(config_from_preset(None, **arch), len(vocab)), vocab=vocab).to(device).eval()
        prompt = model.encode_prompt("ROMEO:")
        first = [timed(device, next, model.stream(prompt, 10, seed=0)) for _ in range(5)]  # call -> first token
        res = {
            "params": model.num_params(),
            "block_size": arch["block_size"],
            "prompt_len": prompt.size(1),
            "first_token_ms": round(1000 * statistics.median(first), 2),
            **decode_costs(model, device),
        }
        for n in (100,) if quick else (100, 500):
            cached = timed(device, list, model.stream(prompt, n, seed=0))
            uncached = timed(device, nanogpt_generate, model, prompt, n, torch.Generator(device).manual_seed(0))
            res[f"{n}_tokens"] = {
                "cached_seconds": round(cached, 3),
                "uncached_seconds": round(uncached, 2),
                "cached_tokens_per_sec": round(n / cached, 1),
                "uncached_tokens_per_sec": round(n / uncached, 1),
                "speedup": round(uncached / cached, 1),
            }
        out[name] = res
    return out


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


# ---------------------------------------------------------------------------- in the browser (static Space)

ORT_WEB_CDN = "https://cdn.jsdelivr.net/npm/onnxruntime-web@1.30.0/dist/"  # what static/index.html loads
ORT_WEB_LOCAL = Path(__file__).resolve().parent / ".npm-test" / "node_modules" / "onnxruntime-web" / "dist"
CHROMIUM = "/usr/bin/chromium"


def browser_ready() -> str | None:
    """None when the in-browser benchmark can run, else what is missing."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} missing (apt-get install chromium)"
    if not ORT_WEB_LOCAL.is_dir():
        return "onnxruntime-web missing (bash tests/install_test_tools.sh)"
    return None


def ort_python_chars_per_sec(onnx_file, model: GPT, n: int) -> float:
    """The page's decode loop with onnxruntime in Python, 1 thread: the same graph, natively compiled."""
    import numpy as np
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = onnxruntime.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
    c = model.config
    key = value = np.zeros((0, c.n_layer, c.n_head, c.n_embd // c.n_head), dtype=np.float32)
    n = min(n, c.block_size - 6)  # within the context: no window slide here
    ids, t0 = [0] * 6, time.perf_counter()
    for _ in range(n):  # a 6-character prompt, then one position per character, as the page does
        logits, k, v = sess.run(
            None, {"input_ids": np.array([ids], dtype=np.int64), "past_key": key, "past_value": value}
        )
        key, value, ids = np.concatenate([key, k]), np.concatenate([value, v]), [int(logits[0, -1].argmax())]
    return n / (time.perf_counter() - t0)


def page_run(page, url, n) -> dict:
    """Load the page (model download + ORT start), then generate n characters greedily after "ROMEO:", best of 3
    (the first run also pays for WebAssembly's tier-up compilation; a shared machine only ever slows a run down)."""
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("#generate:enabled", timeout=300_000)
    load_s = time.perf_counter() - t0
    page.locator("#max_tokens").fill(str(n))
    page.locator("#temperature").fill("0")
    runs = []
    for _ in range(3):
        page.evaluate("document.body.dataset.state = ''")
        page.locator("#generate").click()
        page.wait_for_function("document.body.dataset.state === 'done'", timeout=300_000)
        runs.append(page.evaluate("window.lastRun"))
    best = max(runs, key=lambda r: r["chars"] / r["seconds"])
    return {
        "load_seconds": round(load_s, 1),
        "chars_per_sec": round(best["chars"] / best["seconds"], 1),
        "first_char_ms": round(best["firstMs"], 1),
        "threads": page.evaluate("ort.env.wasm.numThreads"),
        "isolated": page.evaluate("self.crossOriginIsolated"),
    }


def bench_browser(vocab, n=200) -> dict:
    """The static Space's page in headless Chromium (random weights: speed does not depend on them): characters
    per second and time to the first character with 1 WebAssembly thread and with one per core, next to the same
    ONNX graph in onnxruntime (Python, 1 thread) and PyTorch's decode_step."""
    import threading

    from playwright.sync_api import sync_playwright

    import hub
    from export_onnx import export_onnx

    cpu_arch = {k: PRESETS["cpu"][k] for k in SHAKESPEARE_CHAR}
    out, threads = {}, sorted({1, 2, min(4, os.cpu_count() or 1)})
    with sync_playwright() as p, tempfile.TemporaryDirectory() as tmp:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()

        # the pinned CDN URL answered from the npm install, nothing leaves the machine: redirected to a loopback
        # server, because Playwright passing the 14 MB .wasm through route.fulfill() takes seconds of its own
        ort_server = cors_file_server(ORT_WEB_LOCAL)
        ort_url = f"http://127.0.0.1:{ort_server.server_port}/"
        page.route(
            ORT_WEB_CDN + "**",
            lambda route: route.fulfill(
                status=307,
                headers={
                    "location": ort_url + route.request.url.removeprefix(ORT_WEB_CDN),
                    "access-control-allow-origin": "*",
                },
            ),
        )
        for name, arch in (("cpu preset", cpu_arch), ("shakespeare-char (10.7M)", SHAKESPEARE_CHAR)):
            torch.manual_seed(0)
            model = GPT(model_config(config_from_preset(None, **arch), len(vocab)), vocab=vocab).eval()
            folder = Path(tmp, name.split()[0])
            model.save_pretrained(folder)
            onnx_file = export_onnx(model, folder)
            server = hub.preview_server(folder, onnx_file, port=0)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            try:
                url = f"http://127.0.0.1:{server.server_port}/"
                res = {"params": model.num_params(), "onnx_mb": round(onnx_file.stat().st_size / 1e6, 1)}
                res.update({f"{t}_threads": page_run(page, f"{url}?threads={t}", n) for t in threads})
            finally:
                server.shutdown()
                server.server_close()
            res["ort_python_1_thread_chars_per_sec"] = round(ort_python_chars_per_sec(onnx_file, model, n), 1)
            res["torch_decode_step_ms"] = decode_costs(model, "cpu")["decode_step_ms"]
            out[name] = res
        browser.close()
        ort_server.shutdown()
    return out


def cors_file_server(folder):
    """A loopback server for the files in folder, with the headers jsDelivr sends (CORS, CORP)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Handler(SimpleHTTPRequestHandler):
        extensions_map = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript"}

        def end_headers(self):
            self.send_header("access-control-allow-origin", "*")
            self.send_header("cross-origin-resource-policy", "cross-origin")
            super().end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def browser_table(b) -> list[str]:
    lines = ["", f"{'in the browser (Chromium, WASM)':32} {'threads':>7} {'chars/s':>8} {'first char':>11} {'load':>7}"]
    for name, r in b.items():
        for run in (v for k, v in r.items() if k.endswith("_threads")):
            lines.append(
                f"{name:32} {run['threads']:7} {run['chars_per_sec']:8.1f} {run['first_char_ms']:8.1f} ms {run['load_seconds']:5.1f} s"
            )
        lines.append(
            f"  same graph in onnxruntime (Python, 1 thread): {r['ort_python_1_thread_chars_per_sec']:.0f} chars/s; "
            f"PyTorch decode_step {r['torch_decode_step_ms']:.2f} ms"
        )
    return lines


# ---------------------------------------------------------------- serving: the app under many users


def start_app(app_dir: Path, model_dir: Path, log: Path):
    """`python app.py --model DIR --port P` in app_dir (this checkout, or another one to compare); its URL once up."""
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "app.py", "--model", str(model_dir), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=app_dir, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 180
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"app.py did not start:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(url, timeout=5).status == 200:
                return proc, url
        time.sleep(0.5)


POLL = 0.005  # seconds between a benchmark user's looks at its streamed updates


def serve_users(url, n_users, chars) -> list[dict]:
    """n_users gradio_client users ask for `chars` characters at the same moment; each one's timings."""
    import threading

    from gradio_client import Client

    # one session each. ssl_verify=False: gradio_client builds a new HTTP client for every request and
    # every stream, and with verification on each one loads the CA bundle (~30 ms of CPU); 16 users
    # doing that at once in this process would delay their own first characters by a second. The URL
    # is plain http on loopback: there is no certificate to verify.
    clients = [Client(url, verbose=False, analytics_enabled=False, ssl_verify=False) for _ in range(n_users)]
    barrier = threading.Barrier(n_users)
    results = [None] * n_users

    def user(i):
        prompt = ("ROMEO:", "First Citizen:\n", "To be, or not", "KING RICHARD III:\nNow is the")[i % 4]
        barrier.wait()
        t0, first = time.perf_counter(), None
        job = clients[i].submit(prompt, chars, 0.8, 0, 1.0, i, api_name="/generate")
        # the updates are read every POLL seconds: iterating over the job instead would wake each
        # user's thread 1,000 times a second (gradio_client's Job.__next__ polls that way), and 16 such
        # threads take CPU from the server this measures
        seen = 0
        while not job.done():
            outs = job.outputs()
            for out in outs[seen:]:
                text = out[0]["value"] if isinstance(out[0], dict) else out[0]  # a dict: a "waiting" notice
                if first is None and len(text) > len(prompt):
                    first = time.perf_counter() - t0
            seen = len(outs)
            time.sleep(POLL)
        text = job.result()[0]
        if first is None:  # the whole text came in one update
            first = time.perf_counter() - t0
        results[i] = {
            "first_text_s": first,
            "finish_s": time.perf_counter() - t0,
            "right": text.startswith(prompt) and len(text) == len(prompt) + chars,
        }

    threads = [threading.Thread(target=user, args=(i,)) for i in range(n_users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def bench_serving(vocab, app_dir: Path, users=16, chars=200, alone_runs=5) -> dict:
    """One gradio_client user alone against `users` at once, on `python app.py` over loopback, with the
    10.7M shakespeare-char shape (random weights: speed does not depend on them)."""
    torch.manual_seed(0)
    model = GPT(model_config(config_from_preset(None, **SHAKESPEARE_CHAR), len(vocab)), vocab=vocab)
    loop = loop_ceiling(model, users, chars) if app_dir == Path(__file__).resolve().parent else None
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        proc, url = start_app(app_dir, Path(tmp), Path(tmp) / "app.log")
        try:
            serve_users(url, 1, 20)  # warm up: the first request pays for one-time set-up
            alone = [serve_users(url, 1, chars)[0] for _ in range(alone_runs)]
            crowd = serve_users(url, users, chars)
        finally:
            proc.terminate()
            proc.wait()

    def summary(rows, wall):
        first, finish = [r["first_text_s"] or float("nan") for r in rows], [r["finish_s"] for r in rows]
        return {
            "users": len(rows),
            "chars_each": chars,
            "all_right": all(r["right"] for r in rows),
            "chars_per_sec": round(len(rows) * chars / wall, 1),
            "first_text_p50_s": round(percentile(first, 0.5), 3),
            "first_text_p95_s": round(percentile(first, 0.95), 3),
            "finish_p50_s": round(percentile(finish, 0.5), 3),
            "finish_p95_s": round(percentile(finish, 0.95), 3),
        }

    # the user alone, run alone_runs times: its rate is that of its median run
    one = {
        **summary(alone, alone_runs * statistics.median(r["finish_s"] for r in alone)),
        "users": 1,
        "runs": alone_runs,
    }
    many = summary(crowd, max(r["finish_s"] for r in crowd))
    return {
        "app": str(app_dir),
        "loop_only": loop,
        "one_user": one,
        f"{users}_users": many,
        "aggregate_x": round(many["chars_per_sec"] / one["chars_per_sec"], 2),
        "finish_p95_x": round(many["finish_p95_s"] / one["finish_p95_s"], 2),
    }


def loop_ceiling(model: GPT, users: int, chars: int) -> dict:
    """The decode loop alone (engine.py, no server, no HTTP, PyTorch's threads as app.py gives it): one
    request against `users` at once. What the app can reach at most; the rest is the server's cost."""
    from engine import Engine

    engine = Engine(model, slots=users)
    ids = model.tokenizer.encode("ROMEO:")

    def run(n):
        t0 = time.perf_counter()
        for req in [engine.submit(ids, chars, temperature=0.8, seed=i) for i in range(n)]:
            req.result()
        return time.perf_counter() - t0

    run(1)  # warm up
    one, many = statistics.median(run(1) for _ in range(3)), statistics.median(run(users) for _ in range(3))
    engine.close()
    return {"one_chars_per_sec": round(chars / one), f"{users}_chars_per_sec": round(users * chars / many)}


def batch_agreement(model_dir, text: str, prompts=64, chars=200) -> dict:
    """How often batching changes a text: `prompts` prompts (slices of `text`) x `chars` characters, 16 at a
    time through the engine, against generate_text alone; greedy and seeded. A batched matrix product may sum
    in another order than the matrix-vector product of a lone request, which could flip a near-tie."""
    import random

    from engine import Engine
    from model_gpt2 import load_model

    model, rng = load_model(model_dir), random.Random(0)
    starts = [rng.randrange(len(text) - 200) for _ in range(prompts)]
    starts = [text[i : i + rng.randrange(5, 120)] for i in starts]
    engine, tok, out = Engine(model, slots=16), model.tokenizer, {}
    for name, sampling in (("greedy", dict(temperature=0)), ("seeded", dict(temperature=0.8, seed=1))):
        same = 0
        for k in range(0, prompts, 16):
            reqs = [(p, engine.submit(tok.encode(p), chars, **sampling)) for p in starts[k : k + 16]]
            same += sum(p + tok.decode(r.result()) == model.generate_text(p, chars, **sampling) for p, r in reqs)
        out[name] = {"texts": prompts, "chars_each": chars, "equal_to_generate_text": same}
    return out


def serving_table(s) -> str:
    lines = [
        f"serving: app.py in {s['app']}, 10.7M model, gradio_client users on loopback",
        f"{'':10} {'chars/s':>9} {'first text p50':>15} {'p95':>7} {'finish p50':>11} {'p95':>7}  all right",
    ]
    for key in (k for k in s if k.endswith(("_user", "_users"))):
        r = s[key]
        lines.append(
            f"{r['users']:2} user{'s' if r['users'] > 1 else ' '}   {r['chars_per_sec']:9,.0f} "
            f"{r['first_text_p50_s']:13.2f} s {r['first_text_p95_s']:5.2f} s {r['finish_p50_s']:9.2f} s "
            f"{r['finish_p95_s']:5.2f} s  {r['all_right']}"
        )
    lines.append(
        f"  {s['aggregate_x']}x the characters/s of one user alone; p95 finish {s['finish_p95_x']}x one user's"
    )
    if s.get("loop_only"):
        one, many = s["loop_only"].values()
        lines.append(
            f"  the decode loop alone, no server: {one:,} chars/s for 1 request, {many:,} for 16 at once "
            f"({many / one:.2f}x): the most the app could reach on this machine"
        )
    return "\n".join(lines)


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
    ap.add_argument("--serving", action="store_true", help="only the serving benchmark: 1 user alone vs 16 at once")
    ap.add_argument("--app-dir", default=str(Path(__file__).parent), help="the checkout whose app.py --serving runs")
    ap.add_argument("--agreement", metavar="MODEL", help="only: batched vs alone texts of a trained model, 64 prompts")
    ap.add_argument("--nanogpt", metavar="PATH", help="a checkout of karpathy/nanoGPT: time its train.py in this run")
    args = ap.parse_args(argv)
    if (args.browser or args.browser_only) and browser_ready():
        ap.error(f"--browser: {browser_ready()}")
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
