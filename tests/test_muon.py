"""--optimizer muon, the wsd schedule and --max-seconds: the groups, the update, the schedule's end,
an exact resume after SIGKILL, torchrun against accumulation, and a run that ends cooled in time."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, make_tiny_model
from test_train import (
    TINY,
    TINY_FLAGS,
    assert_same_weights,
    kill_after,
    resume_weights,
    run_train,
    weights,
)

import train_gpt2 as tg
from muon import CPUMuon, build_optimizers, orthogonalize, param_groups
from schedule import budget_factor, cooldown_start, fit_to_budget, get_lr, lr_factor
from train_config import TrainConfig, config_from_preset

MUON_FLAGS = ["--optimizer=muon", "--schedule=wsd", "--muon-lr=0.02", "--learning-rate=4e-3", "--min-lr=4e-4"]


def test_muon_groups_cover_every_parameter_exactly_once():
    model = make_tiny_model("abcdefgh", block_size=16)
    groups = param_groups(model)
    assert all(n.startswith("transformer.h.") and p.dim() == 2 for n, p in groups["muon"])
    assert {n for n, _ in groups["adamw_decay"]} == {"transformer.wte.weight", "transformer.wpe.weight"}
    assert all(p.dim() == 1 for _, p in groups["adamw_no_decay"])  # biases and LayerNorms
    assert len(groups["muon"]) == 4 * model.config.n_layer  # c_attn, attn c_proj, c_fc, mlp c_proj

    cfg = TrainConfig(optimizer="muon", weight_decay=0.1, muon_weight_decay=0.0)
    adamw, muon = build_optimizers(model, cfg, "cpu")
    listed = [id(p) for opt in (adamw, muon) for g in opt.param_groups for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in model.parameters())  # the tied head counted once, as wte
    assert isinstance(muon, CPUMuon) and muon.param_groups[0]["lr"] == cfg.muon_lr
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.1, 0.0]
    (only,) = build_optimizers(model, TrainConfig(optimizer="adamw"), "cpu")
    assert len([p for g in only.param_groups for p in g["params"]]) == len(list(model.parameters()))


def test_orthogonalize_flattens_the_singular_values():
    g = torch.randn(3, 96, 32, generator=torch.Generator().manual_seed(0)) * torch.logspace(-2, 0, 32)
    before, after = torch.linalg.svdvals(g), torch.linalg.svdvals(orthogonalize(g))
    assert before.max() / before.min() > 100
    assert after.min() > 0.6 and after.max() < 1.25  # ~1 (the quintic's band, not exactly 1)
    assert torch.allclose(orthogonalize(g)[1], orthogonalize(g[1]), atol=1e-6)  # batched = one by one


def test_cpu_muon_makes_torch_muons_update_in_fp32():
    """The same step as torch.optim.Muon (momentum, Nesterov, shape-scaled lr, decoupled weight decay),
    up to torch's bf16 Newton-Schulz; the same state, so either loads the other's."""
    torch.manual_seed(0)
    shapes = [(96, 32), (32, 128), (96, 32)]
    runs = []
    for cls in (CPUMuon, torch.optim.Muon):
        params = [
            torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i))) for i, s in enumerate(shapes)
        ]
        opt = cls(params, lr=0.02, weight_decay=0.1, momentum=0.95)
        for step in range(3):
            for i, p in enumerate(params):
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(100 * step + i))
            opt.step()
        runs.append((params, opt))
    (mine, opt_mine), (ref, opt_ref) = runs
    for a, b in zip(mine, ref):
        assert torch.allclose(a, b, atol=2e-3), (a - b).abs().max()  # bf16 keeps ~3 significant digits
        assert torch.equal(opt_mine.state[a]["momentum_buffer"], opt_ref.state[b]["momentum_buffer"])
    assert opt_mine.state_dict()["param_groups"] == opt_ref.state_dict()["param_groups"]


def test_grad_scaler_unscales_both_optimizers_before_clipping():
    """fp16's loss scale reaches Muon's and AdamW's gradients alike: with it or without, the same update."""
    torch.manual_seed(0)
    x, y = torch.randint(0, 8, (4, 16)), torch.randint(0, 8, (4, 16))
    results = []
    for enabled in (False, True):
        model = make_tiny_model("abcdefgh", block_size=16)
        opts = build_optimizers(model, TrainConfig(optimizer="muon", learning_rate=1e-2), "cpu")
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=enabled)
        scaler.scale(model(x, y)[1]).backward()
        norm = tg.clip_and_step(model, opts, scaler, grad_clip=0.05)
        results.append((norm.item(), [p.detach().clone() for p in model.parameters()]))
        assert all(p.grad is None for p in model.parameters())
    (true_norm, plain), (scaled_norm, scaled) = results
    assert true_norm > 0.05 and scaled_norm == pytest.approx(true_norm, rel=1e-5)
    for a, b in zip(plain, scaled):
        assert torch.allclose(a, b, atol=1e-5)


