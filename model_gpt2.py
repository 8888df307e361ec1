"""A character-level GPT-2: the model, its tokenizer, and fast streaming generation.

This file is pure: it builds modules and nothing else (no file I/O beyond save_pretrained and
from_pretrained, no globals read, no work at import). It ships to a Hugging Face Space beside
app.py, with the two modules it imports (model_files.py: the folder's format; machine.py: whether
a model fits in memory), so it needs only torch, huggingface_hub and safetensors (and tokenizers
to save).

    from model_gpt2 import load_model
    model = load_model("out")                       # a folder written by train_gpt2.py, or "ORG/NAME" on the Hub
    print(model.generate_text("ROMEO:", max_new_tokens=200, temperature=0.8, seed=0))

The architecture is exactly GPT-2's (transformers' GPT2LMHeadModel) with nanoGPT's parameter
names. A saved folder is at the same time a transformers GPT-2 repo: config.json, model.safetensors
in GPT-2's layout (its Conv1D weights transposed) and a character-level tokenizer.json, so
`pipeline("text-generation", model="out")` works too.
"""

import json
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.nn import functional as F

from explain import explain as explain_text
from machine import check_fits
from model_files import (
    GPT2_FIXED,
    GPT2_NAMES,
    LOAD_FIX,
    config_from_json,
    damaged_weights,
    follow_umask,
    from_gpt2_state_dict,
    model_files_in,
    save_safetensors,
    to_gpt2_state_dict,
    tokenizer_files,
)


@dataclass
class GPTConfig:
    """The architecture. Saved as config.json beside the weights."""

    block_size: int = 256  # context length: the most positions the model ever sees
    vocab_size: int = 65
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = True  # GPT-2 has biases in Linears and LayerNorms

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                f"each head gets n_embd / n_head dimensions. Try n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


class CharTokenizer:
    """Characters <-> integer ids. The vocabulary is the sorted unique characters of a text.

    errors="strict" raises on a character outside the vocabulary (naming it);
    "drop" leaves such characters out; "replace" maps them to `replacement`.
    """

    def __init__(self, vocab: str):
        if not vocab:
            raise ValueError("the vocabulary is empty: build it from a non-empty text")
        if len(set(vocab)) != len(vocab):
            raise ValueError("the vocabulary has repeated characters")
        self.vocab = vocab
        self.stoi = {ch: i for i, ch in enumerate(vocab)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.vocab)

    def unknown_chars(self, text: str) -> list[str]:
        """The distinct characters of `text` that are not in the vocabulary, in order of appearance."""
        return list(dict.fromkeys(ch for ch in text if ch not in self.stoi))

    def encode(self, text: str, errors: str = "strict", replacement: str | None = None) -> list[int]:
        if errors not in ("strict", "drop", "replace"):
            raise ValueError(f"errors must be 'strict', 'drop' or 'replace', got {errors!r}")
        unknown = self.unknown_chars(text)
        if unknown and errors == "strict":
            shown = ", ".join(repr(ch) for ch in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise ValueError(
                f"{len(unknown)} character(s) not in the model's vocabulary of {len(self)}: {shown}. "
                f"Remove them (the model knows only these: {self.vocab!r}), or encode with errors='drop' or 'replace'."
            )
        if errors == "replace":
            if replacement is None:
                replacement = " " if " " in self.stoi else self.vocab[0]
            if replacement not in self.stoi:
                raise ValueError(f"replacement {replacement!r} is not in the vocabulary")
            return [self.stoi.get(ch, self.stoi[replacement]) for ch in text]
        return [self.stoi[ch] for ch in text if ch in self.stoi]

    @property
    def start_text(self) -> str:
        """What unconditional samples start from: a new line, else a space, else the first character."""
        return next(ch for ch in ("\n", " ", self.vocab[0]) if ch in self.stoi)

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.vocab[i] for i in ids)


