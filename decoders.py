"""The decode loop's two ways to run the model, and the choice between them by measurement.

    decoder, why = choose_decoder(model, slots=16, onnx_file="out/onnx/model.onnx", backend="auto")
    logits = decoder.prefill(rid, ids)             # (1, vocab): a request's window, into its cache
    logits = decoder.decode([rid, ...], [token, ...])   # (B, vocab): one new character for each request
    decoder.drop(rid)                              # the request left: its cache is free

TorchDecoder runs PyTorch (GPT.decode_step alone, batched products with transposed weights for
several requests); OnnxDecoder runs ONNX Runtime's CPU kernels on onnx/model.onnx, the standard
GPT-2 graph of export_onnx.py. Both keep one cache row per request and take the same calls, so the
engine's loop (engine.Batcher: sampling, window slides, cancellation) is the same for both.

Which is faster depends on the processor, not on the model: PyTorch's CPU wheel multiplies with
Intel's MKL, whose kernels run far slower on AMD processors than on Intel's, while ONNX Runtime has
its own (MLAS). So at start-up choose_decoder times a few steps of each on this machine, checks that
their logits agree, and keeps the faster (backend="auto"), saying both figures.
"""

import statistics
import time

import numpy as np
import torch
from torch.nn import functional as F

from export_onnx import io_names
from model_gpt2 import GPT, KVCache

AGREE = 1e-3  # the largest logit difference between the two decoders that still counts as the same model
ORT_VERSION = "1.32.0"  # the onnxruntime requirements.txt pins (a test checks they agree)


class SlotCache:
    """KVCache's interface over one row of the engine's cache: k, v are views, so writes land in the shared cache."""

    reset, append = KVCache.reset, KVCache.append

    def __init__(self, k: torch.Tensor, v: torch.Tensor, pos: int = 0):
        self.k, self.v, self.max_len, self.pos = k, v, k.size(3), pos


def transposed_weights(model: GPT) -> list:
    """Each Linear's weight as a contiguous (in, out) matrix (GPT-2's own Conv1D layout), with its bias:
    x @ W runs the batched decode's products about a third faster on a CPU than x @ W.T does."""
    layers = []
    for block in model.transformer.h:
        linears = (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj)
        layers.append([(lin.weight.t().contiguous(), lin.bias) for lin in linears])
    return layers + [[(model.lm_head.weight.t().contiguous(), None)]]


def _mm(x: torch.Tensor, weight_bias) -> torch.Tensor:
    w, b = weight_bias
    return x @ w if b is None else torch.addmm(b, x, w)


def decode_rows(model: GPT, weights: list, idx: torch.Tensor, pos: torch.Tensor, k_cache, v_cache) -> torch.Tensor:
    """GPT.decode_step for a batch whose rows sit at different positions: idx (B,) token ids, pos (B,)
    where each goes; rows 0..B-1 of k_cache, v_cache (n_layer, slots, nh, block_size, hs); `weights`
    from transposed_weights(model). Row b attends to its own positions 0..pos[b] only (a boolean mask
    hides the longer rows' extra positions). Returns the next-token logits (B, vocab)."""
    t, c = model.transformer, model.config
    B, hs = idx.size(0), c.n_embd // c.n_head
    rows = torch.arange(B, device=idx.device)
    L = int(pos.max()) + 1  # attend over the longest row's positions
    mask = (torch.arange(L, device=idx.device) <= pos[:, None]).view(B, 1, 1, L)
    x = t.wte(idx) + t.wpe(pos)  # (B, C)
    for i, block in enumerate(t.h):
        c_attn, c_proj, c_fc, mlp_proj = weights[i]
        q, k, v = _mm(block.ln_1(x), c_attn).view(B, 3, c.n_head, hs).unbind(1)
        k_cache[i, rows, :, pos] = k  # (B, nh, hs) into each row's own position
        v_cache[i, rows, :, pos] = v
        y = F.scaled_dot_product_attention(q.unsqueeze(2), k_cache[i, :B, :, :L], v_cache[i, :B, :, :L], attn_mask=mask)
        x = x + _mm(y.view(B, c.n_embd), c_proj)
        x = x + _mm(block.mlp.gelu(_mm(block.ln_2(x), c_fc)), mlp_proj)
    return _mm(t.ln_f(x), weights[-1][0])


