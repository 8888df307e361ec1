"""sample_gpt2.py as a user runs it: a subprocess printing the generated text to stdout."""

import subprocess
import sys

import pytest
import torch
from helpers import ROOT, make_tiny_model

from model_gpt2 import load_model

pytestmark = pytest.mark.slow  # every test here starts a process

SEP = "---------------"


def run_all(*arg_lists):
    """Run `python sample_gpt2.py ARGS` for each ARGS at once (each start imports torch: seconds)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "sample_gpt2.py", *map(str, args)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in arg_lists
    ]
    return [(p.returncode, out, err) for p in procs for out, err in [p.communicate(timeout=300)]]


def test_same_seed_same_text_as_generate_text(tiny_model_dir):
    args = [
        "--model",
        tiny_model_dir,
        "--prompt",
        "ROMEO:",
        "--max-new-tokens",
        60,
        "--temperature",
        0.9,
        "--top-k",
        20,
    ]
    (rc1, a, err), (rc2, b, _), (rc3, c, _) = run_all([*args, "--seed", 7], [*args, "--seed", 7], [*args, "--seed", 8])
    assert rc1 == rc2 == rc3 == 0, err
    expected = load_model(tiny_model_dir).generate_text("ROMEO:", 60, temperature=0.9, top_k=20, seed=7)
    assert a == b == expected + "\n"  # stdout holds only the text: load messages go to stderr
    assert c != a


def test_greedy_and_several_samples_match_the_model(tiny_model_dir):
    model = load_model(tiny_model_dir)
    common = ["--model", tiny_model_dir, "--prompt", "KING:", "--max-new-tokens", 40]
    (rc1, greedy, err1), (rc2, batch, err2) = run_all(
        [*common, "--temperature", 0], [*common, "--temperature", 1.0, "--top-p", 0.9, "--seed", 3, "--num-samples", 3]
    )
    assert rc1 == 0 and rc2 == 0, err1 + err2
    assert greedy == model.generate_text("KING:", 40, temperature=0) + "\n"
    generator = torch.Generator().manual_seed(3)  # one stream of random numbers through the samples, in turn
    expected = [
        "KING:"
        + "".join(ch for ch, _ in model.stream_text("KING:", 40, temperature=1.0, top_p=0.9, generator=generator))
        for _ in range(3)
    ]
    assert batch == "".join(f"{text}\n{SEP}\n" for text in expected)
    assert expected[0] == model.generate_text("KING:", 40, temperature=1.0, top_p=0.9, seed=3)  # = --num-samples 1
    assert len(set(expected)) == 3  # three different samples, not one repeated


def test_bad_input_exits_2_with_a_clear_message(tiny_model_dir, tmp_path):
    missing = tmp_path / "no-model-here"
    results = run_all(
        ["--model", missing],
        ["--model", tiny_model_dir, "--temperature", -1],
        ["--model", tiny_model_dir, "--prompt", "Café ROMEO™"],
    )
    expected = [
        [f"no model folder at '{missing}'", "train_gpt2.py"],
        ["temperature must be a number >= 0"],
        ["'é', '™'", "Remove them"],
    ]
    for (rc, out, err), phrases in zip(results, expected):
        assert rc == 2 and out == "", err
        assert err.count("error: ") == 1 and "Traceback" not in err, err
        assert all(p in err for p in phrases), err


def test_without_a_prompt_samples_start_a_line_or_whatever_the_text_has(tiny_model_dir, tmp_path):
    """No --prompt: a new line where the text had line breaks; a model of one-line text starts from a space."""
    one_line = tmp_path / "one-line"
    make_tiny_model("abc de").save_pretrained(one_line)  # no "\n" in this vocabulary
    (rc1, shakespeare, err1), (rc2, text, err2) = run_all(
        ["--model", tiny_model_dir, "--max-new-tokens", 30, "--temperature", 0],
        ["--model", one_line, "--max-new-tokens", 30, "--temperature", 0],
    )
    assert rc1 == 0 and rc2 == 0, err1 + err2
    assert shakespeare == load_model(tiny_model_dir).generate_text("\n", 30, temperature=0) + "\n"
    assert text == load_model(one_line).generate_text(" ", 30, temperature=0) + "\n"