class KVCache:
    """Keys and values of every layer, preallocated for `max_len` positions (nanochat-style).

    Prefill writes the prompt's keys/values once; each decode step appends one position.
    `pos` counts the positions already written.
    """

    def __init__(self, n_layer, batch_size, n_head, max_len, head_dim, device, dtype):
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0

    def reset(self):
        self.pos = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, nh, T, hs) at pos..pos+T of `layer`; return all keys/values so far."""
        t = k.size(2)
        end = self.pos + t
        if end > self.max_len:
            raise RuntimeError(f"KV cache overflow: {end} positions > {self.max_len}")
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.n_head = config.n_head
        self.layer_idx = layer_idx
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, kv_cache: KVCache | None = None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        mask, causal = None, True
        if kv_cache is not None:
            start = kv_cache.pos
            k, v = kv_cache.append(self.layer_idx, k, v)  # (B, nh, start+T, hs)
            if T == 1:
                causal = False  # one new query attends to every cached position
            elif start > 0:
                # several new queries after a non-empty cache: query i sees keys <= start + i
                causal = False
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        # flash / memory-efficient attention where available; no mask buffer in the state dict
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y))


class TanhGELU(nn.Module):
    """GPT-2's GELU, the tanh approximation: 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3).

    When torch.compile traces training on a CPU it is written x * sigmoid(2u), the same function:
    inductor's CPU tanh is slow, while its sigmoid fuses with the rest into one fast loop (forward
    and backward in ~0.6x the time). Everywhere else (eager, a GPU, export, inference) it is ATen's gelu."""

    def forward(self, x):
        if torch.compiler.is_compiling() and x.requires_grad and x.device.type == "cpu":
            return self.sigmoid_form(x)
        return F.gelu(x, approximate="tanh")

    @staticmethod
    def sigmoid_form(x):
        """0.5 x (1 + tanh(u)) = x * sigmoid(2u): the same function, rounded differently (~1e-7)."""
        return x * torch.sigmoid(math.sqrt(8 / math.pi) * (x + 0.044715 * x * x * x))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = TanhGELU()  # GPT-2 used the tanh approximation
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache: KVCache | None = None):
        x = x + self.attn(self.ln_1(x), kv_cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2 language model over characters.

    `config` is the architecture; `vocab` the characters of the tokenizer (the vocabulary is part
    of the model: ids mean nothing without it); `train_info` optional facts about training
    (val loss, tokens seen...) saved in config.json for the model card and the app.
    """

    def __init__(self, config: GPTConfig, vocab: str | None = None, train_info: dict | None = None):
        super().__init__()
        if vocab is not None and len(vocab) != config.vocab_size:
            raise ValueError(f"vocab has {len(vocab)} characters but config.vocab_size is {config.vocab_size}")
        self.config = config
        self.tokenizer = CharTokenizer(vocab) if vocab else None
        self.train_info = dict(train_info or {})
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)
        # scaled init: each block adds two residual projections, so the residual stream's
        # variance grows with depth; GPT-2 scales those weights by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights counted once); non_embedding drops the position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx, targets=None, kv_cache: KVCache | None = None):
        """idx (B, T) token ids -> (logits (B, T, vocab), loss or None).

        With a kv_cache, idx holds only the new tokens; their positions start at kv_cache.pos.
        """
        B, T = idx.size()
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} positions is longer than block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x, kv_cache)
        if kv_cache is not None:
            kv_cache.pos += T
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def internals(self, idx):
        """One window through the model with attention written out, keeping what the views show.
        idx (B, T), T <= block_size -> logits (B, T, vocab); attention (B, n_layer, n_head, T, T), each
        row the softmax weights one character gives the characters up to itself; lens_logits
        (B, n_layer, T, vocab): the logits each layer's output gives when it goes straight through ln_f
        and the head (the logit lens; the last layer's are the logits). Slower than forward (no SDPA)."""
        t, c = self.transformer, self.config
        B, T = idx.shape
        H, hs = c.n_head, c.n_embd // c.n_head
        x = t.wte(idx) + t.wpe(torch.arange(T, device=idx.device))
        visible = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()  # causal
        attention, lens = [], []
        for block in t.h:
            q, k, v = block.attn.c_attn(block.ln_1(x)).view(B, T, 3, H, hs).permute(2, 0, 3, 1, 4).unbind(0)
            y, weights = attend(q, k, v, visible)
            x = x + block.attn.c_proj(y.transpose(1, 2).reshape(B, T, c.n_embd))
            x = x + block.mlp(block.ln_2(x))
            attention.append(weights)
            lens.append(self.lm_head(t.ln_f(x)))
        return lens[-1], torch.stack(attention, dim=1), torch.stack(lens, dim=1)

    def explain(self, text: str, top: int = 5) -> dict:
        """What the model does with the last window of `text` (at most block_size characters), as JSON-ready
        lists: chars (T); cut (characters before the window, left out); unknown (characters not in the
        vocabulary, dropped); top[i] the `top` likeliest next characters after i ({"char", "prob"}); next[i],
        next_prob[i] the character that really came next and its probability (None for the last);
        attention (n_layer, n_head, T, T) rows that sum to 1, zero above the diagonal; lens (n_layer, T, 3)
        the logit lens' top-3 after each layer (the last layer's is the model's own). An empty text, or one
        of unknown characters only, raises ValueError. One internals() pass: explain.py shapes it."""
        return explain_text(self, text, top)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW; weight decay on matrices and embeddings (>= 2-D), not on biases or LayerNorms."""
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        decay = [p for p in params.values() if p.dim() >= 2]
        no_decay = [p for p in params.values() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        # the fused kernel does the whole update in one pass per group: one launch on CUDA, and on a CPU
        # faster than the default multi-tensor loop too (bench.py's "optimizer" phase measures it)
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))

    # ---------------------------------------------------------------- generation

    def decode_step(self, idx: torch.Tensor, kv_cache: KVCache) -> torch.Tensor:
        """One new token per sequence, idx (B,), at position kv_cache.pos -> next-token logits (B, vocab).

        The same arithmetic as forward(idx[:, None], kv_cache=kv_cache) in eval mode, written flat
        for decoding, whose every op runs on a single position: no module calls, no (B, T, C)
        reshapes, one matrix-vector product per weight matrix when B == 1. On a CPU each token
        reads every weight once, so the matrix products are bound by memory bandwidth and the rest
        is per-op overhead, which this path keeps small (bench.py times it against forward()).
        """
        t, c = self.transformer, self.config
        B, pos = idx.size(0), kv_cache.pos
        if pos + 1 > c.block_size:
            raise ValueError(f"sequence of {pos + 1} positions is longer than block_size {c.block_size}")
        hs = c.n_embd // c.n_head
        x = t.wte(idx) + t.wpe.weight[pos]  # (B, C)
        for i, block in enumerate(t.h):
            attn, mlp = block.attn, block.mlp
            q, k, v = _linear(block.ln_1(x), attn.c_attn).view(B, 3, c.n_head, hs).unbind(1)  # (B, nh, hs) each
            kv_cache.k[i, :, :, pos] = k
            kv_cache.v[i, :, :, pos] = v
            keys, values = kv_cache.k[i, :, :, : pos + 1], kv_cache.v[i, :, :, : pos + 1]
            y = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values)  # (B, nh, 1, hs)
            x = x + _linear(y.view(B, c.n_embd), attn.c_proj)
            x = x + _linear(mlp.gelu(_linear(block.ln_2(x), mlp.c_fc)), mlp.c_proj)
        kv_cache.pos = pos + 1
        return _linear(t.ln_f(x), self.lm_head)

    def _new_cache(self, batch_size: int) -> KVCache:
        c = self.config
        p = self.lm_head.weight
        return KVCache(c.n_layer, batch_size, c.n_head, c.block_size, c.n_embd // c.n_head, p.device, p.dtype)

    @torch.inference_mode()
    def stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (token ids (B,), their probabilities (B,)) one step at a time.

        Context past block_size: the model never sees more than block_size positions. When the
        window would overflow, it slides to the last `block_size - shift` tokens
        (shift = block_size // 4) and those are re-prefilled once; then decoding resumes one
        token per step. So each token is predicted from at least 3/4 of a full context, and a
        re-prefill happens once every `shift` tokens. use_cache=False runs the very same
        strategy by recomputing the whole window at every step (for tests and benchmarks).
        The probability is the one the model gave the token (softmax of the raw logits).
        """
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        if idx.dim() != 2 or idx.size(1) < 1:
            raise ValueError("idx must be a (batch, time) tensor of token ids with at least one token")
        if generator is None and seed is not None:
            generator = torch.Generator(device=idx.device).manual_seed(seed)
        block = self.config.block_size
        shift = max(1, block // 4)
        was_training = self.training
        self.eval()
        try:
            window = idx[:, -block:]  # what the model sees: at most block_size positions, whatever the prompt
            cache = self._new_cache(idx.size(0)) if use_cache else None
            logits = self(window, kv_cache=cache)[0][:, -1]
            for i in range(max_new_tokens):
                nxt = sample_next_token(logits, temperature, top_k, top_p, generator)  # (B, 1)
                prob = torch.softmax(logits.float(), dim=-1).gather(1, nxt).squeeze(1)
                yield nxt.squeeze(1), prob
                if i == max_new_tokens - 1:
                    break
                window = torch.cat((window, nxt), dim=1)
                if window.size(1) > block:  # window full: slide and re-prefill
                    window = window[:, -max(1, block - shift) :]  # a block of 1 keeps its one character
                    if cache is not None:
                        cache.reset()
                    logits = self(window, kv_cache=cache)[0][:, -1]
                elif cache is not None:
                    logits = self.decode_step(nxt[:, 0], cache)  # decode: one new position
                else:
                    logits = self(window)[0][:, -1]  # full recompute of the window
        finally:
            self.train(was_training)

    @torch.inference_mode()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None, use_cache=True):
        """nanoGPT's signature: idx (B, T) -> (B, T + max_new_tokens), using the KV cache."""
        out = [idx] + [
            t.unsqueeze(1)
            for t, _ in self.stream(idx, max_new_tokens, temperature, top_k, top_p, seed, use_cache=use_cache)
        ]
        return torch.cat(out, dim=1)

    def encode_prompt(self, prompt: str, errors: str = "strict") -> torch.Tensor:
        """A (1, T) tensor of the prompt's ids on the model's device. An empty prompt means ' '."""
        if self.tokenizer is None:
            raise ValueError("this model has no vocabulary: build it with GPT(config, vocab=...)")
        ids = self.tokenizer.encode(prompt, errors=errors)
        if not ids:  # nothing left to condition on: a space (or, without one, the first character)
            ids = self.tokenizer.encode(" ", errors="replace")
        return torch.tensor([ids], dtype=torch.long, device=self.lm_head.weight.device)

    def stream_text(
        self, prompt: str, max_new_tokens: int, errors: str = "strict", **sampling
    ) -> Iterator[tuple[str, float]]:
        """Yield (character, probability) for one sample, as it is generated."""
        for tok, prob in self.stream(self.encode_prompt(prompt, errors), max_new_tokens, **sampling):
            yield self.tokenizer.vocab[tok.item()], prob.item()

    def generate_text(self, prompt: str, max_new_tokens: int, num_samples: int = 1, errors: str = "strict", **sampling):
        """The prompt followed by its continuation; a list of num_samples strings if num_samples > 1."""
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        idx = self.encode_prompt(prompt, errors).repeat(num_samples, 1)
        texts = [self.tokenizer.decode(row) for row in self.generate(idx, max_new_tokens, **sampling)]
        return texts[0] if num_samples == 1 else texts

    # ---------------------------------------------------------------- save / load

    def hub_config(self) -> dict:
        """What config.json holds: a transformers GPT-2 config (so GPT2LMHeadModel and pipeline() read it),
        plus our own keys: the vocabulary, `bias`, the parameter count and the training facts."""
        c = self.config
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            **{GPT2_NAMES.get(f.name, f.name): getattr(c, f.name) for f in fields(GPTConfig)},
            **dict.fromkeys(("embd_pdrop", "attn_pdrop"), c.dropout),  # GPT-2 names each dropout; ours is one
            **GPT2_FIXED,
            # a character model has no begin/end/padding token; transformers' defaults (50256) don't exist here
            "bos_token_id": None,
            "eos_token_id": None,
            "pad_token_id": None,
            "vocab": self.tokenizer.vocab if self.tokenizer else None,
            "num_params": self.num_params(),
            "train_info": self.train_info,
        }

    def save_pretrained(self, save_directory) -> None:
        """Write config.json, model.safetensors (GPT-2's layout) and the tokenizer files into a folder:
        our load_model, transformers' from_pretrained / pipeline and AutoTokenizer all read it."""
        if self.tokenizer is None:
            raise ValueError("this model has no vocabulary: build it with GPT(config, vocab=...) before saving")
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(self.hub_config(), indent=2, sort_keys=True), encoding="utf-8")
        save_safetensors(to_gpt2_state_dict(self), out / "model.safetensors", metadata={"format": "pt"})
        tokenizer_json, tokenizer_config = tokenizer_files(self.tokenizer.vocab, self.config.block_size)
        (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
        # transformers' generate(): stop at the context (max_length), and begin an empty prompt with the
        # character our own generation begins it with (not a tokenizer bos_token, which decoding would drop)
        start = {"bos_token_id": self.tokenizer.stoi[self.tokenizer.start_text], "max_length": self.config.block_size}
        (out / "generation_config.json").write_text(json.dumps(start, indent=2), encoding="utf-8")
        follow_umask(out / "model.safetensors")  # safetensors writes it 0600

    @classmethod
    def from_pretrained(cls, name_or_path, map_location: str | torch.device = "cpu", revision: str | None = None):
        """Load from a folder written by save_pretrained, or a Hub repo id "ORG/NAME". Strict: every
        weight must match the architecture in config.json, and no architecture field is guessed."""
        config_path, weights_path = model_files_in(str(name_or_path), revision)
        config, vocab, train_info, legacy = config_from_json(config_path, GPTConfig)
        # a config.json can come from any repo: refuse a model too large for memory before allocating
        check_fits(config, map_location, what=f"the model {str(name_or_path)!r}", fix=LOAD_FIX)
        with torch.device("meta"):  # no memory until the weights are read
            model = cls(config, vocab=vocab, train_info=train_info)
        try:
            tensors = load_file(weights_path, device=str(map_location))
        except SafetensorError as e:
            raise damaged_weights(name_or_path, e) from None
        state = tensors if legacy else from_gpt2_state_dict(tensors, config, weights_path)
        if "lm_head.weight" not in state and "transformer.wte.weight" in state:  # tied: stored once
            state["lm_head.weight"] = state["transformer.wte.weight"]
        state.setdefault("transformer.wte.weight", state.get("lm_head.weight"))
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"the weights in {weights_path} do not match its config.json: {e}") from e
        model.transformer.wte.weight = model.lm_head.weight  # assign=True replaced the tied Parameter
        if legacy:
            folder = Path(config_path).parent
            warnings.warn(
                f"{folder} is in the layout of an older model_gpt2 (weights not in GPT-2's orientation, no tokenizer "
                f"files), which transformers cannot read. Convert it in place with `python hub.py convert {folder}`.",
                stacklevel=2,
            )
        return model.to(map_location)