class TorchDecoder:
    """PyTorch: a preallocated cache of `slots` rows; the running requests hold rows 0..B-1 (a request that
    leaves hands its row to the last one), so a batched step reads views of the cache, never a copy."""

    name = "torch"

    def __init__(self, model: GPT, slots: int):
        self.model, self.slots, self.block = model.eval(), slots, model.config.block_size
        cache = model._new_cache(slots)  # preallocated: the memory is known at start-up
        # zeroed, not left uninitialised: masked positions get weight 0, and 0 * NaN would still be NaN
        self.k, self.v = cache.k.zero_(), cache.v.zero_()  # (n_layer, slots, nh, block_size, hs)
        self.weights = transposed_weights(model)
        self.order: list = []  # request ids; order[i] uses row i of the cache
        self.pos: dict = {}  # request id -> positions of its row already in the cache

    def prefill(self, rid, ids: list[int]) -> torch.Tensor:
        """Compute ids' keys and values into rid's row (alone, as GPT.stream does); the next logits (1, vocab).
        A request that is not in the cache yet takes the next free row (only once its prefill succeeds)."""
        new = rid not in self.pos
        if new and len(self.order) >= self.slots:
            raise RuntimeError(f"all {self.slots} slots are taken")  # the engine never sends more
        row = len(self.order) if new else self.order.index(rid)
        cache = SlotCache(self.k[:, row : row + 1], self.v[:, row : row + 1])
        logits = self.model(torch.tensor([ids], dtype=torch.long, device=self.k.device), kv_cache=cache)[0][:, -1]
        if new:
            self.order.append(rid)
        self.pos[rid] = cache.pos
        return logits

    def decode(self, rids: list, tokens: list[int]) -> torch.Tensor:
        """One new token for each of rids (after its cached positions); the next logits (len(rids), vocab)."""
        if len(rids) == 1:  # one request: GPT.decode_step itself on its row, so the text equals generate_text's
            rid, row = rids[0], self.order.index(rids[0])
            cache = SlotCache(self.k[:, row : row + 1], self.v[:, row : row + 1], self.pos[rid])
            logits = self.model.decode_step(torch.tensor(tokens, device=self.k.device), cache)
            self.pos[rid] = cache.pos
            return logits
        # every row takes part (rows 0..B-1 are views, not copies); a row not asked for computes a
        # throwaway step at its next free position, which its own next decode overwrites
        step = dict(zip(rids, tokens))
        idx = torch.tensor([step.get(r, 0) for r in self.order], device=self.k.device)
        pos = torch.tensor([self.pos[r] for r in self.order], device=self.k.device)
        logits = decode_rows(self.model, self.weights, idx, pos, self.k, self.v)
        for r in rids:
            self.pos[r] += 1
        return logits[[self.order.index(r) for r in rids]]

    def drop(self, rid):
        """rid's row is free: the last row's request moves into it."""
        if rid not in self.pos:
            return
        row, last = self.order.index(rid), len(self.order) - 1
        if row != last:
            moved = self.order[last]
            n = self.pos[moved]
            self.k[:, row, :, :n] = self.k[:, last, :, :n]
            self.v[:, row, :, :n] = self.v[:, last, :, :n]
            self.order[row] = moved
        self.order.pop()
        del self.pos[rid]


class OnnxRuntimeMissing(RuntimeError):
    """--backend onnx on a machine without onnxruntime."""


def import_onnxruntime():
    """onnxruntime, or OnnxRuntimeMissing saying which version to install (the one requirements.txt pins)."""
    try:
        import onnxruntime
    except ImportError as e:
        raise OnnxRuntimeMissing(
            f"the onnx backend needs ONNX Runtime, which is not installed here ({e}): "
            f"pip install onnxruntime=={ORT_VERSION}"
        ) from e
    return onnxruntime


