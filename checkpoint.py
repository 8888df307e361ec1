"""Checkpoints: a model folder written whole or not at all, and the resume state of a training run.

Every write goes to a temporary file, is flushed to disk and renamed into place, so a crash (or a power
cut) leaves the last good checkpoint loadable. The resume state is one safetensors file: the weights,
the optimizers' state and the RNG as tensors, the rest (step, config, best loss...) as JSON in its
metadata. Nothing is pickled.
"""

import json
import os
import shutil
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from hub import render_model_card
from model_files import SAVED_FILES, damaged_file_error, follow_umask, readable_safetensors, save_safetensors
from model_gpt2 import GPT


def _durable_replace(src: Path, dst: Path) -> None:
    """Rename src over dst once src's bytes are on disk, then record the rename: after a crash or a
    power cut, dst is the old file or the new one, whole. The rename is atomic in any case; where a
    file system cannot fsync (some network or FUSE mounts), that step is skipped."""
    follow_umask(src)  # safetensors creates its files 0600; the folder's other files follow the umask
    _fsync(src, os.O_RDWR)  # write access: Windows flushes only a handle opened for writing
    os.replace(src, dst)
    if hasattr(os, "O_DIRECTORY"):  # POSIX: the directory entry too
        _fsync(dst.parent, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: Path, flags: int) -> None:
    with suppress(OSError):
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_into(src_dir: Path, out_dir: Path, names) -> None:
    for name in names:  # each rename is atomic; weights first, config.json last (same run: same architecture)
        if (src_dir / name).exists():
            _durable_replace(src_dir / name, out_dir / name)


def save_best_model(model: GPT, out_dir: Path) -> None:
    """Write the model in Hugging Face format into out_dir without ever leaving a half-written file
    (a full disk leaves the previous model as it was, and no temporary folder)."""
    tmp = out_dir / ".tmp-model"
    try:
        tmp.mkdir(exist_ok=True)
        model.save_pretrained(tmp)
        (tmp / "README.md").write_text(render_model_card(model.hub_config(), out_dir), encoding="utf-8")
        _replace_into(tmp, out_dir, [*SAVED_FILES, "README.md", "config.json"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def update_model_info(out_dir: Path, **info) -> None:
    """Add facts to train_info in the saved config.json (atomically), and refresh the model card."""
    path = out_dir / "config.json"
    config = json.loads(path.read_text())
    config["train_info"] = {**config.get("train_info", {}), **info}
    atomic_write_text(out_dir / "README.md", render_model_card(config, out_dir))
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True))


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with _removed_on_failure(tmp):
        tmp.write_text(text, encoding="utf-8")
        _durable_replace(tmp, path)


@contextmanager
def _removed_on_failure(tmp: Path):
    """A temporary file that a failed write (a full disk) does not leave behind."""
    try:
        yield
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


LOCK_FILE = ".lock"  # held by the run training into the folder; every other check ignores it


@contextmanager
def lock_out_dir(out_dir: Path, enabled: bool = True):
    """Hold an OS lock on out_dir for the whole run, so that a second run started on the same folder is
    refused, naming the process that holds it, instead of mixing its files with this one's. The OS drops
    the lock when the process ends, however it ends: a killed run leaves an unlocked .lock file, which nothing
    minds. The folder is left as the run left it, without the lock file. A folder holding files other than a
    run's gets no lock file (check_out_dir refuses it)."""
    run_files = {LOCK_FILE, "resume.safetensors", "config.json"}
    if (
        not enabled
        or out_dir.is_file()
        or (out_dir.is_dir() and any(out_dir.iterdir()) and not any((out_dir / name).exists() for name in run_files))
    ):
        yield
        return
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with open(out_dir / LOCK_FILE, "a+", encoding="utf-8") as f:
            _hold(f, out_dir)
            try:
                yield
            finally:  # removed while still held, then closing the file releases the lock
                (out_dir / LOCK_FILE).unlink(missing_ok=True)
    finally:
        if created and not any(out_dir.iterdir()):  # refused before any work: no trace
            out_dir.rmdir()


def _hold(f, out_dir: Path) -> None:
    """Lock the open lock file f and write who holds it, or refuse naming who does."""
    if not _try_lock(f):
        f.seek(0)
        holder = f.read().strip() or "another process"
        raise OutDirInUse(
            f"{out_dir} is in use by another training run ({holder}): wait for it to end, or choose another --out-dir"
        )
    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}\n")
    f.flush()


class OutDirInUse(RuntimeError):
    pass


