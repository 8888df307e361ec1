"""Many generations at once: one background decode loop per model that batches every active request.

    from engine import Engine
    engine = Engine(model, slots=16, max_waiting=32)
    req = engine.submit(model.tokenizer.encode("ROMEO:"), 200, temperature=0.8, seed=0)
    print(model.tokenizer.decode(req.result()))

Decoding one character reads every weight once, and reading them for 16 sequences costs little more
than for one, so a shared loop serves 16 users for a little more than the price of one. Each step
of the loop: requests that arrived are prefilled, one by one, into a free slot of a preallocated KV
cache and get their first character at once; every other active request gets its next character (sampled with its own settings and its own torch.Generator);
finished or cancelled requests leave at once; then one batched decode step runs for all the rest,
each row at its own position. Past `slots`, requests wait in order; past `max_waiting`, submit()
raises EngineBusy at once.

A request follows GPT.stream() exactly: the same window slide past the context (keep the last
block_size - block_size // 4 tokens, re-prefill), the same prefill, and alone in the loop the same
decode_step, so greedy and seeded texts equal generate_text's. In a batch the matrix products run
as matrix-matrix products, whose sums may differ from the matrix-vector ones in the last bits.
"""

import random
import threading
from collections import deque

import torch
from torch.nn import functional as F

from model_gpt2 import GPT, KVCache, _linear, check_sampling, sample_next_token


class EngineBusy(RuntimeError):
    """Every slot is taken and the waiting line is full."""


class SlotCache:
    """KVCache's interface over one row of the engine's cache: k, v are views, so writes land in the shared cache."""

    reset, append = KVCache.reset, KVCache.append

    def __init__(self, k: torch.Tensor, v: torch.Tensor, pos: int = 0):
        self.k, self.v, self.max_len, self.pos = k, v, k.size(3), pos