class OnnxDecoder:
    """ONNX Runtime on onnx/model.onnx (export_onnx.py's standard graph). The running requests are the rows
    of one batch whose keys and values (batch, n_head, P, head_dim) per layer are the graph's last
    outputs, fed back as they are. A row's own positions need not be the batch's: `mask` says which of
    the P columns are the row's (attention_mask) and `next_pos` where its next character goes
    (position_ids). A request that re-prefills its window (a slide) is written into its row in place;
    one that joins or leaves rebuilds the batch, each row's columns packed to the right."""

    name = "onnx"

    def __init__(self, onnx_file, model: GPT, slots: int, threads: int):
        ort = self.ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        c = model.config
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != io_names(c.n_layer)[0]:
            raise ValueError(
                f"{onnx_file} is not this model's standard graph (its inputs are {', '.join(inputs[:4])}...): "
                "export it again with `python hub.py export-onnx DIR`"
            )
        self.slots, self.block, self.n_layer = slots, c.block_size, c.n_layer
        self.heads, self.head_dim = c.n_head, c.n_embd // c.n_head
        self.order: list = []  # request ids, one per row of the batch
        self.past: list | None = None  # the batch's 2 x n_layer arrays (B, H, P, hs), views of the last outputs
        self.last = None  # the OrtValues those views belong to
        self.mask = np.zeros((0, 0), dtype=np.int64)  # (B, P): 1 where a column holds that row's position
        self._rows: dict = {}  # request id -> its row of self.past, as the batch was last built
        self.next_pos: dict = {}  # request id -> the position its next character takes
        self.fresh: dict = {}  # request id -> its window's keys/values from prefill, not yet in the batch
        self.joined = False  # the batch's rows changed since the last step

    def _run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list):
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        feed |= {f"past_key_values.{i // 2}.{('key', 'value')[i % 2]}": p for i, p in enumerate(past)}
        # OrtValues over the arrays' own memory: the cache goes in without a copy
        values = self.session.run_with_ort_values(
            None, {k: self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()}
        )
        return values, [v.numpy() for v in values]  # numpy views of ONNX Runtime's outputs (no copy)

    def prefill(self, rid, ids: list[int]) -> torch.Tensor:
        """Compute ids' keys and values (alone, positions 0 ... len(ids) - 1); the next logits (1, vocab). They
        enter the batch at the next decode. A new request takes a row only once its prefill succeeds."""
        if rid not in self.next_pos and len(self.order) >= self.slots:
            raise RuntimeError(f"all {self.slots} slots are taken")
        n = len(ids)
        empty = np.zeros((1, self.heads, 0, self.head_dim), dtype=np.float32)
        ids_arr, positions = np.array([ids], dtype=np.int64), np.arange(n, dtype=np.int64)[None]
        _, out = self._run(ids_arr, np.ones((1, n), dtype=np.int64), positions, [empty] * (2 * self.n_layer))
        if rid not in self.next_pos:
            self.order.append(rid)
            self.joined = True
        self.fresh[rid] = [a.copy() for a in out[1:]]  # (1, H, n, hs) each
        self.next_pos[rid] = n
        return torch.from_numpy(out[0][:, -1].copy())

    def decode(self, rids: list, tokens: list[int]) -> torch.Tensor:
        """One new token for each of rids; the next logits (len(rids), vocab). Every row of the batch runs:
        a row not asked for (it was just re-prefilled) takes a throwaway step whose column is masked out."""
        if self.joined or self.past is None or self.mask.shape[1] >= self.block + self.block // 4:
            self._rebuild()  # rows joined or left, or the columns of slid windows add up: pack them again
        for rid in [r for r in self.fresh if r in self.next_pos]:
            self._write_in_place(rid)
        step = dict(zip(rids, tokens))
        going = np.array([r in step for r in self.order])
        ids = np.array([[step.get(r, 0)] for r in self.order], dtype=np.int64)
        positions = np.array([[self.next_pos[r] if r in step else 0] for r in self.order], dtype=np.int64)
        mask = np.concatenate([self.mask, going[:, None].astype(np.int64)], axis=1)  # (B, P + 1)
        self.last, out = self._run(ids, mask, positions, self.past)
        self.past, self.mask = out[1:], mask
        for r in rids:
            self.next_pos[r] += 1
        return torch.from_numpy(out[0][[self.order.index(r) for r in rids], -1].copy())

    def drop(self, rid):
        """rid left: the batch is rebuilt without it at the next step."""
        if rid in self.next_pos:
            self.order.remove(rid)
            del self.next_pos[rid]
            self.fresh.pop(rid, None)
            self.joined = True

    def _columns(self, rid) -> list:
        """rid's own keys/values (1, H, n, hs) each: fresh from prefill, or its masked-in columns of the batch."""
        if rid in self.fresh:
            return self.fresh.pop(rid)
        row = self._rows[rid]
        keep = self.mask[row].astype(bool)
        return [p[row : row + 1, :, keep] for p in self.past]

    def _rebuild(self):
        """The batch again from each row's own columns, right-aligned: (B, H, P, hs) with P the longest row's."""
        cols = {rid: self._columns(rid) for rid in self.order}
        P = max(c[0].shape[2] for c in cols.values())
        B, shape = len(self.order), (len(self.order), self.heads, P, self.head_dim)
        past = [np.zeros(shape, dtype=np.float32) for _ in range(2 * self.n_layer)]
        mask = np.zeros((B, P), dtype=np.int64)
        for b, rid in enumerate(self.order):
            n = cols[rid][0].shape[2]
            for dst, src in zip(past, cols[rid]):
                dst[b, :, P - n :] = src[0]
            mask[b, P - n :] = 1
        self.past, self.mask, self.last, self.joined = past, mask, None, False
        self._rows = {rid: b for b, rid in enumerate(self.order)}

    def _write_in_place(self, rid):
        """A re-prefilled window into its row of the batch, right-aligned (it is never longer than P)."""
        row, fresh = self.order.index(rid), self.fresh.pop(rid)
        n, P = fresh[0].shape[2], self.mask.shape[1]
        for dst, src in zip(self.past, fresh):
            dst[row] = 0
            dst[row, :, P - n :] = src[0]
        self.mask[row] = 0
        self.mask[row, P - n :] = 1


