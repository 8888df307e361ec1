"""Export a trained model to ONNX: the standard GPT-2 graph every ONNX reader loads, and two graphs of the static
page's own that read their weights from it: its decode step, and the graph of the "Inside the model" views.

    python hub.py export-onnx out          # writes out/onnx/model.onnx, step.onnx and explain.onnx

onnx/model.onnx is a GPT-2 decoder with a KV cache in the layout of Hugging Face Optimum, which
transformers.js, Optimum's ORTModelForCausalLM and the app's decode loop (engine.py, on ONNX Runtime) read,
and which holds the weights (the static page downloads this file once, for the two graphs below):

    inputs   input_ids (batch, sequence) int64            the new characters
             attention_mask (batch, past + sequence) int64 1 = a real position, 0 = padding or a hole
             position_ids (batch, sequence) int64          each new character's position (0 ... block_size - 1)
             past_key_values.{i}.key / .value (batch, n_head, past, head_dim)   for each layer i
    outputs  logits (batch, sequence, vocab)
             present.{i}.key / .value (batch, n_head, past + sequence, head_dim)

Prefill is a call with past = 0 and the whole prompt; each decode step a call with sequence = 1 and
the last call's present.* as past_key_values.*. Rows of a batch can sit at different positions: a
row's padding is masked out by attention_mask and position_ids say where each character really is.

onnx/step.onnx is the static page's decode step (static/app.js): the same arithmetic for one row, with the cache
in one buffer, positions outermost, and only the new positions' keys and values out:

    inputs   input_ids (1, T) int64                   the new characters, at positions P ... P + T - 1
             past_key, past_value (P, L, H, hs)        the cache of the P characters before them (P >= 0)
    outputs  logits (1, T, vocab)
             present_key, present_value (T, L, H, hs)  the new characters' keys and values, to write at P

The page keeps one preallocated buffer per cache and passes its first P positions as a view. ONNX Runtime Web
copies every input into WebAssembly's memory and every output out of it at each call: with model.onnx's
present.* (the whole cache, 2 x n_layer tensors) coming out at every character, the page generated 1.5-2x slower
than with this layout, while ONNX Runtime in Python runs both as fast (docs/performance.md has the figures;
bench.py --browser-only times this page against the committed one in the same run).

onnx/explain.onnx computes one window of text and returns what the views show:

    inputs   input_ids (batch, T) int64                 T <= block_size, positions 0 ... T - 1
    outputs  logits (batch, T, vocab)
             attention (batch, n_layer, n_head, T, T)    softmax weights, zero above the diagonal
             lens_logits (batch, n_layer, T, vocab)      each layer's residual stream through ln_f and
                                                         the head (the logit lens); the last layer's
                                                         are the logits

step.onnx and explain.onnx hold the graph only (tens of KB): their weights are ONNX external data that point
into model.onnx's own bytes (each tensor's offset in that file). So model.onnx stays one self-contained file, and
a browser that has downloaded it opens the other two without downloading the weights again.
"""

import hashlib
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from model_gpt2 import GPT, attend

ONNX_FILE = "onnx/model.onnx"  # where transformers.js and Optimum look for it
EXPLAIN_FILE = "onnx/explain.onnx"
STEP_FILE = "onnx/step.onnx"
OPSET = 18


def io_names(n_layer: int) -> tuple[list[str], list[str]]:
    """model.onnx's input and output names, in order (Optimum's GPT-2 names)."""
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


