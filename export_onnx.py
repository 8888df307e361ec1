"""Export a trained model to ONNX, for ONNX Runtime (Python) and ONNX Runtime Web (the static Space).

    python hub.py export-onnx out          # writes out/onnx/model.onnx (graph and weights in one file)

One graph does both halves of cached generation:

    inputs   input_ids (1, T) int64             the new characters (T >= 1)
             past_key, past_value (P, L, H, hs)  keys/values of the P characters before them (P >= 0)
    outputs  logits (1, T, vocab)               next-character logits after each new character
             present_key, present_value (T, L, H, hs)   keys/values of the T new characters

Prefill is a call with P = 0 and the whole prompt; each decode step is a call with T = 1 and the
cache so far. Positions are the outermost axis of the cache (not GPT-2's usual (L, B, H, P, hs)),
so a caller keeps one preallocated buffer per cache, passes its first P positions as they are
(no copy, no growing concatenation) and appends each call's present_* at position P.
"""

import logging
import math
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from model_gpt2 import GPT

ONNX_FILE = "onnx/model.onnx"  # where transformers.js and the Hub's ONNX tooling look for it
OPSET = 18


class CachedStep(nn.Module):
    """The model's arithmetic (GPT.forward with a KV cache, in eval mode), written against the cache
    layout above. Plain matmuls and a softmax, not scaled_dot_product_attention: every ONNX runtime
    has those ops."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, past_key, past_value):
        t, c = self.model.transformer, self.model.config
        T, P = input_ids.size(1), past_key.size(0)
        H, hs = c.n_head, c.n_embd // c.n_head
        pos = torch.arange(T, device=input_ids.device) + P  # (T,) absolute positions of the new characters
        x = t.wte(input_ids[0]) + t.wpe(pos)  # (T, C)
        # key j is visible to new character i when j <= P + i (all the past, and the new ones up to i)
        visible = torch.arange(P + T, device=x.device)[None, :] <= pos[:, None]  # (T, P+T)
        keys, values = [], []
        for i, block in enumerate(t.h):
            q, k, v = block.attn.c_attn(block.ln_1(x)).view(T, 3, H, hs).unbind(1)  # (T, H, hs) each
            keys.append(k)
            values.append(v)
            K = torch.cat([past_key[:, i], k]).transpose(0, 1)  # (H, P+T, hs)
            V = torch.cat([past_value[:, i], v]).transpose(0, 1)
            att = (q.transpose(0, 1) @ K.transpose(1, 2)) * (1.0 / math.sqrt(hs))  # (H, T, P+T)
            att = att.masked_fill(~visible, float("-inf")).softmax(dim=-1)
            y = (att @ V).transpose(0, 1).reshape(T, c.n_embd)  # (T, C): heads side by side
            x = x + block.attn.c_proj(y)
            x = x + block.mlp(block.ln_2(x))
        logits = self.model.lm_head(t.ln_f(x))
        return logits[None], torch.stack(keys, 1), torch.stack(values, 1)  # (1, T, V), (T, L, H, hs) x 2


def empty_cache(model: GPT, positions: int = 0) -> torch.Tensor:
    c = model.config
    return torch.zeros(positions, c.n_layer, c.n_head, c.n_embd // c.n_head)


def export_onnx(model: GPT, out_dir) -> Path:
    """Write out_dir/onnx/model.onnx for `model` (weights inside the one file); return its path."""
    import onnx  # imported here: only exporting needs onnx and onnxscript, not training or the app

    path = Path(out_dir) / ONNX_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    step = CachedStep(model.eval()).eval()  # a model as load_model() gives it: fp32 on the CPU
    # example sizes above 1: torch.export specializes dimensions that are 0 or 1 in the example
    ids = torch.zeros((1, 3), dtype=torch.long)
    past = empty_cache(model, 2)
    T, P = torch.export.Dim("new", min=1, max=model.config.block_size), torch.export.Dim("past", min=0)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed": about ops this model has none of
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecations inside the exporter
            program = torch.onnx.export(
                step,
                (ids, past, past.clone()),
                input_names=["input_ids", "past_key", "past_value"],
                output_names=["logits", "present_key", "present_value"],
                dynamic_shapes={"input_ids": {1: T}, "past_key": {0: P}, "past_value": {0: P}},
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        exporter_log.setLevel(level)
    # the exporter may write the weights beside the graph (model.onnx.data); one file is simpler to serve
    onnx.save(program.model_proto, path, save_as_external_data=False)
    return path