# ---------------------------------------------------------------------------- the choice

BACKENDS = ("auto", "torch", "onnx")


def choose_decoder(
    model: GPT, slots: int, onnx_file=None, backend: str = "auto", threads: int = 1, no_graph: str = ""
) -> tuple:
    """The decoder for this machine: `backend` "torch" or "onnx" as asked, or "auto": each times one request
    alone and min(slots, 8) at once (in turns, best of 3), their logits are compared, and the faster in total
    is kept. onnx_file is the model's standard graph (None: there is none, `no_graph` says why). Returns
    (decoder, a line saying why). "onnx" that cannot run (no onnxruntime, no graph) raises; "auto" then
    decodes with PyTorch and says why."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return TorchDecoder(model, slots), "decoding with PyTorch (--backend torch)"
    if onnx_file is None:
        why = no_graph or "no ONNX graph of this model"
        if backend == "onnx":
            raise RuntimeError(f"--backend onnx: {why}")
        return TorchDecoder(model, slots), f"decoding with PyTorch ({why})"
    try:
        onnx = OnnxDecoder(onnx_file, model, slots, threads)
    except Exception as e:  # noqa: BLE001 - whatever stops ONNX Runtime, auto decodes with PyTorch
        if backend == "onnx":
            raise
        return TorchDecoder(model, slots), f"decoding with PyTorch (ONNX Runtime cannot run here: {e})"
    if backend == "onnx":
        return onnx, "decoding with ONNX Runtime (--backend onnx)"
    torch_decoder = TorchDecoder(model, slots)
    batch = min(slots, 8)
    # in turns, best of 3: on a machine busy with other work, both see the same load, and a busy moment
    # slows one turn down, not one decoder's every figure
    t_runs, o_runs = [], []
    for _ in range(3):
        t_runs.append(time_decoder(torch_decoder, model.config, batch))
        o_runs.append(time_decoder(onnx, model.config, batch))
    t_ms, o_ms = ([min(r[0][i] for r in runs) for i in (0, 1)] for runs in (t_runs, o_runs))
    gap = float((t_runs[-1][1] - o_runs[-1][1]).abs().max())
    figures = (
        f"one text {t_ms[0]:.2f} ms/step with PyTorch, {o_ms[0]:.2f} with ONNX Runtime; "
        f"{batch} at once {t_ms[1]:.2f} and {o_ms[1]:.2f} ms/step"
    )
    if not gap <= AGREE:  # NaN too
        return torch_decoder, f"decoding with PyTorch: the ONNX graph's logits differ by {gap:.2g} (re-export it)"
    if sum(o_ms) < sum(t_ms):
        return onnx, f"decoding with ONNX Runtime, the faster here ({figures})"
    return torch_decoder, f"decoding with PyTorch, the faster here ({figures})"


def time_decoder(decoder, config, batch: int, steps: int = 8) -> tuple[tuple[float, float], torch.Tensor]:
    """Median ms per decode step for one request alone and for `batch` at once (windows of a quarter of the
    context, fixed ids), and the logits of the last batched step (to compare decoders)."""
    block = config.block_size
    ids = [(7 * i) % config.vocab_size for i in range(max(1, block // 4))]
    times = []
    with torch.inference_mode():
        for n in (1, batch):
            rids = [("timing", i) for i in range(n)]
            tokens = [decoder.prefill(r, ids).argmax(-1).item() for r in rids]
            ms = []
            for _ in range(max(1, min(steps, block - len(ids)))):
                t0 = time.perf_counter()
                logits = decoder.decode(rids, tokens)
                ms.append(1000 * (time.perf_counter() - t0))
                tokens = logits.argmax(-1).tolist()
            times.append(statistics.median(ms))
            for r in rids:
                decoder.drop(r)
    return (times[0], times[1]), logits
