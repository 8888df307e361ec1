"""What a hostile user or a failing machine does to every entry point, and what they get back: a clear
message naming the problem and the fix, the conventional exit code, nothing good lost, no traceback.
Models too large for memory, damaged .safetensors files, non-finite flags, SIGINT/SIGTERM mid-run,
data folders that do not belong together, Ctrl-C while sampling, weights files' permissions."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, make_tiny_model
from test_train import TINY, TINY_FLAGS, assert_same_weights, main_in_process, resume_step, resume_weights, run_train
from test_train import weights as read_weights

import train_gpt2 as tg
from data.prepare import DataError, load_split, prepare
from data.prepare import main as prepare_main
from machine import ModelTooLargeError, count_params, estimate_memory
from model_files import DamagedFileError
from model_gpt2 import GPT, GPTConfig, load_model
from train_config import config_from_preset

HUGE_FLAGS = ["--preset=cpu", "--n-layer=200", "--n-embd=4096", "--n-head=32"]  # 40,277M parameters


def run_measured(*args) -> tuple[int, str, str, float, float]:
    """Run `python ARGS` in the repo; (exit code, stdout, stderr, seconds, peak memory in MB) of that process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak resident set
        seconds = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        return proc.returncode, out.read().decode(), err.read().decode(), seconds, usage.ru_maxrss / 1024


def huge_model_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A model folder whose config.json (as a Hub repo could serve it) asks for a million layers."""
    folder = tmp_path / "huge"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["n_layer"] = 1_000_000
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def cut(path: Path) -> None:
    """Cut a file in half, as a full disk or an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------- 1. a model too large for memory


def test_parameter_count_and_memory_follow_from_the_shape():
    for kwargs in (dict(), dict(bias=False), dict(n_layer=3, n_embd=48, n_head=3, block_size=17, vocab_size=11)):
        config = GPTConfig(**kwargs)
        assert count_params(config) == GPT(config).num_params()
    config = GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024)
    assert estimate_memory(config, training=True, batch_size=8) > 4 * 4 * count_params(config)  # + activations
    assert estimate_memory(config, training=False) > 2 * 4 * count_params(config)


def test_load_model_refuses_a_config_too_large_at_once(tiny_model_dir, tmp_path):
    t = time.perf_counter()
    with pytest.raises(ModelTooLargeError, match=r"needs about [\d,.]+ GB to load .*; this machine has [\d,.]+ GB"):
        load_model(huge_model_dir(tiny_model_dir, tmp_path))
    assert time.perf_counter() - t < 5


@pytest.mark.slow
def test_a_huge_model_is_refused_before_memory_grows(tiny_model_dir, prepared_data, tmp_path):
    """Training flags and a model's config.json alike: refused in seconds, the process no bigger than its
    imports plus a few hundred MB (training this model would need ~750 GB)."""
    _, _, _, base_s, base_mb = run_measured("-c", "import train_gpt2, sample_gpt2")
    rc, out, err, seconds, mb = run_measured(
        "train_gpt2.py", *HUGE_FLAGS, f"--data-dir={prepared_data}", f"--out-dir={tmp_path / 'out'}"
    )
    assert rc == 2 and "Traceback" not in err, err
    assert "error: this model (40,277M parameters: 200 layers, 4096 dim) needs about" in err
    assert "GB to train (weights, gradients, optimizer state, activations); this machine has" in err
    assert "Choose a smaller --n-layer, --n-embd, --block-size or --batch-size" in err
    assert not (tmp_path / "out").exists()
    assert seconds - base_s < 5 and mb - base_mb < 300, (seconds, base_s, mb, base_mb)

    huge = huge_model_dir(tiny_model_dir, tmp_path)
    rc, out, err, seconds, mb = run_measured("sample_gpt2.py", "--model", huge)
    assert rc == 2 and out == "" and "Traceback" not in err, err
    assert f"error: the model '{huge}' (" in err and "GB to load (weights, KV cache); this machine has" in err
    assert seconds - base_s < 5 and mb - base_mb < 300, (seconds, base_s, mb, base_mb)


# ---------------------------------------------------------------- 2. damaged .safetensors files


@pytest.fixture(scope="module")
def small_run(prepared_data, tmp_path_factory) -> Path:
    """A finished 20-step run: model.safetensors, resume.safetensors, metrics.jsonl..."""
    out = tmp_path_factory.mktemp("run") / "out"
    tg.train(
        config_from_preset(None, data_dir=str(prepared_data), out_dir=str(out), **TINY, max_iters=20, eval_interval=10),
        progress=False,
    )
    return out


