"""Many generations at once: one decode loop per model, in a process of its own, batching every request.

    from engine import Engine
    engine = Engine(model, slots=16, max_waiting=32)
    req = engine.submit(model.tokenizer.encode("ROMEO:"), 200, temperature=0.8, seed=0)
    print(model.tokenizer.decode(req.result()))
    engine.close()

Decoding one character reads every weight once, and reading them for 16 sequences costs little more
than for one, so a shared loop serves 16 users for a little more than the price of one. The loop's
products run in a decoder (decoders.py): PyTorch, or ONNX Runtime on the model's standard ONNX graph,
whichever was faster on this machine at start-up (Engine's `backend`). Each step of the loop (a
Batcher): requests that arrived are prefilled, one by one, into the decoder's cache and their first
character goes out at once; every other active request gets
its next character (sampled with its own settings and its own torch.Generator); finished or
cancelled requests leave at once; then one batched decode step runs for all the rest, each row at
its own position. Past `slots`, requests wait in order; past `max_waiting`, submit() raises
EngineBusy at once.

The loop runs in its own process. It is a long run of small PyTorch ops, and each op takes Python's
GIL back when it ends: inside a web server's process, the loop and the server's event loop would
wait for each other at every op (a Python thread busy 10% of the time slows the loop by a third;
bench.py --serving measures the whole app). The process gets the weights through a pipe at start
and sends back, after each step, the characters it wrote; the server's side only forwards them.

A request follows GPT.stream() exactly: the same window slide past the context (keep the last
block_size - block_size // 4 tokens, re-prefill), the same prefill, and alone in the loop the same
decode_step, so greedy and seeded texts equal generate_text's. In a batch the matrix products run
as matrix-matrix products, and ONNX Runtime's kernels are not PyTorch's: their sums may differ in the
last bits (bench.py --agreement counts the texts that change; the sampling is the same code for both).
"""

import contextlib
import gc
import io
import itertools
import os
import random
import subprocess
import sys
import threading
from collections import deque
from dataclasses import asdict
from multiprocessing.connection import Connection, Pipe
from pathlib import Path

import torch

from decoders import choose_decoder
from model_gpt2 import GPT, GPTConfig, check_sampling, sample_next_token

START_TIMEOUT = 300  # seconds for the decode process to import PyTorch and load the weights


class EngineBusy(RuntimeError):
    """Every slot is taken and the waiting line is full."""


class EngineStopped(RuntimeError):
    """The decode process is gone (killed, out of memory): requests fail with this instead of hanging."""


# ------------------------------------------------------------------ the decode loop (in its process)


class Row:
    """One request inside the decode loop: its window of token ids, its sampling settings and generator.
    Its keys and values are the decoder's (decoders.py), under its request id."""

    def __init__(self, rid, ids, max_new_tokens, temperature, top_k, top_p, seed):
        self.rid = rid
        self.window = list(ids)  # what the model sees: at most block_size ids (Engine.submit keeps the end)
        self.left = max_new_tokens
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generator = torch.Generator().manual_seed(seed)
        self.cancelled = False
        self.logits = None  # (1, vocab): the next token's logits, once prefilled or decoded
        self.state = "new"  # then "decode", "ready" or "done": see Batcher._next_token
        self.error: str | None = None  # why it ended early: what failed for this request alone


class Outbox:
    """What the decode loop tells the server: the characters written since the last send (request id,
    token, probability), the requests that ended (request id, error or None) and the step count."""

    def __init__(self, send):
        self.send, self.tokens, self.ended = send, [], []

    def flush(self, steps: int):
        if self.tokens or self.ended:
            self.send(("step", steps, self.tokens, self.ended))
            self.tokens, self.ended = [], []