class StandardStep(nn.Module):
    """GPT.forward with a KV cache in eval mode, in Optimum's GPT-2 layout (the docstring above)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        t, c = self.model.transformer, self.model.config
        B, S = input_ids.shape
        H, hs = c.n_head, c.n_embd // c.n_head
        P = past[0].size(2)
        x = t.wte(input_ids) + t.wpe(position_ids)  # (B, S, C)
        # key j is visible to new character i when it is real (mask 1) and not after it (j <= P + i)
        causal = torch.arange(P + S, device=x.device)[None, :] <= (torch.arange(S, device=x.device) + P)[:, None]
        visible = (causal[None] & attention_mask[:, None, :].bool())[:, None]  # (B, 1, S, P+S)
        present = []
        for i, block in enumerate(t.h):
            q, k, v = block.attn.c_attn(block.ln_1(x)).view(B, S, 3, H, hs).permute(2, 0, 3, 1, 4).unbind(0)
            k, v = torch.cat([past[2 * i], k], dim=2), torch.cat([past[2 * i + 1], v], dim=2)  # (B, H, P+S, hs)
            y = attend(q, k, v, visible)[0].transpose(1, 2).reshape(B, S, c.n_embd)  # heads side by side
            x = x + block.attn.c_proj(y)
            x = x + block.mlp(block.ln_2(x))
            present += [k, v]
        return (self.model.lm_head(t.ln_f(x)), *present)


class PageStep(nn.Module):
    """GPT.forward with a KV cache in eval mode, in the static page's layout (step.onnx, the docstring above): one
    row, (T, C) activations, the cache positions outermost. Each linear layer is written as x @ W.T + b: exported as
    model.onnx's MatMul on the same transposed weight (which share_weights then finds there), and a 2-D MatMul + Add
    that ONNX Runtime fuses into one Gemm."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, past_key, past_value):
        t, c = self.model.transformer, self.model.config
        T, P = input_ids.size(1), past_key.size(0)
        H, hs = c.n_head, c.n_embd // c.n_head
        pos = torch.arange(T, device=input_ids.device) + P  # (T,) the new characters' positions
        # (T, C); no position passes the context (the page slides its window first): the clamp only lets the
        # exporter trace example sizes past a context as short as 1
        x = t.wte(input_ids[0]) + t.wpe(pos.clamp(max=c.block_size - 1))
        visible = torch.arange(P + T, device=x.device)[None, :] <= pos[:, None]  # (T, P+T): the past, and up to i
        keys, values = [], []
        for i, block in enumerate(t.h):
            q, k, v = _linear(block.ln_1(x), block.attn.c_attn).view(T, 3, H, hs).unbind(1)  # (T, H, hs) each
            keys.append(k)
            values.append(v)
            K = torch.cat([past_key[:, i], k]).transpose(0, 1)  # (H, P+T, hs)
            V = torch.cat([past_value[:, i], v]).transpose(0, 1)
            y = attend(q.transpose(0, 1), K, V, visible)[0].transpose(0, 1).reshape(T, c.n_embd)
            x = x + _linear(y, block.attn.c_proj)
            mlp = block.mlp
            x = x + _linear(mlp.gelu(_linear(block.ln_2(x), mlp.c_fc)), mlp.c_proj)
        return _linear(t.ln_f(x), self.model.lm_head)[None], torch.stack(keys, 1), torch.stack(values, 1)


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    y = x @ layer.weight.t()
    return y if layer.bias is None else y + layer.bias


class ExplainWindow(nn.Module):
    """GPT.internals: one window's logits, attention weights and logit lens."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model.internals(input_ids)


def export_onnx(model: GPT, out_dir) -> Path:
    """Write out_dir/onnx/model.onnx, step.onnx and explain.onnx for `model`; return model.onnx's path."""
    path = export_standard(model, Path(out_dir) / ONNX_FILE)
    export_page_step(model, Path(out_dir) / STEP_FILE, path)
    explain_path = Path(out_dir) / EXPLAIN_FILE
    c = model.config
    T = min(3, c.block_size)  # positions 0 ... T - 1 must exist (a context of 1 has windows of 1 only)
    axes = {"input_ids": {0: "batch", 1: "window"}, "logits": {0: "batch", 1: "window"}}
    axes |= {"attention": {0: "batch", 3: "window", 4: "window"}, "lens_logits": {0: "batch", 2: "window"}}
    ids = torch.zeros(2, T, dtype=torch.long)
    _export(
        ExplainWindow(model.eval()), (ids,), explain_path, ["input_ids"], ["logits", "attention", "lens_logits"], axes
    )
    share_weights(explain_path, path)
    return path


