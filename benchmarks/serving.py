"""Serving: the app under many users (bench.py --serving): `python app.py` over loopback, one gradio_client user
alone against many at once; the decode loop alone (engine.py, no server); each with the decode loop's products on
PyTorch and on ONNX Runtime (app.py --backend), in the same run; and whether batching changes a text
(bench.py --agreement).

Each benchmark user has a Client of its own (gradio_client 2.7.2: the jobs of one Client share a session hash, and
cancelling one of them cancels or strands the others) and a deadline (JOB_TIMEOUT): a stuck request fails the
benchmark instead of hanging it.
"""

import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import SHAKESPEARE_CHAR, percentile
from model_gpt2 import GPT
from train_config import config_from_preset, model_config


def start_app(app_dir: Path, model_dir: Path, log: Path, backend: str | None = None):
    """`python app.py --model DIR --port P [--backend B]` in app_dir (this checkout, or another one to compare);
    its URL once up."""
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "app.py", "--model", str(model_dir), "--port", str(port)]
    cmd += ["--backend", backend] if backend else []
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
JOB_TIMEOUT = 300  # seconds a benchmark user waits for its text at most


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
        seen, deadline = 0, t0 + JOB_TIMEOUT
        while not job.done():
            if time.perf_counter() > deadline:
                job.cancel()
                raise TimeoutError(f"user {i}: no text from {url} within {JOB_TIMEOUT} s")
            outs = job.outputs()
            for out in outs[seen:]:
                text = out[0]["value"] if isinstance(out[0], dict) else out[0]  # a dict: a "waiting" notice
                if first is None and len(text) > len(prompt):
                    first = time.perf_counter() - t0
            seen = len(outs)
            time.sleep(POLL)
        text = job.result(timeout=JOB_TIMEOUT)[0]
        if first is None:  # the whole text came in one update
            first = time.perf_counter() - t0
        results[i] = {
            "first_text_s": first,
            "finish_s": time.perf_counter() - t0,
            "right": text.startswith(prompt) and len(text) == len(prompt) + chars,
        }

    errors = []

    def run_user(i):
        try:
            user(i)
        except Exception as e:  # noqa: BLE001 - reported below, in this thread
            errors.append(e)

    threads = [threading.Thread(target=run_user, args=(i,)) for i in range(n_users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def bench_serving(vocab, app_dir: Path, users=16, chars=200, alone_runs=5, backends=("torch", "onnx")) -> dict:
    """One gradio_client user alone against `users` at once, on `python app.py --backend B` over loopback, for each
    backend in the same run, with the 10.7M shakespeare-char shape (random weights: speed does not depend on them).
    The result's top level is the first backend's (another checkout's app.py runs as it is, without --backend);
    "backends" holds each one's."""
    torch.manual_seed(0)
    model = GPT(model_config(config_from_preset(None, **SHAKESPEARE_CHAR), len(vocab)), vocab=vocab)
    this_checkout = app_dir == Path(__file__).resolve().parent.parent
    backends = backends if this_checkout else (None,)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        if this_checkout and any(b != "torch" for b in backends):  # the graph the app's onnx backend runs
            from export_onnx import export_standard

            export_standard(model, Path(tmp) / "onnx" / "model.onnx")
        for backend in backends:
            loop = (
                loop_ceiling(model, users, chars, backend, Path(tmp) / "onnx" / "model.onnx") if this_checkout else None
            )
            runs[backend or "as is"] = serve_backend(app_dir, Path(tmp), backend, users, chars, alone_runs) | {
                "loop_only": loop
            }
    first = next(iter(runs.values()))
    return {"app": str(app_dir), **first, "backends": runs}


def serve_backend(app_dir: Path, model_dir: Path, backend, users: int, chars: int, alone_runs: int) -> dict:
    """The app on one backend: a user alone (alone_runs times) and `users` at once."""
    proc, url = start_app(app_dir, model_dir, model_dir / f"app-{backend}.log", backend)
    try:
        serve_users(url, 1, 20)  # warm up: the first request pays for one-time set-up
        alone = [serve_users(url, 1, chars)[0] for _ in range(alone_runs)]
        crowd = serve_users(url, users, chars)
    finally:
        proc.terminate()
        proc.wait()
    log = (model_dir / f"app-{backend}.log").read_text(errors="replace")
    decoding = next((line.removeprefix("engine: ") for line in log.splitlines() if line.startswith("engine: ")), "")

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
        "decoding": decoding,
        "one_user": one,
        f"{users}_users": many,
        "aggregate_x": round(many["chars_per_sec"] / one["chars_per_sec"], 2),
        "finish_p95_x": round(many["finish_p95_s"] / one["finish_p95_s"], 2),
    }


def loop_ceiling(model: GPT, users: int, chars: int, backend: str | None = "torch", onnx_file=None) -> dict:
    """The decode loop alone (engine.py on `backend`, no server, no HTTP, the threads app.py gives it): one
    request against `users` at once. What the app can reach at most; the rest is the server's cost."""
    from engine import Engine

    engine = Engine(model, slots=users, backend=backend or "auto", onnx_file=onnx_file if backend != "torch" else None)
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


def batch_agreement(model_dir, text: str, prompts=64, chars=200, backends=("torch", "onnx")) -> dict:
    """How often batching or the backend changes a text: `prompts` prompts (slices of `text`) x `chars` characters,
    16 at a time through the engine on each backend, against generate_text alone (PyTorch); greedy and seeded. A
    batched matrix product may sum in another order than the matrix-vector product of a lone request, and ONNX
    Runtime's kernels in another order than PyTorch's, which could flip a near-tie."""
    import random

    from engine import Engine
    from export_onnx import export_standard
    from model_gpt2 import load_model

    model, rng = load_model(model_dir), random.Random(0)
    starts = [rng.randrange(len(text) - 200) for _ in range(prompts)]
    starts = [text[i : i + rng.randrange(5, 120)] for i in starts]
    tok, out = model.tokenizer, {}
    expected = {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = export_standard(model, Path(tmp) / "model.onnx") if "onnx" in backends else None
        for backend in backends:
            engine, res = Engine(model, slots=16, backend=backend, onnx_file=onnx_file), {}
            for name, sampling in (("greedy", dict(temperature=0)), ("seeded", dict(temperature=0.8, seed=1))):
                same = 0
                for k in range(0, prompts, 16):
                    reqs = [(p, engine.submit(tok.encode(p), chars, **sampling)) for p in starts[k : k + 16]]
                    for p, r in reqs:
                        if (name, p) not in expected:
                            expected[name, p] = model.generate_text(p, chars, **sampling)
                        same += p + tok.decode(r.result(timeout=JOB_TIMEOUT)) == expected[name, p]
                res[name] = {"texts": prompts, "chars_each": chars, "equal_to_generate_text": same}
            engine.close()
            out[backend] = res
    return out


def serving_table(s) -> str:
    lines = [f"serving: app.py in {s['app']}, 10.7M model, gradio_client users on loopback"]
    for backend, b in s.get("backends", {"as is": s}).items():
        lines += [
            "",
            f"--backend {backend}: {b.get('decoding') or 'the decode loop did not say'}",
            f"{'':10} {'chars/s':>9} {'first text p50':>15} {'p95':>7} {'finish p50':>11} {'p95':>7}  all right",
        ]
        for key in (k for k in b if k.endswith(("_user", "_users"))):
            r = b[key]
            lines.append(
                f"{r['users']:2} user{'s' if r['users'] > 1 else ' '}   {r['chars_per_sec']:9,.0f} "
                f"{r['first_text_p50_s']:13.2f} s {r['first_text_p95_s']:5.2f} s {r['finish_p50_s']:9.2f} s "
                f"{r['finish_p95_s']:5.2f} s  {r['all_right']}"
            )
        lines.append(
            f"  {b['aggregate_x']}x the characters/s of one user alone; p95 finish {b['finish_p95_x']}x one user's"
        )
        if b.get("loop_only"):
            one, many = b["loop_only"].values()
            lines.append(
                f"  the decode loop alone, no server: {one:,} chars/s for 1 request, {many:,} for all at once "
                f"({many / one:.2f}x): the most the app could reach on this machine"
            )
    return "\n".join(lines)
