"""train_gpt2: the step (accumulation, scaler, clipping), the schedule, checkpoints, resume,
distributed training with real torchrun processes, and clear errors for bad input."""

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from helpers import ROOT, make_tiny_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import train_gpt2 as tg
from model_gpt2 import GPT, load_model
from schedule import get_lr
from train_config import PRESETS, ConfigError, TrainConfig, check_config, config_from_preset, parse_args

# A model small enough that a run takes seconds on 2 cores.
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, eval_iters=2, sample_chars=0, log_interval=5)
TINY_FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]


def run_train(*args, check=True, **kwargs):
    """train_gpt2.py as a user runs it."""
    proc = subprocess.run([sys.executable, "train_gpt2.py", *args], cwd=ROOT, capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"train_gpt2.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def weights(path: Path) -> dict:
    return load_file(str(path))


def assert_same_weights(a: dict, b: dict, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0:
            assert torch.equal(a[k], b[k]), k
        else:
            assert torch.allclose(a[k], b[k], atol=atol, rtol=0), (k, (a[k] - b[k]).abs().max())


def resume_weights(out_dir: Path) -> dict:
    with safe_open(str(out_dir / "resume.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.")}


def resume_step(out_dir: Path) -> int:
    with safe_open(str(out_dir / "resume.safetensors"), framework="pt") as f:
        return json.loads(f.metadata()["state"])["step"]


def kill_after(flags: list, out_dir: Path, step: int) -> int:
    """Start `train_gpt2.py flags --out-dir out_dir`, SIGKILL it once its resume state has reached `step`
    (as a crash or a pulled plug would); return the step the state was saved at."""
    proc = subprocess.Popen(
        [sys.executable, "train_gpt2.py", *flags, f"--out-dir={out_dir}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if resume_step(out_dir) >= step:
                break
        except Exception:  # not written yet, or being replaced
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return resume_step(out_dir)


# ---------------------------------------------------------------- the optimisation step


def test_gradient_accumulation_matches_one_big_batch():
    """One micro-batch of 2B and two micro-batches of B (each loss / 2) give the same gradients."""
    model = make_tiny_model("abcdefgh", block_size=16)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 8, (8, 16), generator=g), torch.randint(0, 8, (8, 16), generator=g)
    model(x, y)[1].backward()
    big = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for xs, ys in ((x[:4], y[:4]), (x[4:], y[4:])):
        (model(xs, ys)[1] / 2).backward()
    for a, b in zip(big, [p.grad for p in model.parameters()]):
        assert torch.allclose(a, b, atol=1e-6)


def test_grad_scaler_clips_the_true_norm():
    """With a GradScaler the gradients are multiplied by the loss scale; clip_and_step unscales first,
    so the norm it reports (and clips) is the true, unscaled one and the update is the same."""
    torch.manual_seed(0)
    x, y = torch.randint(0, 8, (4, 16)), torch.randint(0, 8, (4, 16))
    results = []
    for enabled in (False, True):
        model = make_tiny_model("abcdefgh", block_size=16)
        opt = model.configure_optimizers(0.1, 1e-2, (0.9, 0.99), "cpu")
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=enabled)
        scaler.scale(model(x, y)[1]).backward()
        if enabled:
            assert model.lm_head.weight.grad.abs().max() > 100 * results[0][0] / 1e3  # really scaled
        norm = tg.clip_and_step(model, opt, scaler, grad_clip=0.05)
        results.append((norm.item(), model.transformer.h[0].attn.c_attn.weight.detach().clone()))
        assert model.lm_head.weight.grad is None  # zeroed for the next step
    (true_norm, w_plain), (scaled_norm, w_scaled) = results
    assert true_norm > 0.05  # the clip is active
    assert scaled_norm == pytest.approx(true_norm, rel=1e-5)
    assert torch.allclose(w_plain, w_scaled, atol=1e-6)


def test_learning_rate_schedule():
    cfg = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110)
    lrs = [get_lr(i, cfg) for i in range(cfg.max_iters + 1)]
    assert lrs[0] > 0  # warmup starts above zero: step 0 updates the weights
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # linear warmup
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[60] == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way down the cosine
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[110] == pytest.approx(1e-4) and get_lr(500, cfg) == pytest.approx(1e-4)


# ---------------------------------------------------------------- command line


@pytest.mark.slow
def test_flags_come_from_the_dataclass_and_override_the_preset():
    cfg = parse_args(["--preset", "cpu", "--n-layer", "2", "--learning-rate", "0.01", "--no-bias", "--compile"])
    assert cfg.n_layer == 2 and cfg.learning_rate == 0.01 and cfg.bias is False and cfg.compile is True
    assert cfg.n_embd == PRESETS["cpu"]["n_embd"]  # the rest from the preset
    sc = parse_args(["--preset", "shakespeare-char"])
    assert (sc.n_layer, sc.n_head, sc.n_embd, sc.block_size, sc.dropout) == (6, 6, 384, 256, 0.2)
    big = parse_args(["--preset", "gpt2-124m"])
    assert (big.n_layer, big.n_head, big.n_embd, big.block_size) == (12, 12, 768, 1024)
    help_text = run_train("--help").stdout
    for field in TrainConfig.__dataclass_fields__:
        assert "--" + field.replace("_", "-") in help_text
    assert "peak learning rate (default: 0.001)" in " ".join(help_text.split())


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def short_run(prepared_data, tmp_path_factory):
    """A short CPU run of the real script: 300 steps of a small model."""
    out = tmp_path_factory.mktemp("run") / "out"
    proc = run_train(
        f"--data-dir={prepared_data}",
        f"--out-dir={out}",
        *TINY_FLAGS,
        "--max-iters=300",
        "--eval-interval=100",
        "--learning-rate=4e-3",
        "--min-lr=4e-4",
        "--warmup-iters=20",
        "--sample-chars=80",
    )
    return out, proc


@pytest.mark.slow
def test_short_cpu_run_learns_and_saves_the_best_model(short_run):
    out, proc = short_run
    model = GPT.from_pretrained(str(out))
    info = model.train_info
    assert info["val_loss_full"] < 2.8 < math.log(65)  # uniform guessing is ln(65) = 4.17
    assert "val loss" in proc.stdout and "--- sample 1" in proc.stdout and "plain lines" not in proc.stdout
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if "val_loss" in r]
    logs = [r for r in recs if "val_loss" not in r]
    assert [r["step"] for r in evals] == [100, 200, 300]
    assert (
        all({"step", "train_loss", "lr", "tokens_per_sec"} <= r.keys() for r in logs) and logs[-1]["tokens_per_sec"] > 0
    )
    best = min(evals, key=lambda r: r["val_loss"])
    assert info["val_loss"] == round(best["val_loss"], 4) and info["step"] == best["step"]  # best by validation
    assert info["tokens_seen"] == best["step"] * 8 * 32
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "generation_config.json",
        "loss.png",
        "metrics.jsonl",
        "model.safetensors",
        "resume.safetensors",
        "timeline.jsonl",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