def test_wsd_schedule_ends_at_min_lr_on_the_last_step():
    cfg = TrainConfig(
        schedule="wsd", learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110, cooldown_frac=0.4
    )
    lrs = [get_lr(i, cfg) for i in range(cfg.max_iters)]
    start = cooldown_start(cfg, cfg.max_iters)
    assert start == 110 - 44
    assert lrs[0] > 0 and all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # warmup
    assert all(lr == pytest.approx(1e-3) for lr in lrs[10 : start + 1])  # constant
    steps = [a - b for a, b in zip(lrs[start:], lrs[start + 1 :])]
    assert all(d == pytest.approx(9e-4 / 43) for d in steps)  # a straight line down ...
    assert lrs[-1] == pytest.approx(1e-4)  # ... to min_lr on the last step, max_iters - 1
    assert get_lr(60, cfg, max_iters=220) == pytest.approx(1e-3)  # a longer run cools down later
    assert lr_factor(109, cfg) == pytest.approx(0.1)  # Muon's lr ends at the same fraction of its peak


def test_a_time_budget_sets_the_length_until_the_cooldown_starts():
    cfg = TrainConfig(schedule="wsd", max_seconds=100.0, max_iters=10_000, cooldown_frac=0.5, warmup_iters=5)
    assert fit_to_budget(cfg, step=20, max_iters=10_000, spent=10.0, pace=0.5) == 20 + 180  # 90 s left at 0.5 s
    assert fit_to_budget(cfg, step=20, max_iters=200, spent=10.0, pace=0.25) == 20 + 360  # faster: longer
    assert fit_to_budget(cfg, step=150, max_iters=200, spent=80.0, pace=1.0) == 200  # cooling: length kept
    assert fit_to_budget(cfg, step=190, max_iters=200, spent=98.5, pace=1.0) == 191  # slowed: this step is the last
    assert fit_to_budget(cfg, step=190, max_iters=200, spent=100.5, pace=1.0) == 190  # past the budget: none
    assert fit_to_budget(cfg, step=0, max_iters=10_000, spent=0.0, pace=0.0) == 10_000  # no pace measured yet
    assert budget_factor(cfg, spent=40.0) == 1.0 and budget_factor(cfg, spent=100.0) == pytest.approx(0.1)
    assert budget_factor(cfg, spent=75.0) == pytest.approx(0.1 + 0.9 * 25 / 50)  # the last half of 100 s
    assert fit_to_budget(cfg, step=20, max_iters=200, spent=10.0, pace=1e-6) == 10_000  # capped by --max-iters


