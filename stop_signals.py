"""Stopping a run cleanly: SIGINT (Ctrl-C) or SIGTERM asks training to stop after the current step, on
the same step in every process, and the Interrupted error then says how to continue (resume_command).

train_gpt2.py's loop uses these.
"""

import shlex
import signal
import sys
import threading

import torch
import torch.distributed as dist

from train_config import TrainConfig


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped training after a whole step, its state saved; the message says how to go on."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def catch_stop_signals():
    """While training, SIGINT (Ctrl-C) and SIGTERM (a preempted cloud machine, torchrun's shutdown) do not
    kill the process mid-update: they ask the loop to stop after the current step. Returns the list of
    signals received (empty until one comes) and the function that puts the previous handlers back."""
    received = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return received, lambda: None

    def ask_to_stop(signum, frame):
        if not received:
            print(f"\n{signal.Signals(signum).name}: stopping after this step", file=sys.stderr, flush=True)
        received.append(signum)

    previous = {sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    return received, lambda: [signal.signal(sig, handler) for sig, handler in previous.items()]


def all_agree(flag: bool, ddp: bool, device: str) -> bool:
    """True on every process when it is true on any: all stop at the same step, or none does."""
    if not ddp:
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t)


def resume_command(cfg: TrainConfig, world: int) -> str:
    """The command that continues this run: --resume takes every setting but where it runs."""
    launcher = f"torchrun --standalone --nproc_per_node={world} " if world > 1 else "python "
    flags = [f"--out-dir {shlex.quote(cfg.out_dir)}", "--resume"]
    flags += [f"--device {cfg.device}"] if cfg.device != "auto" else []
    flags += ["--compile"] if cfg.compile else []
    flags += [f"--push-to-hub {cfg.push_to_hub}"] if cfg.push_to_hub else []
    script = sys.argv[0] if sys.argv[0].endswith("train_gpt2.py") else "train_gpt2.py"
    return launcher + " ".join([shlex.quote(script), *flags])