def export_standard(model: GPT, path) -> Path:
    """Write the standard graph alone (model.onnx) at `path` (the app's decode loop needs no more). Needs the onnx
    package, as every export does: PyTorch's exporter writes the file with it."""
    import onnx  # noqa: F401 - PyTorch's exporter writes the file with it: without it, an ImportError here

    model = model.eval()  # a model as load_model() gives it: fp32 on the CPU
    c = model.config
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs, outputs = io_names(c.n_layer)
    B, S, P = 2, 3, 4  # example sizes above 1, so that no axis is traced as a constant
    past = [torch.zeros(B, c.n_head, P, c.n_embd // c.n_head) for _ in range(2 * c.n_layer)]
    positions = (torch.arange(P, P + S) % c.block_size).repeat(B, 1)  # any positions the model has: only traced
    example = (torch.zeros(B, S, dtype=torch.long), torch.ones(B, P + S, dtype=torch.long), positions)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "position_ids": {0: "batch", 1: "sequence"}}
    axes |= {"attention_mask": {0: "batch", 1: "total"}, "logits": {0: "batch", 1: "sequence"}}
    axes |= {name: {0: "batch", 2: "past"} for name in inputs[3:]}
    axes |= {name: {0: "batch", 2: "total"} for name in outputs[1:]}
    _export(StandardStep(model), (*example, *past), path, inputs, outputs, axes)
    return path


def export_page_step(model: GPT, path, weights_path) -> Path:
    """Write step.onnx (the page's decode step) at `path`, its weights pointing into weights_path (model.onnx)."""
    model = model.eval()
    c = model.config
    T, P = 3, 4  # example sizes above 1, so that no axis is traced as a constant
    past = torch.zeros(P, c.n_layer, c.n_head, c.n_embd // c.n_head)
    axes = {"input_ids": {1: "sequence"}, "past_key": {0: "past"}, "past_value": {0: "past"}}
    axes |= {"logits": {1: "sequence"}, "present_key": {0: "sequence"}, "present_value": {0: "sequence"}}
    inputs, outputs = ["input_ids", "past_key", "past_value"], ["logits", "present_key", "present_value"]
    path = Path(path)
    _export(PageStep(model), (torch.zeros(1, T, dtype=torch.long), past, past.clone()), path, inputs, outputs, axes)
    share_weights(path, Path(weights_path))
    return path


def _export(module: nn.Module, args: tuple, path: Path, inputs: list, outputs: list, axes: dict) -> None:
    # PyTorch's TorchScript-based exporter (dynamo=False): for the 10.7M model it writes model.onnx in 2.9 s where
    # torch.export's takes 11-16 s, with the same ops and the same speed in ONNX Runtime, and it needs no package
    # beyond torch (no onnxscript). torch 2.9+ warns that it is deprecated: the warning says nothing about this graph
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # "Converting a tensor to a Python float": attend's 1/sqrt(head size), a constant of the model indeed
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module.eval(), args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
            opset_version=OPSET, dynamo=False,
        )  # fmt: skip


# ---------------------------------------------------------------------------- one copy of the weights


def share_weights(graph_path: Path, weights_path: Path) -> int:
    """Point every weight of the graph at graph_path that model.onnx (weights_path, in the same folder) also
    holds at the same bytes in weights_path: ONNX external data with the offset of those bytes in that file.
    Rewrites graph_path; returns the bytes it no longer holds itself."""
    import onnx  # imported here: only exporting needs it

    found = {
        hashlib.sha256(data).digest(): (start, len(data)) for data, start in _raw_tensors(weights_path.read_bytes())
    }
    graph = onnx.load(str(graph_path))
    shared = 0
    for tensor in graph.graph.initializer:
        where = found.get(hashlib.sha256(tensor.raw_data).digest()) if len(tensor.raw_data) >= 1024 else None
        if where is None:  # a small constant of this graph alone: it stays inside
            continue
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", weights_path.name), ("offset", where[0]), ("length", where[1])):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        shared += where[1]
    onnx.save(graph, str(graph_path))
    return shared


def _raw_tensors(model_bytes: bytes):
    """(bytes, offset) of each initializer's raw_data in a serialized ModelProto: field 7 (graph) -> field 5
    (initializer, a TensorProto) -> field 9 (raw_data), read from the protobuf wire format itself."""
    for field, start, end in _fields(model_bytes, 0, len(model_bytes)):
        if field == 7:
            for field2, start2, end2 in _fields(model_bytes, start, end):
                if field2 == 5:
                    for field3, start3, end3 in _fields(model_bytes, start2, end2):
                        if field3 == 9:
                            yield model_bytes[start3:end3], start3


def _fields(buf: bytes, start: int, end: int):
    """(field number, start, end) of each length-delimited field of the message in buf[start:end]."""
    i = start
    while i < end:
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            i = _varint(buf, i)[1]
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        elif wire == 2:
            n, i = _varint(buf, i)
            yield key >> 3, i, i + n
            i += n
        else:
            raise ValueError(f"unexpected protobuf wire type {wire} at byte {i}")


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i