class Request:
    """One generation: its window of token ids, its sampling settings, and what it has produced so far.

    The worker appends to `tokens` and `probs` (the probability the model gave each token) and calls
    `notify()` when the first token is ready and when the request ends; readers poll in between.
    """

    def __init__(self, ids, max_new_tokens, temperature, top_k, top_p, seed, notify):
        self.window = list(ids)  # what the model sees: at most block_size ids
        self.max_new_tokens = max_new_tokens
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        # a request without a seed still gets its own generator: requests never share random state
        self.generator = torch.Generator().manual_seed(random.getrandbits(63) if seed is None else seed)
        self.tokens: list[int] = []
        self.probs: list[float] = []
        self.error: BaseException | None = None
        self.cancelled = False
        self.done = threading.Event()
        self._notify = notify
        self.row = -1  # its row of the KV cache while it runs
        self.pos = 0  # positions of its row already in the cache
        self.logits = None  # (1, vocab): the next token's logits, once prefilled or decoded
        self.state = "new"  # then "decode", "ready" or "done": see Engine._next_token

    def notify(self):
        if self._notify is not None:
            self._notify()

    def cancel(self):
        """Stop generating: the worker frees the slot at its next step (a waiting request just leaves the line)."""
        self.cancelled = True

    def result(self, timeout: float | None = None) -> list[int]:
        """Wait for the end; the generated ids (raises the worker's error, if any)."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"generation not finished within {timeout} s")
        if self.error is not None:
            raise self.error
        return list(self.tokens)


def decode_rows(model: GPT, idx: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor):
    """GPT.decode_step for a batch whose rows sit at different positions: idx (B,) token ids, pos (B,)
    where each goes; rows 0..B-1 of k_cache, v_cache (n_layer, slots, nh, block_size, hs). Row b attends
    to its own positions 0..pos[b] only (a boolean mask hides the longer rows' extra positions).
    Returns the next-token logits (B, vocab)."""
    t, c = model.transformer, model.config
    B, hs = idx.size(0), c.n_embd // c.n_head
    rows = torch.arange(B, device=idx.device)
    L = int(pos.max()) + 1  # attend over the longest row's positions
    mask = (torch.arange(L, device=idx.device) <= pos[:, None]).view(B, 1, 1, L)
    x = t.wte(idx) + t.wpe(pos)  # (B, C)
    for i, block in enumerate(t.h):
        attn, mlp = block.attn, block.mlp
        q, k, v = F.linear(block.ln_1(x), attn.c_attn.weight, attn.c_attn.bias).view(B, 3, c.n_head, hs).unbind(1)
        k_cache[i, rows, :, pos] = k  # (B, nh, hs) into each row's own position
        v_cache[i, rows, :, pos] = v
        y = F.scaled_dot_product_attention(q.unsqueeze(2), k_cache[i, :B, :, :L], v_cache[i, :B, :, :L], attn_mask=mask)
        x = x + _linear(y.view(B, c.n_embd), attn.c_proj)
        x = x + _linear(mlp.gelu(_linear(block.ln_2(x), mlp.c_fc)), mlp.c_proj)
    return _linear(t.ln_f(x), model.lm_head)


class Engine:
    """The shared decode loop for one model: `slots` requests at a time, `max_waiting` more in line."""

    def __init__(self, model: GPT, slots: int = 16, max_waiting: int = 32):
        if slots < 1 or max_waiting < 0:
            raise ValueError(f"slots must be >= 1 and max_waiting >= 0, got {slots} and {max_waiting}")
        self.model, self.slots, self.max_waiting = model.eval(), slots, max_waiting
        cache = model._new_cache(slots)  # preallocated: the memory is known at start-up
        # zeroed, not left uninitialised: masked positions get weight 0, and 0 * NaN would still be NaN
        self.k, self.v = cache.k.zero_(), cache.v.zero_()  # (n_layer, slots, nh, block_size, hs)
        self.block = model.config.block_size
        self.shift = max(1, self.block // 4)  # as GPT.stream: slide the window by a quarter
        self.rows: list[Request] = []  # running, rows[i] uses row i of the cache
        self.waiting: deque[Request] = deque()
        self.lock = threading.Condition()
        self.steps = 0  # decode steps run: for tests and benchmarks
        self.thread = threading.Thread(target=self._loop, name="decode-loop", daemon=True)
        self.thread.start()

    def submit(self, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None, notify=None) -> Request:
        """Queue a generation of `max_new_tokens` after the token ids `ids`; raises EngineBusy if the line is full."""
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        if not ids:
            raise ValueError("ids must hold at least one token")
        req = Request(ids[-self.block :], max_new_tokens, temperature, top_k, top_p, seed, notify)
        with self.lock:
            self.waiting = deque(r for r in self.waiting if not r.cancelled)
            if len(self.rows) + len(self.waiting) >= self.slots + self.max_waiting:
                raise EngineBusy(
                    f"busy: all {self.slots} slots are generating and {len(self.waiting)} requests wait. Try again soon."
                )
            self.waiting.append(req)
            self.lock.notify()
        return req

    def position(self, req: Request) -> int:
        """`req`'s place in the line for a slot: 1 = next, 0 = running or starting at the next step."""
        with self.lock:
            place = next((i + 1 for i, r in enumerate(self.waiting) if r is req), 0)
            return max(0, place - (self.slots - len(self.rows)))

    def stats(self) -> dict:
        with self.lock:
            return {"running": len(self.rows), "waiting": len(self.waiting), "steps": self.steps}

    # ------------------------------------------------------------ the worker

    def _loop(self):
        with torch.inference_mode():
            while True:
                with self.lock:
                    while not self.rows and not self.waiting:
                        self.lock.wait()
                    new = []
                    while self.waiting and len(self.rows) < self.slots:
                        req = self.waiting.popleft()
                        if not req.cancelled:
                            req.row = len(self.rows)
                            self.rows.append(req)
                            new.append(req)
                try:
                    for req in new:  # each newcomer's first token at once, before the next one's prefill
                        self._prefill(req)
                        self._next_token(req)
                    self._step(new)
                except Exception as e:  # a broken step fails its requests, not the server
                    with self.lock:
                        for req in self.rows:
                            req.error = e
                        self._finish(self.rows)
                        self.rows = []

    def _prefill(self, req: Request):
        """Compute req.window's keys/values into its row (alone: as GPT.stream does) and the next logits."""
        cache = SlotCache(self.k[:, req.row : req.row + 1], self.v[:, req.row : req.row + 1])
        window = torch.tensor([req.window], dtype=torch.long, device=self.k.device)
        req.logits = self.model(window, kv_cache=cache)[0][:, -1]
        req.pos = cache.pos

    def _next_token(self, req: Request):
        """Sample req's next token from its logits; req.state says what it needs next:
        "done" (finished or cancelled), "decode" (a decode step), "ready" (re-prefilled: it has its logits)."""
        if req.cancelled:
            req.state = "done"
            return
        nxt = sample_next_token(req.logits, req.temperature, req.top_k, req.top_p, req.generator)  # (1, 1)
        prob = torch.softmax(req.logits.float(), dim=-1)[0, nxt[0, 0]]
        req.probs.append(float(prob))  # first: readers go by len(tokens)
        req.tokens.append(int(nxt))
        if len(req.tokens) == 1:
            req.notify()  # the first token: shown at once
        if len(req.tokens) == req.max_new_tokens:
            req.state = "done"
            return
        req.window.append(int(nxt))
        req.state = "decode"
        if len(req.window) > self.block:  # window full: slide and re-prefill this row alone
            req.window = req.window[-(self.block - self.shift) :]
            self._prefill(req)
            req.state = "ready"

    def _step(self, new: list[Request]):
        """Every running request gets one token (the new ones have theirs); the ones that go on get their next logits."""
        fresh = {id(r) for r in new}
        for req in self.rows:
            if id(req) not in fresh:
                self._next_token(req)
        with self.lock:
            self._finish([r for r in self.rows if r.state == "done" or r.cancelled])
            self._compact()
        decode = [r for r in self.rows if r.state == "decode"]
        if decode:
            self._decode(decode)
        self.steps += 1

    def _decode(self, decode: list[Request]):
        if len(self.rows) == 1:  # alone: GPT.decode_step itself, so the text equals generate_text's
            req = decode[0]
            cache = SlotCache(self.k[:, :1], self.v[:, :1], req.pos)
            req.logits = self.model.decode_step(torch.tensor([req.window[-1]], device=self.k.device), cache)
            req.pos = cache.pos
            return
        # every row takes part (rows 0..B-1 are views, not copies); a row that was just re-prefilled
        # computes a throwaway step at its next free position, which its next decode overwrites
        idx = torch.tensor([r.window[-1] for r in self.rows], device=self.k.device)
        pos = torch.tensor([r.pos for r in self.rows], device=self.k.device)
        logits = decode_rows(self.model, idx, pos, self.k, self.v)
        for req in decode:
            req.logits = logits[req.row : req.row + 1]
            req.pos += 1

    def _finish(self, finished: list[Request]):
        for req in finished:
            req.done.set()
            req.notify()
        gone = {id(r) for r in finished}
        self.rows = [r for r in self.rows if id(r) not in gone]

    def _compact(self):
        """Keep the running rows at 0..B-1: a row whose request left takes over the last row's cache."""
        for i, req in enumerate(self.rows):
            if req.row != i:
                self.k[:, i, :, : req.pos] = self.k[:, req.row, :, : req.pos]
                self.v[:, i, :, : req.pos] = self.v[:, req.row, :, : req.pos]
                req.row = i