@pytest.mark.slow
def test_max_seconds_ends_the_run_cooled_within_the_budget(prepared_data, tmp_path):
    out = tmp_path / "out"
    proc = run_train(
        f"--data-dir={prepared_data}",
        f"--out-dir={out}",
        *TINY_FLAGS,
        *MUON_FLAGS,
        "--log-interval=1",
        "--max-iters=1000000",
        "--max-seconds=8",
        "--eval-interval=100",
        "--warmup-iters=10",
    )
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in recs if "val_loss" not in r]
    meta = tg.read_resume_meta(out / "resume.safetensors")
    assert meta["step"] == meta["max_iters"] == logs[-1]["step"] > 100  # it ran the length it set
    assert logs[-1]["lr"] == pytest.approx(4e-4)  # the last step ran at min_lr: the cooldown finished
    assert logs[-2]["lr"] > logs[-1]["lr"]
    after_warmup = [r["lr"] for r in logs if r["step"] > 10]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:]))  # constant, then down, never up
    assert after_warmup.count(4e-3) > 0.3 * len(after_warmup)  # a constant part (a shared machine may shorten it)
    assert 8 * 0.75 < meta["train_seconds"] <= 8 + 1.0, meta["train_seconds"]
    assert "or 8 s of training" in proc.stdout


@pytest.mark.slow
def test_kill_and_resume_with_muon_equals_an_uninterrupted_run(prepared_data, tmp_path):
    """SIGKILL mid-run, then --resume: with Muon too, the same final weights, bit for bit (CPU)."""
    flags = [
        f"--data-dir={prepared_data}",
        *TINY_FLAGS,
        *MUON_FLAGS,
        "--dropout=0.1",
        "--max-iters=300",
        "--eval-interval=30",
    ]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_train(*flags, f"--out-dir={whole}")
    killed_at = kill_after(flags, killed, 60)
    assert 60 <= killed_at < 300, "the run must be killed part way"
    saved = tg.read_resume_state(killed / "resume.safetensors")[1]
    assert any(k.startswith("optim1.") and k.endswith(".momentum_buffer") for k in saved)  # Muon's state is saved

    resumed = run_train(*flags, f"--out-dir={killed}", "--resume")
    assert f"resuming at step {killed_at}" in resumed.stdout
    assert_same_weights(resume_weights(killed), resume_weights(whole))
    assert_same_weights(weights(killed / "model.safetensors"), weights(whole / "model.safetensors"))

    switched = run_train(*flags[:1], f"--out-dir={killed}", "--resume", "--optimizer=adamw", check=False)
    assert switched.returncode == 2 and "trained with --optimizer muon" in switched.stderr


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_with_accumulation_with_muon(prepared_data, tmp_path):
    flags = [
        f"--data-dir={prepared_data}",
        *TINY_FLAGS,
        *MUON_FLAGS,
        "--max-iters=30",
        "--eval-interval=15",
        "--grad-accum-steps=2",
    ]
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
    assert "2 process(es)" in proc.stdout and "muon, wsd schedule" in proc.stdout
    assert_same_weights(resume_weights(tmp_path / "one"), resume_weights(tmp_path / "two"), atol=2e-5)


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--optimizer=sgd"], "--optimizer must be adamw or muon"),
        (["--schedule=step"], "--schedule must be cosine or wsd"),
        (["--cooldown-frac=1.5"], "--cooldown-frac is a fraction"),
        (["--max-seconds=-1"], "--max-seconds must be >= 0"),
        (["--muon-lr=0"], "--muon-lr > 0"),
    ],
)
def test_invalid_optimizer_and_schedule_flags(prepared_data, tmp_path, capsys, flags, match):
    code = tg.main([f"--data-dir={prepared_data}", f"--out-dir={tmp_path / 'out'}", *TINY_FLAGS, *flags])
    err = capsys.readouterr().err
    assert code == 2 and match in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.optim.Muon's bf16 path is for a GPU")
def test_cuda_uses_torch_muon_and_learns(prepared_data, tmp_path):
    model = make_tiny_model("abcd").cuda()
    adamw, muon = build_optimizers(model, TrainConfig(optimizer="muon"), "cuda")
    assert type(muon) is torch.optim.Muon and adamw.defaults["fused"] is True
    cfg = config_from_preset(
        None,
        data_dir=str(prepared_data),
        out_dir=str(tmp_path / "o"),
        **TINY,
        optimizer="muon",
        schedule="wsd",
        max_iters=100,
        eval_interval=50,
        device="cuda",
    )
    assert tg.train(cfg, progress=False)["best_val_loss"] < 3.0