def _try_lock(f) -> bool:
    """An exclusive lock on the open file f, without waiting; False when another process holds it."""
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except (BlockingIOError, PermissionError):
        return False


def _optim_prefix(i: int) -> str:
    return "optim" if i == 0 else f"optim{i}"  # the first (AdamW) named as when it was the only one


def save_resume_state(path: Path, model: GPT, optimizers, scaler, state: dict) -> None:
    """Everything needed to continue exactly: weights, AdamW moments (and Muon's momentum), RNG, and
    (as JSON) the rest. Tensors in safetensors, the rest in its metadata: one file, replaced
    atomically, nothing pickled. optimizers: one optimizer or a list."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to wte
    meta = {**state, "scaler": scaler.state_dict() if scaler.is_enabled() else None}
    for i, optimizer in enumerate(optimizers if isinstance(optimizers, list) else [optimizers]):
        opt = optimizer.state_dict()
        for pid, pstate in opt["state"].items():
            for key, value in pstate.items():
                tensors[f"{_optim_prefix(i)}.{pid}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
        meta[f"{_optim_prefix(i).replace('optim', 'param_groups')}"] = opt["param_groups"]
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and next(model.parameters()).is_cuda:
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    tmp = path.with_name(path.name + ".tmp")
    with _removed_on_failure(tmp):
        save_safetensors(tensors, tmp, metadata={"state": json.dumps(meta)})
        _durable_replace(tmp, path)


def read_resume_meta(path: Path) -> dict:
    """The JSON part of a resume state (step, best val loss, config...) without loading any tensor."""
    return read_resume_state(path, tensors=False)[0]


def read_resume_state(path: Path, tensors: bool = True) -> tuple[dict, dict]:
    """(the JSON state, the tensors); DamagedFileError naming the file, what is still good and what to do
    when it cannot be read (cut short by a full disk, say)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()["state"]), ({k: f.get_tensor(k) for k in f.keys()} if tensors else {})
    except (SafetensorError, KeyError, TypeError, ValueError) as e:  # not safetensors, or no "state" in it
        raise damaged_file_error(path, e, resume_advice(path.parent)) from None


def resume_advice(out_dir: Path) -> str:
    """What is still good in out_dir when its resume state is damaged, and what to do."""
    fresh = "Training cannot continue from it: start a new run with another --out-dir."
    if (out_dir / "model.safetensors").is_file() and readable_safetensors(out_dir / "model.safetensors"):
        return (
            f"The best model in {out_dir} (model.safetensors, config.json) is intact: `python sample_gpt2.py --model "
            f"{out_dir}` and `python hub.py push {out_dir} ORG/NAME` use it. " + fresh
        )
    return f"{out_dir} holds no intact model either. " + fresh


def divergence_message(out_dir: Path, step: int, bad_steps: int) -> str:
    """What a diverged run left in out_dir, read from the folder itself, and how to go on."""
    msg = f"{bad_steps} non-finite losses in a row at step {step}: training diverged. "
    fix = "lower --learning-rate (or --grad-clip)"
    resume = out_dir / "resume.safetensors"
    if not resume.is_file():
        return msg + (
            f"No evaluation finished before, so no model was saved in {out_dir}: {fix} and start again "
            f"with another --out-dir (or after deleting {out_dir})."
        )
    saved = read_resume_meta(resume)
    if (out_dir / "model.safetensors").is_file():
        msg += f"The best model (val loss {saved['best_val_loss']:.4f}) is intact in {out_dir}. "
    command = f"python train_gpt2.py --out-dir {out_dir} --resume --learning-rate LR"
    return msg + f"resume.safetensors holds the last good state (step {saved['step']}): {fix}, then `{command}`."


def restore_resume_state(tensors: dict, meta: dict, model: GPT, optimizers, scaler) -> None:
    """The saved weights, optimizer state, scaler and RNG into a model and optimizers built as saved.
    Each optimizer keeps the settings it was built with (this run's flags: betas, weight decay...)."""
    sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    model.load_state_dict(sd, strict=True)
    for i, optimizer in enumerate(optimizers if isinstance(optimizers, list) else [optimizers]):
        opt_state = {}
        for k, v in tensors.items():
            if k.startswith(_optim_prefix(i) + "."):
                _, pid, key = k.split(".", 2)
                opt_state.setdefault(int(pid), {})[key] = v
        optimizer.load_state_dict({"state": opt_state, "param_groups": optimizer.state_dict()["param_groups"]})
    if meta.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and next(model.parameters()).is_cuda:
        torch.cuda.set_rng_state(tensors["rng.cuda"])
