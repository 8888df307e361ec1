"""bench.py, the README's performance command, runs end to end and reports what it says it does.

No timing is asserted (a shared CI machine makes them noise): the figures' presence, signs and
the deterministic parts of the accounting are.
"""

import json
import math
import subprocess
import sys

import pytest
from helpers import ROOT

from train_config import PRESETS

pytestmark = pytest.mark.slow  # every test here starts a process


def test_quick_bench_prints_one_json_document_and_a_table(prepared_data, tmp_path):
    out = tmp_path / "bench.json"
    args = ["--quick", "--data-dir", str(prepared_data), "--json", str(out)]
    proc = subprocess.run([sys.executable, "bench.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # stdout is the JSON and nothing else
    assert json.loads(out.read_text()) == result
    assert result["quick"] is True and result["device"] == "cpu" and result["peak_gflops"] > 0

    assert set(result["training"]) == set(PRESETS)
    for row in result["training"].values():
        assert row["ms_per_step"] > 0 and row["tokens_per_sec"] > 0 and row["mfu"] > 0
    assert result["training"]["cpu"]["reduced_batch"] is False
    assert result["nanogpt_cpu"]["config"]["block_size"] == 64
    assert set(result["nanogpt_cpu"]["phases_ms"]) == {"data", "forward", "backward", "optimizer"}

    big = result["generation"]["shakespeare-char (10.7M)"]
    assert big["params"] == 10_770_816 and big["block_size"] == 256
    # the decode floor reads every Linear weight once: 6 blocks x (qkv, proj, fc, mlp proj) + the head, fp32
    linear_weights = 6 * (384 * 1152 + 384 * 384 + 2 * 384 * 1536) + 65 * 384
    assert math.isclose(big["weights_mb"], 4 * linear_weights / 1e6, abs_tol=0.05)
    for g in result["generation"].values():
        assert "500_tokens" not in g  # --quick: 100 tokens only
        run = g["100_tokens"]
        assert run["cached_seconds"] > 0 and run["uncached_seconds"] > 0
        assert g["first_token_ms"] > 0 and g["decode_step_ms"] > 0 and g["full_window_ms"] > 0

    quality = result["quality"]
    assert quality["shortened"] == {"max_iters": PRESETS["cpu"]["max_iters"] // 10}
    assert len(quality["runs"]) == 1
    assert quality["runs"][0]["best_val_loss"] < math.log(65)  # it learned something in 1/10 of the schedule

    assert result["vs_nanogpt"] is None and "vs nanoGPT's train.py: skipped (pass --nanogpt PATH" in proc.stderr
    assert result["compile"] is None  # --quick leaves out the compiler's minutes
    for heading in ("training", "nanoGPT CPU config", "generation", "quality: cpu preset"):
        assert heading in proc.stderr


@pytest.mark.slow
def test_serving_bench_runs_the_app_and_reports_every_user(shakespeare_vocab):
    from benchmarks.serving import bench_serving, serving_table

    result = bench_serving(shakespeare_vocab, ROOT, users=4, chars=20, alone_runs=1)
    one, many = result["one_user"], result["4_users"]
    assert one["users"] == 1 and many["users"] == 4 and one["all_right"] and many["all_right"]
    for row in (one, many):
        assert row["chars_per_sec"] > 0 and 0 < row["first_text_p50_s"] <= row["first_text_p95_s"]
        assert row["first_text_p95_s"] <= row["finish_p95_s"]
    assert result["aggregate_x"] == round(many["chars_per_sec"] / one["chars_per_sec"], 2)
    assert "4 users" in serving_table(result)