class Batcher:
    """The decode loop's state for one model: the requests running in its decoder (decoders.py: PyTorch or
    ONNX Runtime, which holds their keys and values) and the ones that arrived since the last step."""

    def __init__(self, decoder):
        self.decoder, self.slots, self.block = decoder, decoder.slots, decoder.block
        self.shift = max(1, self.block // 4)  # as GPT.stream: slide the window by a quarter
        self.rows: list[Row] = []  # running, in the decoder
        self.new: list[Row] = []  # arrived, prefilled at the next step
        self.steps = 0  # decode steps run: for tests and benchmarks

    def add(self, row: Row):
        if len(self.rows) + len(self.new) >= self.slots:
            raise RuntimeError(f"all {self.slots} slots are taken")  # the Engine never sends more
        self.new.append(row)

    def cancel(self, rid: int):
        for row in self.rows + self.new:
            if row.rid == rid:
                row.cancelled = True

    @property
    def active(self) -> bool:
        return bool(self.rows or self.new)

    def step(self, out: Outbox):
        """Every request gets one token (a newcomer its first, sent at once); the ones that go on get their next logits.

        What one request's settings or ids make fail (a prefill, a sample, its own decode step) ends that
        request alone, with the error; the others keep going."""
        new, self.new = self.new, []
        self.rows += new  # all in rows first: if something fails between rows, fail() ends every one of them
        for row in new:
            if not row.cancelled:
                self._alone(row, lambda r: self._start(r, out))
                out.flush(self.steps)  # its first character goes out now, not after the others' prefills
        fresh = {id(r) for r in new}
        for row in self.rows:
            if id(row) not in fresh:
                self._alone(row, lambda r: self._next_token(r, out))
        ended = [r for r in self.rows if r.state == "done" or r.cancelled]
        out.ended += [(r.rid, r.error) for r in ended]
        for row in ended:
            self.decoder.drop(row.rid)  # its cache is free at once
        self.rows = [r for r in self.rows if not (r.state == "done" or r.cancelled)]
        decode = [r for r in self.rows if r.state == "decode"]
        if decode:
            self._decode(decode)  # a row whose own decode fails is "done": it leaves at the next step
        self.steps += 1

    def fail(self, out: Outbox, error: BaseException):
        """A broken step (outside any one request's work) fails its requests, not the loop."""
        message = one_line(error)
        out.ended += [(r.rid, message) for r in self.rows + self.new]
        for row in self.rows:
            with contextlib.suppress(Exception):
                self.decoder.drop(row.rid)
        self.rows, self.new = [], []

    @staticmethod
    def _alone(row: Row, work):
        """work(row), for this request only: if it raises, the request ends with the error; its neighbours go on."""
        try:
            work(row)
        except Exception as e:  # noqa: BLE001 - whatever one request causes, it must not end the others
            row.state, row.error = "done", one_line(e)

    def _start(self, row: Row, out: Outbox):
        """A newcomer: prefill its window, then its first token."""
        self._prefill(row)
        self._next_token(row, out)

    def _prefill(self, row: Row):
        """row.window's keys/values into the decoder (alone: as GPT.stream does), and the next logits."""
        row.logits = self.decoder.prefill(row.rid, row.window)

    def _next_token(self, row: Row, out: Outbox):
        """Sample row's next token from its logits; row.state says what it needs next:
        "done" (finished or cancelled), "decode" (a decode step), "ready" (re-prefilled: it has its logits)."""
        if row.cancelled or row.state == "done":  # done: its own decode step failed
            row.state = "done"
            return
        try:
            nxt = int(sample_next_token(row.logits, row.temperature, row.top_k, row.top_p, row.generator))
        except Exception as e:  # noqa: BLE001 - say which settings could not be sampled
            raise RuntimeError(
                f"could not sample the next character with temperature {row.temperature}, top-k {row.top_k}, "
                f"top-p {row.top_p}: {one_line(e)}"
            ) from e
        out.tokens.append((row.rid, nxt, float(torch.softmax(row.logits.float(), dim=-1)[0, nxt])))
        row.left -= 1
        if row.left == 0:
            row.state = "done"
            return
        row.window.append(nxt)
        row.state = "decode"
        if len(row.window) > self.block:  # window full: slide and re-prefill this row alone
            row.window = row.window[-max(1, self.block - self.shift) :]  # a block of 1 keeps its one character
            self._prefill(row)
            row.state = "ready"

    def _decode(self, decode: list[Row]):
        """One batched step for every row that needs one (alone, the decoder runs GPT.decode_step itself)."""
        try:
            logits = self.decoder.decode([r.rid for r in decode], [r.window[-1] for r in decode])
        except Exception:  # noqa: BLE001 - the batch failed (memory?): each row takes its step alone instead,
            for row in decode:  # so only a row that fails on its own is lost
                self._alone(row, self._decode_alone)
            return
        for i, row in enumerate(decode):
            row.logits = logits[i : i + 1]

    def _decode_alone(self, row: Row):
        row.logits = self.decoder.decode([row.rid], [row.window[-1]])


def one_line(error: BaseException) -> str:
    """An error as one line for a request's answer: its type and message (PyTorch's may span several lines)."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def model_payload(model: GPT) -> bytes:
    """The model as bytes for the decode process: its config and weights (no tokenizer: the loop sees ids)."""
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": asdict(model.config), "state": state, "device": str(model.lm_head.weight.device)}, buf)
    return buf.getvalue()


def load_payload(payload: bytes) -> GPT:
    saved = torch.load(io.BytesIO(payload), weights_only=True)
    model = GPT(GPTConfig(**saved["config"]))
    model.load_state_dict(saved["state"])
    return model.to(saved["device"]).eval()


def serve(conn: Connection, batcher: Batcher):
    """The decode loop: take starts and cancels from `conn` between steps, send each step's characters back.
    Ends when the server closes the connection or says "close"."""
    out = Outbox(conn.send)

    def handle(message):
        if message[0] == "start":
            try:
                batcher.add(Row(*message[1:]))
            except Exception as e:  # that request fails, the loop goes on
                out.ended.append((message[1], f"{type(e).__name__}: {e}"))
        elif message[0] == "cancel":
            batcher.cancel(message[1])
        return message[0] != "close"

    with torch.inference_mode():
        try:
            while True:
                if not batcher.active and not handle(conn.recv()):  # idle: wait for work
                    return
                while conn.poll():
                    if not handle(conn.recv()):
                        return
                try:
                    batcher.step(out)
                except Exception as e:
                    batcher.fail(out, e)
                out.flush(batcher.steps)
        except (EOFError, OSError):  # the server is gone
            return
        finally:
            conn.close()  # the server's reader sees the end


def worker_main(fd: int):
    """The decode process's entry point: the model and settings come first through the connection on `fd`."""
    conn = Connection(fd)
    try:
        payload, slots, threads, decoding = conn.recv()
        torch.set_num_threads(threads)
        # the decoder and its cache too, before "ready": a loop that cannot hold them fails now, while the
        # server can still say why
        batcher, why = start_batcher(load_payload(payload), slots, threads, decoding)
        del payload
    except Exception as e:
        conn.send(("failed", one_line(e)))
        return
    print(f"engine: {why}", file=sys.stderr, flush=True)
    conn.send(("ready", why))
    serve(conn, batcher)


def start_batcher(model: GPT, slots: int, threads: int, decoding: dict) -> tuple[Batcher, str]:
    """The loop's state with the decoder choose_decoder picks (decoding: its backend, onnx_file, no_graph)."""
    decoder, why = choose_decoder(model, slots, threads=threads, **decoding)
    gc.collect()  # the decoder not chosen, and its cache, are gone: the memory at start is the chosen one's
    return Batcher(decoder), why


# ------------------------------------------------------------------ the server's side


class Request:
    """One generation as the server sees it: what the decode loop has written so far.

    The engine's reader thread appends to `tokens` and `probs` (the probability the model gave each
    token) and calls `notify()` when the first token is ready and when the request ends; readers
    poll in between."""

    def __init__(self, engine, start: tuple, notify):
        self.start = start  # (ids, max_new_tokens, temperature, top_k, top_p, seed): what the loop gets
        self.tokens: list[int] = []
        self.probs: list[float] = []
        self.error: BaseException | None = None
        self.cancelled = False
        self.done = threading.Event()
        self.rid: int | None = None  # set when it gets a slot
        self._engine, self._notify = engine, notify

    def notify(self):
        if self._notify is not None:
            self._notify()

    def cancel(self):
        """Stop generating: a running request frees its slot at the loop's next step; a waiting one leaves the line."""
        if not self.cancelled and not self.done.is_set():
            self.cancelled = True
            self._engine._cancel(self)

    def result(self, timeout: float | None = None) -> list[int]:
        """Wait for the end; the generated ids (raises the loop's error, if any)."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"generation not finished within {timeout} s")
        if self.error is not None:
            raise self.error
        return list(self.tokens)


class Engine:
    """The shared decode loop for one model: `slots` requests at a time, `max_waiting` more in line.

    The loop runs in a process of its own (in a thread where a process cannot be given a connection:
    Windows, or process=False) with `threads` threads (default: as many as PyTorch uses in this process
    now). Its products run on `backend` (decoders.choose_decoder): "torch", "onnx" (ONNX Runtime on
    onnx_file, the model's standard graph) or "auto", the faster of the two here (PyTorch when there is
    no onnx_file; `no_graph` says why not). self.decoding says which it runs and why. close() stops it."""

    def __init__(
        self,
        model: GPT,
        slots: int = 16,
        max_waiting: int = 32,
        process: bool = True,
        threads: int | None = None,
        backend: str = "auto",
        onnx_file: str | None = None,
        no_graph: str = "",
    ):
        if slots < 1 or max_waiting < 0:
            raise ValueError(f"slots must be >= 1 and max_waiting >= 0, got {slots} and {max_waiting}")
        self.slots, self.max_waiting = slots, max_waiting
        self.block = model.config.block_size
        self.lock = threading.Lock()  # guards running, waiting, steps, stopped, and sends on the connection
        self.running: dict[int, Request] = {}
        self.waiting: deque[Request] = deque()
        self.steps = 0  # decode steps the loop has run: for tests and benchmarks
        self.stopped: str | None = None  # why the loop is gone, once it is
        self._ids = itertools.count()
        self.conn, theirs = Pipe()
        threads = threads or torch.get_num_threads()
        decoding = {"backend": backend, "onnx_file": str(onnx_file) if onnx_file else None, "no_graph": no_graph}
        self.decoding = ""  # the decoder's line: which backend runs the products, and why
        if process and os.name == "posix":
            self.process = start_worker(theirs)
            try:
                self.conn.send((model_payload(model), slots, threads, decoding))
            except OSError as e:  # it died at start: _wait_until_ready says why
                self.conn.close()
                self.process.wait()
                raise RuntimeError(
                    f"the decode process could not start (exit code {self.process.returncode}): {e}"
                ) from e
        else:
            torch.set_num_threads(threads)  # a thread shares this process's PyTorch threads
            self.process = None
            # its decoder and cache: a failure raises here, before anything is served
            batcher, self.decoding = start_batcher(model, slots, threads, decoding)
            threading.Thread(target=serve, args=(theirs, batcher), name="decode-loop", daemon=True).start()
        self._wait_until_ready()
        self.reader = threading.Thread(target=self._read, name="engine-reader", daemon=True)
        self.reader.start()

    def _wait_until_ready(self):
        if self.process is None:
            return
        try:
            ready = self.conn.poll(START_TIMEOUT) and self.conn.recv()
        except (EOFError, OSError):
            ready = None
        if ready and ready[0] == "ready":
            self.decoding = ready[1]
        else:
            try:  # it said why, it died (the pipe closed), or it did not answer in time (still running)
                code = self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
            self.process.kill()
            self.process.wait()
            if ready:
                why = ready[1]
            elif code is None:
                why = f"it did not start within {START_TIMEOUT} s"
            elif code < 0:  # SIGKILL: most likely the kernel's out-of-memory killer
                why = f"it was killed by signal {-code}" + (" (out of memory?)" if code == -9 else "")
            else:
                why = f"it exited with code {code}"
            raise RuntimeError(f"the decode process could not load the model and its KV cache: {why}")

    def submit(self, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None, notify=None) -> Request:
        """Queue a generation of `max_new_tokens` after the token ids `ids`; raises EngineBusy if the line is full."""
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not ids:
            raise ValueError("ids must hold at least one token")
        # a request without a seed still gets its own generator: requests never share random state
        seed = random.getrandbits(63) if seed is None else seed
        torch.Generator().manual_seed(seed)  # a seed the loop could not use fails here, for this caller only
        req = Request(self, (list(ids[-self.block :]), max_new_tokens, temperature, top_k, top_p, seed), notify)
        with self.lock:
            if self.stopped:
                raise EngineStopped(self.stopped)
            if len(self.running) + len(self.waiting) >= self.slots + self.max_waiting:
                raise EngineBusy(
                    f"busy: all {self.slots} slots are generating and {len(self.waiting)} requests wait. Try again soon."
                )
            self.waiting.append(req)
            self._start_waiting()
        return req

    def position(self, req: Request) -> int:
        """`req`'s place in the line for a slot: 1 = next, 0 = running."""
        with self.lock:
            return next((i + 1 for i, r in enumerate(self.waiting) if r is req), 0)

    def stats(self) -> dict:
        with self.lock:
            return {"running": len(self.running), "waiting": len(self.waiting), "steps": self.steps}

    def close(self):
        """Stop the decode loop; requests still running fail with EngineStopped."""
        with self.lock:
            if not self.stopped:
                self._send(("close",))
        if self.process is not None:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.reader.join(timeout=30)

    # ------------------------------------------------------------ under self.lock

    def _send(self, message):
        # under self.lock, from the server's threads: the loop reads between steps, and what is sent is
        # small (at most `slots` starts of <= block_size ids, and cancels), far below the socket's buffer
        try:
            self.conn.send(message)
        except OSError:  # the loop is gone: the reader fails every request
            pass

    def _start_waiting(self):
        while self.waiting and len(self.running) < self.slots:
            req = self.waiting.popleft()
            req.rid = next(self._ids)
            self.running[req.rid] = req
            self._send(("start", req.rid, *req.start))

    def _cancel(self, req: Request):
        with self.lock:
            if req.rid is not None:
                self._send(("cancel", req.rid))  # the loop frees its slot and says so
                return
            self.waiting = deque(r for r in self.waiting if r is not req)
        req.done.set()
        _notify(req)

    # ------------------------------------------------------------ the reader thread

    def _read(self):
        """Forward what the loop writes to the requests; when the loop is gone (or this thread fails), fail
        every request: none is left waiting for a loop that no longer answers."""
        try:
            while True:
                try:
                    message = self.conn.recv()
                except (EOFError, OSError):
                    break
                self._forward(*message)
        finally:
            code = self.process.wait() if self.process is not None else None
            with self.lock:
                self.stopped = "the decode loop has stopped" + (f" (exit code {code})" if code else "")
                self.stopped += "; restart the app"
                gone = list(self.running.values()) + list(self.waiting)
                self.running, self.waiting = {}, deque()
            for req in gone:
                req.error = EngineStopped(self.stopped)
                req.done.set()
                _notify(req)

    def _forward(self, kind, steps, tokens, ended):
        wake = []
        with self.lock:
            self.steps = steps
            for rid, token, prob in tokens:
                req = self.running.get(rid)
                if req is not None:
                    req.probs.append(prob)  # first: readers go by len(tokens)
                    req.tokens.append(token)
                    if len(req.tokens) == 1:
                        wake.append(req)
            for rid, error in ended:
                req = self.running.pop(rid, None)
                if req is not None:
                    req.error = RuntimeError(error) if error else None
                    req.done.set()
                    wake.append(req)
            self._start_waiting()
        for req in wake:
            _notify(req)


def _notify(req: Request):
    """req.notify(), whose failure (a closed event loop) must not stop the reader that serves every request."""
    try:
        req.notify()
    except Exception as e:  # noqa: BLE001 - one reader serves all requests
        print(f"engine: a request's notify() failed: {type(e).__name__}: {e}", file=sys.stderr)


def start_worker(conn: Connection) -> subprocess.Popen:
    """A fresh Python that imports only this module (not the server's main script, as multiprocessing's
    spawn would), with `conn` as its end of the pipe."""
    here = str(Path(__file__).resolve().parent)
    code = f"import sys; sys.path.insert(0, {here!r}); import engine; engine.worker_main({conn.fileno()})"
    proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[conn.fileno()], stdin=subprocess.DEVNULL)
    conn.close()  # the child has its own copy
    return proc