@pytest.fixture
def run_copy(small_run, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(small_run, out)
    return out


def test_a_damaged_resume_state_names_the_file_and_the_model_still_good(run_copy, capsys):
    cut(run_copy / "resume.safetensors")
    model_before = (run_copy / "model.safetensors").read_bytes()
    proc = main_in_process(capsys, f"--out-dir={run_copy}", "--resume", "--max-iters=400")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {run_copy / 'resume.safetensors'} is damaged: it cannot be read as safetensors" in proc.stderr
    assert f"The best model in {run_copy} (model.safetensors, config.json) is intact" in proc.stderr
    assert f"`python sample_gpt2.py --model {run_copy}`" in proc.stderr
    assert "start a new run with another --out-dir" in proc.stderr
    assert (run_copy / "model.safetensors").read_bytes() == model_before
    load_model(run_copy)  # and it is true: the model loads


def test_damaged_weights_name_the_file_and_the_resume_state_still_good(run_copy, capsys):
    cut(run_copy / "model.safetensors")
    with pytest.raises(DamagedFileError) as e:
        load_model(run_copy)
    assert str(e.value).startswith(f"{run_copy / 'model.safetensors'} is damaged: it cannot be read as safetensors")
    assert f"resume.safetensors in {run_copy} is intact: `python train_gpt2.py --out-dir {run_copy} --resume`" in str(
        e.value
    )
    # and it is true: resuming (the run had finished: a larger --max-iters) writes a loadable model again
    assert tg.main([f"--out-dir={run_copy}", "--resume", "--max-iters=25"]) == 0
    assert load_model(run_copy).train_info["step"] == 25
    cut(run_copy / "model.safetensors")
    import hub

    assert hub.main(["push", str(run_copy), "someone/model"]) == 2
    err = capsys.readouterr().err
    assert "nothing was pushed" in err and "model.safetensors is damaged" in err and "Traceback" not in err


@pytest.mark.slow
def test_sample_gpt2_with_damaged_weights(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    cut(folder / "model.safetensors")
    rc, out, err, _, _ = run_measured("sample_gpt2.py", "--model", folder)
    assert rc == 2 and out == "" and "Traceback" not in err, err
    assert f"error: {folder / 'model.safetensors'} is damaged" in err
    assert "Copy the folder again from where it came from, or train the model again." in err


# ---------------------------------------------------------------- 3. non-finite flags, a true divergence message


@pytest.mark.parametrize(
    "flag", ["--learning-rate=inf", "--weight-decay=nan", "--beta2=nan", "--grad-clip=nan", "--min-lr=-inf"]
)
def test_non_finite_float_flags_are_refused(prepared_data, tmp_path, capsys, flag):
    proc = main_in_process(capsys, f"--data-dir={prepared_data}", f"--out-dir={tmp_path / 'out'}", *TINY_FLAGS, flag)
    name, value = flag.split("=")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {name} must be a finite number, got {float(value)}" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_beta_out_of_range_is_refused(prepared_data, tmp_path, capsys):
    proc = main_in_process(capsys, f"--data-dir={prepared_data}", f"--out-dir={tmp_path / 'out'}", "--beta2=1.5")
    assert proc.returncode == 2 and "--beta1 and --beta2 must be in [0, 1), got 0.9 and 1.5" in proc.stderr


def test_divergence_before_any_evaluation_says_nothing_was_saved(prepared_data, tmp_path, monkeypatch):
    """Every loss non-finite from the start: the message must not promise a model that does not exist."""
    out = tmp_path / "out"
    cfg = config_from_preset(
        None, data_dir=str(prepared_data), out_dir=str(out), **TINY, max_iters=50, timeline_prompt=""
    )
    forward = GPT.forward  # (the stand-in below computes losses only: no timeline, which generates)
    monkeypatch.setattr(
        GPT,
        "forward",
        lambda self, idx, targets=None, kv_cache=None: (None, forward(self, idx, targets)[1] * torch.nan),
    )
    with pytest.warns(UserWarning), pytest.raises(FloatingPointError) as e:
        tg.train(cfg, progress=False)
    assert not {"model.safetensors", "resume.safetensors"} & {p.name for p in out.glob("*")}
    assert f"No evaluation finished before, so no model was saved in {out}: lower --learning-rate" in str(e.value)
    assert "intact" not in str(e.value) and "--resume" not in str(e.value)


# ---------------------------------------------------------------- 4. SIGINT / SIGTERM


def wait_for_step(out_dir: Path, step: int, proc, timeout=120) -> None:
    """Until metrics.jsonl has a line for `step` or later (log lines come every 5 steps)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        lines = (out_dir / "metrics.jsonl").read_text().splitlines() if (out_dir / "metrics.jsonl").exists() else []
        if any(json.loads(line)["step"] >= step for line in lines if line.endswith("}")):
            return
        time.sleep(0.01)
    raise AssertionError(f"the run did not reach step {step}")


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_after_the_step_and_resuming_gives_the_uninterrupted_weights(prepared_data, tmp_path, sig, code):
    flags = [f"--data-dir={prepared_data}", *TINY_FLAGS, "--dropout=0.1", "--max-iters=400", "--eval-interval=40"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    run_train(*flags, f"--out-dir={whole}")

    proc = subprocess.Popen(
        [sys.executable, "train_gpt2.py", *flags, f"--out-dir={stopped}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(stopped, 50, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and "Traceback" not in err, err
    step = resume_step(stopped)
    assert 50 <= step < 400, "the run must stop part way"
    assert f"stopped: {sig.name} at step {step} of 400: the training state at step {step} is saved in " in err
    command = err.split("Continue with:\n")[1].strip()
    assert command == f"python train_gpt2.py --out-dir {stopped} --resume"
    assert (stopped / "loss.png").is_file()
    load_model(stopped)

    resumed = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {step}" in resumed.stdout
    assert_same_weights(resume_weights(stopped), resume_weights(whole))
    assert_same_weights(read_weights(stopped / "model.safetensors"), read_weights(whole / "model.safetensors"))


@pytest.mark.slow
def test_torchrun_processes_stop_at_the_same_step_on_sigterm(prepared_data, tmp_path):
    """torchrun passes SIGTERM to every worker; they agree on one step, rank 0 saves it, and resuming
    with the printed command ends with the weights of an uninterrupted 2-process run."""
    flags = [
        f"--data-dir={prepared_data}",
        *TINY_FLAGS,
        "--max-iters=300",
        "--eval-interval=100",
        "--grad-accum-steps=2",
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    done = subprocess.run(
        [*torchrun, "train_gpt2.py", *flags, f"--out-dir={whole}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(
        [*torchrun, "train_gpt2.py", *flags, f"--out-dir={stopped}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(stopped, 30, proc)
    t = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert time.time() - t < 20, "the workers must stop at once, not when torchrun's patience runs out"
    step = resume_step(stopped)
    assert 30 <= step < 300
    assert f"stopped: SIGTERM at step {step} of 300: the training state at step {step} is saved" in err, err[-3000:]
    command = err.split("Continue with:\n")[1].splitlines()[0].strip()
    assert command == f"torchrun --standalone --nproc_per_node=2 train_gpt2.py --out-dir {stopped} --resume"
    resumed = subprocess.run(
        [*torchrun, *shlex.split(command)[3:]], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(resume_weights(stopped), resume_weights(whole))


# ---------------------------------------------------------------- 6. data/prepare.py and prepared folders


def test_prepare_into_a_file_or_an_unwritable_place(tmp_path, shakespeare_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    for out_dir, message in [
        (a_file, f"error: --out-dir {a_file} is a file, not a folder: choose another --out-dir"),
        (
            a_file / "sub",
            f"error: cannot write to --out-dir {a_file / 'sub'} (Not a directory): choose a folder you can write to",
        ),
    ]:
        assert prepare_main(["--input", str(shakespeare_path), "--out-dir", str(out_dir)]) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert a_file.read_text() == "mine"


def test_meta_json_and_bin_files_must_belong_together(tmp_path, shakespeare_text, prepared_data, capsys):
    other = tmp_path / "other"
    prepare("abcdefghij " * 50, other)  # another text: 11 characters, other counts
    mixed = tmp_path / "mixed"
    shutil.copytree(prepared_data, mixed)
    shutil.copy(other / "meta.json", mixed / "meta.json")
    again = f"Prepare the folder again from one text: `python data/prepare.py --input TEXT --out-dir {mixed}`."
    with pytest.raises(DataError, match="tokens, but meta.json says 495: the two come from different texts") as e:
        load_split(mixed, "train")
    assert again in str(e.value)

    same_size = json.loads((other / "meta.json").read_text())  # counts that match, a vocabulary that does not
    same_size.update(json.loads((prepared_data / "meta.json").read_text()), vocab="abcdefghij ", vocab_size=11)
    (mixed / "meta.json").write_text(json.dumps(same_size))
    with pytest.raises(DataError, match=r"holds token id \d+, but meta.json's vocabulary has 11 characters"):
        load_split(mixed, "val")

    shutil.copy(prepared_data / "meta.json", mixed / "meta.json")
    with open(mixed / "val.bin", "ab") as f:
        f.write(b"\x00")  # an odd byte count: not whole uint16 tokens
    proc = main_in_process(capsys, f"--data-dir={mixed}", f"--out-dir={tmp_path / 'out'}", *TINY_FLAGS)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        f"error: {mixed / 'val.bin'} has 223,081 bytes, not a whole number of uint16 tokens: it is cut." in proc.stderr
    )

    (mixed / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="meta.json is damaged"):
        load_split(mixed, "val")


# ---------------------------------------------------------------- 7. sample_gpt2.py streams, keeps the text on Ctrl-C


@pytest.mark.slow
def test_samples_stream_and_ctrl_c_keeps_what_was_generated(tiny_model_dir):
    proc = subprocess.Popen(
        [
            sys.executable,
            "sample_gpt2.py",
            "--model",
            str(tiny_model_dir),
            "--prompt",
            "ROMEO:",
            "--num-samples",
            "3",
            "--max-new-tokens",
            "50000",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first = proc.stdout.read(200)  # the first sample arrives as it is generated, long before 3 x 50,000 characters
    assert first.startswith(b"ROMEO:")
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    text, err = (first + rest).decode(), err.decode()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "interrupted: the text above is everything generated so far" in err
    expected = load_model(tiny_model_dir).generate_text(
        "ROMEO:", len(text) - len("ROMEO:") - 1, seed=1337, temperature=0.8
    )
    assert text.rstrip("\n") == expected  # exactly the start of sample 1: nothing printed was lost or garbled


# ---------------------------------------------------------------- 9. weights files follow the umask


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_weights_files_follow_the_umask(prepared_data, tmp_path, shakespeare_vocab, umask):
    old = os.umask(umask)
    try:
        make_tiny_model(shakespeare_vocab).save_pretrained(tmp_path / "model")
        cfg = config_from_preset(
            None, data_dir=str(prepared_data), out_dir=str(tmp_path / "run"), **TINY, max_iters=10, eval_interval=10
        )
        tg.train(cfg, progress=False)
    finally:
        os.umask(old)
    files = [tmp_path / "model" / "model.safetensors", *sorted((tmp_path / "run").iterdir())]
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: oct(0o666 & ~umask) for f in files}


# ---------------------------------------------------------------- 5. one folder, one run; full disks, read-only folders


@pytest.mark.slow
def test_a_second_run_on_the_same_out_dir_is_refused_naming_the_first(prepared_data, tmp_path, capsys):
    out = tmp_path / "out"
    first = subprocess.Popen(
        [
            sys.executable,
            "train_gpt2.py",
            f"--data-dir={prepared_data}",
            f"--out-dir={out}",
            *TINY_FLAGS,
            "--max-iters=100000",
            "--eval-interval=5",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_step(out, 5, first)
        while not (out / "resume.safetensors").exists() and first.poll() is None:
            time.sleep(0.01)
        lines_before = (out / "metrics.jsonl").read_text().splitlines()
        for resume in ([], ["--resume"]):
            result = main_in_process(capsys, f"--data-dir={prepared_data}", f"--out-dir={out}", *TINY_FLAGS, *resume)
            assert result.returncode == 2
            assert f"in use by another training run (process {first.pid}" in result.stderr, result.stderr
            assert "Traceback" not in result.stderr
        assert first.poll() is None  # the first run goes on, its log only its own
        steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(steps) and len(steps) >= len(lines_before)
    finally:
        first.kill()
        first.wait()
    # the OS dropped the killed run's lock: its folder resumes
    assert (
        run_train(
            f"--data-dir={prepared_data}", f"--out-dir={out}", *TINY_FLAGS, "--resume", "--max-iters=10"
        ).returncode
        == 0
    )


def limit_file_size(size: int):
    def apply():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return apply


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_no_temporary_files(prepared_data, tmp_path):
    """A file-size limit (RLIMIT_FSIZE) is the real write failure a full disk gives, on any machine: the
    write fails with EFBIG where a full disk fails with ENOSPC, at the same calls."""
    out = tmp_path / "out"
    proc = run_train(
        f"--data-dir={prepared_data}",
        f"--out-dir={out}",
        *TINY_FLAGS,
        "--max-iters=10",
        "--eval-interval=5",
        check=False,
        preexec_fn=limit_file_size(60_000),  # metrics.jsonl fits; the weights (~110 KB) do not
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cannot write" in proc.stderr and "free some space" in proc.stderr
    left = [p.name for p in out.rglob("*") if p.name.startswith(".tmp") or p.suffix == ".tmp"]
    assert left == [] and not (out / "model.safetensors").exists()


@pytest.fixture
def read_only(tmp_path):
    """Make a folder unwritable: chattr +i as root (root ignores permission bits), chmod 555 otherwise."""
    made = []

    def make(folder: Path) -> Path:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i", str(folder)], check=False, capture_output=True)
        else:
            folder.chmod(0o555)
        made.append(folder)
        try:
            (folder / "probe").touch()
        except OSError:
            return folder
        (folder / "probe").unlink()
        pytest.skip("cannot make a read-only folder here (chattr +i needs CAP_LINUX_IMMUTABLE)")

    yield make
    for folder in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=False, capture_output=True)
        else:
            folder.chmod(0o755)


@pytest.mark.slow
def test_a_read_only_folder_is_one_line_for_train_convert_and_export(prepared_data, run_copy, tmp_path, read_only):
    parent = read_only(tmp_path / "ro_parent") if (tmp_path / "ro_parent").mkdir() is None else None
    checks = [
        run_train(f"--data-dir={prepared_data}", f"--out-dir={parent / 'out'}", *TINY_FLAGS, check=False),
    ]
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    read_only(run_copy)
    checks += [
        run_train(
            f"--data-dir={prepared_data}",
            f"--out-dir={run_copy}",
            *TINY_FLAGS,
            "--resume",
            "--max-iters=30",
            check=False,
        ),
        subprocess.run([sys.executable, "hub.py", "convert", str(run_copy)], cwd=ROOT, capture_output=True, text=True),
        subprocess.run(
            [sys.executable, "hub.py", "export-onnx", str(run_copy)], cwd=ROOT, capture_output=True, text=True
        ),
    ]
    for proc in checks:
        assert proc.returncode in (1, 2), proc.stderr
        assert "Traceback" not in proc.stderr and "choose a folder you can write to" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # nothing that was there is lost (the resumed run may have appended to its log, and then stopped)
    assert {n: b for n, b in before.items() if n not in ("metrics.jsonl", "resume.safetensors", LOCK)} == {
        p.name: p.read_bytes()
        for p in run_copy.iterdir()
        if p.is_file() and p.name in before and p.name not in ("metrics.jsonl", "resume.safetensors", LOCK)
    }
    assert read_weights(run_copy / "model.safetensors")


LOCK = ".lock"


def test_a_model_with_a_context_of_one_character_trains_and_generates(prepared_data, tmp_path):
    tg.train(
        config_from_preset(
            None,
            data_dir=str(prepared_data),
            out_dir=str(tmp_path / "out"),
            **(TINY | {"block_size": 1, "sample_chars": 20}),
            max_iters=4,
            eval_interval=2,
        ),
        progress=False,
    )
    model = load_model(tmp_path / "out")
    assert len(model.generate_text("RO", 30, temperature=0.8, seed=0)) == 32


@pytest.mark.parametrize("repo_id", ["org/name.git", "org/..", "org/--x", "org/" + "x" * 200])
def test_a_repo_id_the_hub_refuses_is_refused_before_training(prepared_data, tmp_path, capsys, repo_id):
    out = tmp_path / "out"
    result = main_in_process(
        capsys, f"--data-dir={prepared_data}", f"--out-dir={out}", *TINY_FLAGS, f"--push-to-hub={repo_id}"
    )
    assert result.returncode == 2 and "--push-to-hub" in result.stderr, result.stderr
    assert not out.exists()  # refused before any work