@pytest.mark.slow
def test_a_worse_evaluation_never_overwrites_the_best_model(prepared_data, tmp_path):
    """Once val loss gets worse (a learning rate far too high), the saved model stays the best one."""
    out = tmp_path / "out"
    run_train(
        f"--data-dir={prepared_data}",
        f"--out-dir={out}",
        *TINY_FLAGS,
        "--max-iters=60",
        "--eval-interval=10",
        "--learning-rate=0.3",
        "--min-lr=0.3",
        "--warmup-iters=0",
        "--grad-clip=0",
    )
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "val_loss" in line]
    assert any(not r["saved"] for r in evals)
    best = min(evals, key=lambda r: r["val_loss"])
    assert load_model(out).train_info["step"] == best["step"]


@pytest.mark.slow
def test_kill_and_resume_equals_an_uninterrupted_run(prepared_data, tmp_path):
    """SIGKILL mid-run, then --resume: the same final weights, bit for bit, as a run never interrupted (CPU)."""
    flags = [f"--data-dir={prepared_data}", *TINY_FLAGS, "--dropout=0.1", "--max-iters=400", "--eval-interval=40"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_train(*flags, f"--out-dir={whole}")

    killed_at = kill_after(flags, killed, 80)
    assert 80 <= killed_at < 400, "the run must be killed part way"
    load_model(killed)  # the last good checkpoint is loadable after the crash

    resumed = run_train(*flags, f"--out-dir={killed}", "--resume")
    assert f"resuming at step {killed_at}" in resumed.stdout
    assert_same_weights(resume_weights(killed), resume_weights(whole))
    assert_same_weights(weights(killed / "model.safetensors"), weights(whole / "model.safetensors"))

    # metrics.jsonl reads as if never interrupted: the killed run's lines past the resume point are gone
    def losses(out):
        recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["train_loss"], r.get("val_loss")) for r in recs]

    assert losses(killed) == losses(whole)

    # and so does timeline.jsonl: each step once, its sample and losses as the uninterrupted run's (not the seconds)
    def timeline(out):
        rows = [json.loads(line) for line in (out / "timeline.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert [r["step"] for r in timeline(killed)] == list(range(0, 401, 40))
    assert timeline(killed) == timeline(whole)


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_with_accumulation(prepared_data, tmp_path):
    """DDP with 2 CPU processes (gloo) and one process accumulating 2 micro-batches see the same data
    and end with the same weights (up to float summation order)."""
    flags = [f"--data-dir={prepared_data}", *TINY_FLAGS, "--max-iters=30", "--eval-interval=15", "--grad-accum-steps=2"]
    run_train(*flags, f"--out-dir={tmp_path / 'one'}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*torchrun, "train_gpt2.py", *flags, f"--out-dir={tmp_path / 'two'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("device cpu") == 1  # only rank 0 prints
    assert "2 process(es)" in proc.stdout
    one, two = resume_weights(tmp_path / "one"), resume_weights(tmp_path / "two")
    assert_same_weights(one, two, atol=2e-5)
    logs = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert logs[0]["tokens_per_sec"] > 0 and "tokens_per_sec" in logs[0]


def test_non_finite_losses_skip_updates_then_stop_with_the_checkpoint_intact(prepared_data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    cfg = config_from_preset(
        None, data_dir=str(prepared_data), out_dir=str(out), **TINY, max_iters=100, eval_interval=10
    )
    forward = GPT.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None, kv_cache=None):
        logits, loss = forward(self, idx, targets, kv_cache)
        if targets is not None and self.training:
            calls["n"] += 1
            if (
                calls["n"] in (3, 4, 10) or calls["n"] > 25
            ):  # isolated bad steps (the 10th is due an eval), then divergence
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", poisoned)
    saved = {}
    with (
        pytest.warns(UserWarning, match="non-finite loss"),
        pytest.raises(
            FloatingPointError,
            match=r"The best model \(val loss [\d.]+\) is intact in .* the last good state \(step 20\)",
        ),
    ):
        try:
            tg.train(cfg, progress=False)
        finally:
            saved = weights(out / "model.safetensors")
    monkeypatch.setattr(GPT, "forward", forward)
    best = load_model(out)
    assert best.train_info["step"] == 20  # the last evaluation before the divergence
    evals = [
        json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if "val_loss" in line
    ]
    assert evals == [10, 20]  # a skipped update does not skip the evaluation due at that step
    assert_same_weights(weights(out / "model.safetensors"), saved)
    assert all(torch.isfinite(t).all() for t in saved.values())


def test_diverged_weights_never_overwrite_the_resume_state(prepared_data, tmp_path, monkeypatch):
    """Weights blown up by an update (finite loss, then inf): later evaluations are not finite, and
    resume.safetensors keeps the last good state that the error message tells the user to resume from."""
    out = tmp_path / "out"
    cfg = config_from_preset(
        None, data_dir=str(prepared_data), out_dir=str(out), **TINY, max_iters=100, eval_interval=10
    )
    real, updates = tg.clip_and_step, {"n": 0}

    def blow_up(model, *args):
        norm = real(model, *args)
        updates["n"] += 1
        if updates["n"] == 27:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("inf"))
        return norm

    monkeypatch.setattr(tg, "clip_and_step", blow_up)
    with pytest.warns(UserWarning) as caught, pytest.raises(FloatingPointError):
        tg.train(cfg, progress=False)
    messages = [str(w.message) for w in caught]
    assert "step 27: non-finite loss (nan), update skipped (1 in a row)" in messages
    assert "step 30: evaluation is not finite; resume.safetensors kept as it was" in messages
    meta, tensors = tg.read_resume_state(out / "resume.safetensors")
    assert meta["step"] == 20
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model."))


# ---------------------------------------------------------------- bad input: a clear error before any work


def untouched(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


class Result:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


def main_in_process(capsys, *args):
    """train_gpt2.main as the command line calls it (in-process: these fail before any work)."""
    code = tg.main(list(args))
    return Result(code, capsys.readouterr().err)


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--n-embd=30", "--n-head=4"], "n_embd .* divisible by n_head .* --n-embd"),
        (["--block-size=0"], "block_size must be a positive integer"),
        (["--batch-size=0"], "--batch-size must be >= 1"),
        (["--learning-rate=0"], "learning-rate"),
        (["--dtype=float8"], "--dtype must be"),
        (["--push-to-hub=noslash"], "ORG/NAME"),
        (["--block-size=200000"], "too few for --block-size"),
        (["--device=gpu"], "'gpu' is not a device; use auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_invalid_values(prepared_data, tmp_path, capsys, flags, match):
    proc = main_in_process(capsys, f"--data-dir={prepared_data}", f"--out-dir={tmp_path / 'out'}", *TINY_FLAGS, *flags)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert any(__import__("re").search(match, line) for line in proc.stderr.splitlines()), proc.stderr
    assert not (tmp_path / "out").exists()


def test_grad_accum_must_divide_among_processes():
    with pytest.raises(ConfigError, match="multiple of the number of processes"):
        check_config(TrainConfig(grad_accum_steps=3), world_size=2)


def test_missing_or_empty_data(tmp_path, prepared_data, capsys):
    proc = main_in_process(capsys, f"--data-dir={tmp_path}", f"--out-dir={tmp_path / 'out'}")
    assert proc.returncode == 2 and "Run `python data/prepare.py` first" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "meta.json").write_bytes((prepared_data / "meta.json").read_bytes())
    (empty / "train.bin").write_bytes(b"")
    (empty / "val.bin").write_bytes(b"")
    proc = main_in_process(capsys, f"--data-dir={empty}", f"--out-dir={tmp_path / 'out'}")
    assert proc.returncode == 2 and "train.bin is missing or empty" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_out_dir_holding_something_else_or_a_run(prepared_data, tmp_path, short_run, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    proc = main_in_process(capsys, f"--data-dir={prepared_data}", f"--out-dir={other}", *TINY_FLAGS)
    assert proc.returncode == 2 and "not empty" in proc.stderr and untouched(other) == {"notes.txt": b"mine"}

    out, _ = short_run
    before = untouched(out)
    proc = main_in_process(capsys, f"--data-dir={prepared_data}", f"--out-dir={out}", *TINY_FLAGS)
    assert proc.returncode == 2 and "pass --resume" in proc.stderr
    proc = main_in_process(
        capsys, f"--data-dir={prepared_data}", f"--out-dir={out}", *TINY_FLAGS, "--n-layer=3", "--resume"
    )
    assert proc.returncode == 2 and "--n-layer (saved 2, given 3)" in proc.stderr
    proc = main_in_process(capsys, f"--data-dir={prepared_data}", f"--out-dir={other}", *TINY_FLAGS, "--resume")
    assert proc.returncode == 2 and "holds no training run" in proc.stderr
    assert untouched(out) == before


@pytest.mark.slow
def test_resume_takes_the_saved_settings_and_only_the_flags_typed_now(short_run, tmp_path):
    """`--out-dir out --resume` continues the run as it was started (no preset or flags to repeat);
    a flag typed now (a longer --max-iters, another --weight-decay) changes just that, and says so."""
    out = tmp_path / "out"
    shutil.copytree(short_run[0], out)
    saved = tg.read_resume_meta(out / "resume.safetensors")["config"]
    assert dataclasses.asdict(parse_args([f"--out-dir={out}", "--resume"])) == {
        **saved,
        "resume": True,
        "out_dir": str(out),
    }
    with pytest.raises(SystemExit):  # a preset would say nothing: the saved settings are the run's
        parse_args([f"--out-dir={out}", "--resume", "--preset=cpu"])

    proc = run_train(f"--out-dir={out}", "--resume", "--max-iters=320", "--weight-decay=0.5")
    assert "resuming at step 300 -> 320 steps" in proc.stdout
    assert "changed since the run was saved: --max-iters 300 -> 320, --weight-decay 0.1 -> 0.5" in proc.stdout
    meta = tg.read_resume_meta(out / "resume.safetensors")
    assert meta["step"] == 320 and meta["config"]["learning_rate"] == saved["learning_rate"] == 4e-3
    assert [g["weight_decay"] for g in meta["param_groups"]] == [0.5, 0.0]

    # where it runs and where it pushes belong to this machine and this command, not to the saved run
    meta, tensors = tg.read_resume_state(out / "resume.safetensors")
    meta["config"].update(device="cuda", compile=True, push_to_hub="someone/char-gpt")
    save_file(tensors, str(out / "resume.safetensors"), metadata={"state": json.dumps(meta)})
    cfg = parse_args([f"--out-dir={out}", "--resume"])
    default = TrainConfig()
    assert (cfg.device, cfg.compile, cfg.push_to_hub) == (default.device, default.compile, default.push_to_hub)
    assert not default.push_to_hub and not default.compile


@pytest.mark.slow
def test_resume_with_data_of_another_vocabulary(prepared_data, tmp_path, short_run, capsys):
    from data.prepare import prepare

    other_data = tmp_path / "data"
    prepare("a different text with another alphabet " * 100, other_data)
    out, _ = short_run
    before = untouched(out)
    proc = main_in_process(capsys, f"--data-dir={other_data}", f"--out-dir={out}", *TINY_FLAGS, "--resume")
    assert proc.returncode == 2 and "different vocabulary" in proc.stderr
    assert untouched(out) == before


# ---------------------------------------------------------------- compile


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken(model, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    model = make_tiny_model("abcd")
    with pytest.warns(UserWarning, match="torch.compile failed .* training eagerly"):
        assert tg.compile_or_eager(model, (torch.zeros((1, 8), dtype=torch.long),) * 2) is model


@pytest.mark.slow
def test_compile_on_cpu_trains_as_eager(prepared_data, tmp_path, monkeypatch):
    """--compile on a CPU (inductor; there the MLP's GELU takes its sigmoid form) trains the model
    eager training does: the same losses and weights after 10 steps, up to float rounding. It compiles
    once, before the run: the batches training feeds it do not compile it again."""
    torch._dynamo.reset()  # no compiled model of an earlier test counts as this one's first compile
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    common = dict(
        data_dir=str(prepared_data), **TINY, max_iters=10, eval_interval=5, device="cpu"
    )  # train, eval, train

    def run(out, **kw):
        return tg.train(config_from_preset(None, out_dir=str(tmp_path / out), **{**common, **kw}), progress=False)

    eager = run("eager")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")  # a fallback to eager would pass unseen
        compiled = run("compiled", compile=True)
    assert compiled["best_val_loss"] == pytest.approx(eager["best_val_loss"], abs=1e-4)
    assert_same_weights(resume_weights(tmp_path / "eager"), resume_weights(tmp_path / "compiled"), atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA AMP, fused AdamW and compile need a GPU")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])  # fp16 runs the GradScaler, bf16 does not need it
def test_cuda_amp_fused_adamw_compile_and_resume(prepared_data, tmp_path, dtype):
    """On a GPU: AMP in both precisions with torch.compile learns as fp32 does, and a run resumes on
    CUDA (the GradScaler's state and the CUDA RNG saved and restored)."""
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    common = dict(data_dir=str(prepared_data), **TINY, eval_interval=25, device="cuda")

    def run(out, **kw):
        return tg.train(config_from_preset(None, out_dir=str(tmp_path / out), **{**common, **kw}), progress=False)

    fp32 = run("fp32", max_iters=50, dtype="float32")
    amp = run("amp", max_iters=50, dtype=dtype, compile=True)
    assert amp["best_val_loss"] < 3.5 and abs(amp["best_val_loss"] - fp32["best_val_loss"]) < 0.1
    run("resumed", max_iters=25, dtype=dtype)
    resumed = run("resumed", max_iters=50, dtype=dtype, resume=True)
    meta = tg.read_resume_meta(tmp_path / "resumed" / "resume.safetensors")
    assert meta["step"] == 50 and resumed["best_val_loss"] < 3.5
    assert bool(meta["scaler"]) == (dtype == "float16")  # the scale an fp16 run had reached is kept
    model = make_tiny_model("abcd").cuda()
    assert model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cuda").defaults["fused"] is True


def test_a_budget_spent_between_evaluations_still_scores_and_saves_the_last_step(prepared_data, tmp_path, monkeypatch):
    """A machine that slows down past --max-seconds mid-run (one step takes the rest of the budget): the run
    stops, and its last step is evaluated and saved like any other end of a run."""
    out = tmp_path / "out"
    cfg = config_from_preset(
        "cpu",
        data_dir=str(prepared_data),
        out_dir=str(out),
        **TINY,
        max_iters=10_000,
        eval_interval=5_000,
        max_seconds=1.5,
    )
    real, count = tg.train_step, {"n": 0}

    def slow_once(*args, **kwargs):
        count["n"] += 1
        if count["n"] == 15:
            time.sleep(2.0)  # past the budget in one step
        return real(*args, **kwargs)

    monkeypatch.setattr(tg, "train_step", slow_once)
    summary = tg.train(cfg, progress=False)
    assert summary["steps"] == 15
    assert load_model(out).train_info["step"] == 15