def attend(q, k, v, visible):
    """Softmax attention written with plain matmuls, returning its weights (SDPA returns none).
    q (B, H, S, hs), k and v (B, H, P+S, hs), visible (bool, broadcastable to (B, H, S, P+S))
    -> (output (B, H, S, hs), weights (B, H, S, P+S)). A hidden key gets the lowest float, not -inf:
    a row with every key hidden (a padded row) softmaxes to finite numbers instead of NaN."""
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.size(-1)))
    weights = torch.where(visible, scores, torch.finfo(scores.dtype).min).softmax(dim=-1)
    return weights @ v, weights


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """layer(x) for x (B, in_features); a matrix-vector product when B == 1 (faster on a CPU than (1, in) @ W.T)."""
    if x.size(0) != 1:
        return F.linear(x, layer.weight, layer.bias)
    y = torch.mv(layer.weight, x[0]) if layer.bias is None else torch.addmv(layer.bias, layer.weight, x[0])
    return y.unsqueeze(0)


def check_sampling(max_new_tokens, temperature, top_k, top_p):
    """Raise ValueError naming the parameter and its valid range."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool)):
        raise ValueError(f"top_k must be an integer (<= 0 or None = all tokens), got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] (None = no nucleus cut), got {top_p!r}")


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """logits (B, V) -> next ids (B, 1). temperature 0 = argmax; top_k keeps exactly k candidates
    (ties broken by index); top_p keeps the smallest set whose probability reaches p."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    # In float64 after subtracting the row's largest logit, which becomes exactly 0: any temperature
    # the checks accept, 5e-324 included, then divides without inf - inf (a tiny one samples the argmax).
    logits = logits.double()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kept = torch.topk(logits, top_k, dim=-1).indices
        logits = torch.full_like(logits, float("-inf")).scatter(1, kept, logits.gather(1, kept))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) >= top_p  # mass before this token already >= p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def load_model(name_or_path, device: str | torch.device = "cpu") -> GPT:
    """The one loader every entry point uses: training resume, sampling, the app, the notebooks."""
    return GPT.from_pretrained(name_or_path, map_location=str(device)).eval()
