"""A character-level GPT-2: the model, its tokenizer, and fast streaming generation.

This file is pure: it builds modules and nothing else (no file I/O beyond save_pretrained and
from_pretrained, no globals read, no work at import). It ships to a Hugging Face Space beside
app.py, so it needs only torch, huggingface_hub and safetensors (and tokenizers to save).

    from model_gpt2 import load_model
    model = load_model("out")                       # a folder written by train_gpt2.py, or "ORG/NAME" on the Hub
    print(model.generate_text("ROMEO:", max_new_tokens=200, temperature=0.8, seed=0))

The architecture is exactly GPT-2's (transformers' GPT2LMHeadModel) with nanoGPT's parameter
names. A saved folder is at the same time a transformers GPT-2 repo: config.json, model.safetensors
in GPT-2's layout (its Conv1D weights transposed) and a character-level tokenizer.json, so
`pipeline("text-generation", model="out")` works too.
"""

import contextlib
import json
import math
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.nn import functional as F


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


REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # a Hub repo id: ORG/NAME


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
                    window = window[:, -(block - shift) :]
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
        save_file(to_gpt2_state_dict(self), str(out / "model.safetensors"), metadata={"format": "pt"})
        tokenizer_json, tokenizer_config = tokenizer_files(self.tokenizer.vocab, self.config.block_size)
        (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
        follow_umask(out / "model.safetensors")  # safetensors writes it 0600

    @classmethod
    def from_pretrained(cls, name_or_path, map_location: str | torch.device = "cpu", revision: str | None = None):
        """Load from a folder written by save_pretrained, or a Hub repo id "ORG/NAME". Strict: every
        weight must match the architecture in config.json, and no architecture field is guessed."""
        config_path, weights_path = _model_files(str(name_or_path), revision)
        config, vocab, train_info, legacy = config_from_json(config_path)
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


# GPT-2 stores these four as Conv1D, i.e. transposed: (in_features, out_features). attn.c_proj is square, so a
# forgotten transpose would load without a shape error and be silently wrong.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# GPTConfig field -> its name in a transformers GPT-2 config.json (the others have the same name)
GPT2_NAMES = {"block_size": "n_positions", "dropout": "resid_pdrop"}
GPT2_FIXED = {  # what our architecture always is, in transformers' terms
    "activation_function": "gelu_new",  # the tanh approximation of GELU
    "layer_norm_epsilon": 1e-5,
    "n_inner": None,  # = 4 * n_embd
    "tie_word_embeddings": True,
    "scale_attn_weights": True,
}


def to_gpt2_state_dict(model: "GPT") -> dict[str, torch.Tensor]:
    """Our weights under GPT-2's names and orientation; a bias=False model gets explicit zero biases
    (GPT-2 always has them, and a zero bias computes the same)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.LayerNorm)) and name != "lm_head":  # lm_head is tied to wte
            w = module.weight.detach()
            out[f"{name}.weight"] = w.t() if f"{name}.weight".endswith(CONV1D_WEIGHTS) else w
            bias = module.bias if module.bias is not None else torch.zeros(w.size(0) if w.dim() > 1 else w.numel())
            out[f"{name}.bias"] = bias.detach()
    out["transformer.wte.weight"] = model.transformer.wte.weight.detach()
    out["transformer.wpe.weight"] = model.transformer.wpe.weight.detach()
    return {k: v.contiguous().cpu() for k, v in out.items()}


def from_gpt2_state_dict(tensors: dict, config: GPTConfig, source) -> dict[str, torch.Tensor]:
    """The inverse of to_gpt2_state_dict: our names and orientation. A bias=False model's biases must be zero."""
    state = {}
    for name, t in tensors.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers older transformers saved
            continue
        if name.endswith(".bias") and not config.bias:
            if torch.count_nonzero(t):
                raise ValueError(f"{source} has a non-zero {name} but config.json says bias: false")
            continue
        state[name] = t.t() if name.endswith(CONV1D_WEIGHTS) else t
    return state


def config_from_json(path) -> tuple[GPTConfig, str, dict, bool]:
    """(architecture, vocabulary, train_info, is_legacy_layout) from a config.json, strictly: every
    architecture field must be there; a bad file or value is named with what to do."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}); restore it from the Hub repo or the out-dir it came from"
        ) from e
    if not isinstance(d, dict):
        raise ValueError(f"{path} holds a JSON {type(d).__name__}, not an object: not a model's config.json")
    legacy = "model_type" not in d and "block_size" in d
    if not legacy and d.get("model_type") != "gpt2":
        raise ValueError(
            f"{path} is not a model saved by model_gpt2: model_type is {d.get('model_type')!r}, not 'gpt2'."
        )
    if not legacy:
        for key, want in GPT2_FIXED.items():
            if key in d and d[key] != want and not (key == "n_inner" and d[key] == 4 * d.get("n_embd", 0)):
                raise ValueError(f"{path}: {key} is {d[key]!r}; model_gpt2 builds only {key} = {want!r}")
    keys = {f.name: f.name if legacy else GPT2_NAMES.get(f.name, f.name) for f in fields(GPTConfig)}
    missing = [k for k in [*keys.values(), "vocab"] if d.get(k) is None]
    if missing:
        raise ValueError(
            f"{path} is not a model saved by model_gpt2: it lacks {', '.join(missing)} (a character-level GPT-2's "
            "config.json names its whole architecture and its vocabulary; no field is guessed)."
        )
    try:
        config = GPTConfig(**{name: d[key] for name, key in keys.items()})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e
    if not isinstance(d["vocab"], str) or len(d["vocab"]) != config.vocab_size:
        raise ValueError(f"{path}: vocab must be a string of vocab_size ({config.vocab_size}) characters")
    return config, d["vocab"], dict(d.get("train_info") or {}), legacy


def _model_files(name: str, revision: str | None) -> tuple[str, str]:
    """Local paths of config.json and model.safetensors: in the folder `name`, or downloaded from the Hub repo `name`."""
    if os.path.isdir(name):
        missing = [f for f in ("config.json", "model.safetensors") if not (Path(name) / f).is_file()]
        if missing:
            raise ValueError(
                f"{name!r} is not a saved GPT model: {' and '.join(missing)} missing. "
                "A model folder is written by train_gpt2.py --out-dir or GPT.save_pretrained()."
            )
        return str(Path(name) / "config.json"), str(Path(name) / "model.safetensors")
    if os.path.exists(name) or not REPO_ID.match(name) or name.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"no model folder at {name!r}. Train one with `python train_gpt2.py --out-dir {name}`, "
            "or pass a Hub repo id like ORG/NAME."
        )
    try:
        return tuple(hf_hub_download(name, f, revision=revision) for f in ("config.json", "model.safetensors"))
    except (OSError, HfHubHTTPError) as e:  # not found, offline, no permission, no network
        raise OSError(
            f"could not load {name!r} from the Hugging Face Hub ({type(e).__name__}). Check the repo id, "
            "your connection and, for a private repo, your token (`hf auth login`). "
            "Offline, HF_HUB_OFFLINE=1 uses the local cache."
        ) from e


def tokenizer_files(vocab: str, block_size: int) -> tuple[str, dict]:
    """tokenizer.json and tokenizer_config.json for transformers' AutoTokenizer: one token per character
    with CharTokenizer's ids, decoding joins characters with nothing between them. A character outside the
    vocabulary is dropped before tokenizing (as the app and the sampler drop it): no id shifts, no token is
    added, so vocab_size stays the model's."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    outside = "[^" + "".join(f"\\x{{{ord(ch):x}}}" for ch in vocab) + "]"
    # WordLevel needs an unknown token; the normalizer has already removed every character it would apply to
    tok = Tokenizer(models.WordLevel({ch: i for i, ch in enumerate(vocab)}, unk_token=vocab[0]))
    tok.normalizer = normalizers.Replace(Regex(outside), "")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    tok.decoder = decoders.Fuse()
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # not GPT2Tokenizer: no byte-level BPE, no <|endoftext|>
        "clean_up_tokenization_spaces": False,
        "model_max_length": block_size,
    }
    return tok.to_str(pretty=True), config


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
    logits = logits.float() / temperature
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


# ---------------------------------------------------------------------------- memory and damaged files
# A config.json can come from any Hub repo, and a flag can ask for any size: the memory a model needs
# follows from its shape alone, so a model that cannot fit is refused before anything is allocated.


class ModelTooLargeError(ValueError):
    """A model that would not fit in this machine's memory, refused before anything was allocated."""


class DamagedFileError(ValueError):
    """A weights or state file that cannot be read (cut short, overwritten); the message says what to do."""


def count_params(config: GPTConfig) -> int:
    """GPT(config).num_params() without building it: the embeddings (lm_head tied to wte), then
    per block 12 C^2 weights (qkv 3, proj 1, MLP 4 + 4) and 13 C biases and LayerNorm parameters."""
    C = config.n_embd
    per_vector = 2 if config.bias else 1  # a LayerNorm's weight (and bias)
    block = 12 * C * C + (9 * C if config.bias else 0) + 2 * per_vector * C
    return (config.vocab_size + config.block_size) * C + config.n_layer * block + per_vector * C


def estimate_memory(config: GPTConfig, training: bool, batch_size: int = 1, bytes_per_value: int = 4) -> int:
    """Bytes a process needs for this model, a deliberately low estimate (refuse only what surely fails).
    Inference: the weights twice (loading reads them, then copies them in) and the KV cache.
    Training: weights, gradients and AdamW's two moments (4 copies), plus the activations kept for
    the backward pass, ~16 values per position and layer and 3 per logit. Each layer's Python
    modules also take ~40 KB whatever its size (measured): a million tiny layers fill memory too."""
    params, modules = count_params(config), 32_000 * config.n_layer
    positions = batch_size * config.block_size
    if not training:
        kv_cache = 2 * config.n_layer * positions * config.n_embd
        return modules + bytes_per_value * (2 * params + kv_cache)
    activations = positions * (16 * config.n_layer * config.n_embd + 3 * config.vocab_size)
    return modules + bytes_per_value * (4 * params + activations)


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes free for a new allocation on `device` (the GPU's free memory; for the CPU and MPS the
    system's MemAvailable, lowered by a container's cgroup limit); None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    free = []
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as f:
            free.append(1024 * int(next(line.split()[1] for line in f if line.startswith("MemAvailable:"))))
    for limit, usage in (("memory.max", "memory.current"), ("memory.limit_in_bytes", "memory.usage_in_bytes")):
        with contextlib.suppress(OSError, ValueError):  # cgroup v2, then v1; "max" means no limit
            cg = Path("/sys/fs/cgroup")
            free.append(int(cg.joinpath(limit).read_text()) - int(cg.joinpath(usage).read_text()))
    if not free:
        with contextlib.suppress(ImportError):  # macOS, Windows
            import psutil

            free.append(psutil.virtual_memory().available)
    return min(free) if free else None


def check_fits(
    config: GPTConfig, device="cpu", training: bool = False, batch_size: int = 1, processes: int = 1, what="", fix=""
) -> None:
    """Raise ModelTooLargeError saying how much memory `config` needs (in each of `processes` sharing the
    device) and how much this machine has."""
    need, have = processes * estimate_memory(config, training, batch_size), available_memory(device)
    if have is None or need <= have:
        return
    task = "train" if training else "load"
    contents = "weights, gradients, optimizer state, activations" if training else "weights, KV cache"
    raise ModelTooLargeError(
        f"{what or 'this model'} ({count_params(config) / 1e6:,.0f}M parameters: {config.n_layer} layers, "
        f"{config.n_embd} dim) needs about {need / 1e9:,.1f} GB to {task} ({contents}); this machine has "
        f"{have / 1e9:,.1f} GB available on {torch.device(device).type}. {fix or 'Use a smaller model.'}"
    )


def damaged_file_error(path, error: Exception, advice: str) -> DamagedFileError:
    """The error for a safetensors file that cannot be read: which file, why, and what to do."""
    return DamagedFileError(f"{path} is damaged: it cannot be read as safetensors ({error}). {advice}")


def weights_advice(folder: Path) -> str:
    """What is still good beside a damaged model.safetensors, and what to do."""
    resume = folder / "resume.safetensors"
    if not (folder / "config.json").is_file() or "snapshots" in folder.parts:  # a Hub download in the cache
        return "Download it again (`hf download REPO_ID --force-download`), or ask the repo's owner to push it again."
    if resume.is_file() and readable_safetensors(resume):
        return (
            f"resume.safetensors in {folder} is intact: `python train_gpt2.py --out-dir {folder} --resume` (with a "
            "larger --max-iters if the run had finished) continues from it and writes model.safetensors at its next evaluation."
        )
    return "Copy the folder again from where it came from, or train the model again."


def readable_safetensors(path) -> bool:
    """True when path's header and its size agree (a cut file does not)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt"):
            return True
    except Exception:  # noqa: BLE001 - SafetensorError, or not a file at all
        return False


def follow_umask(path) -> None:
    """Give a file the mode every other new file gets (0666 less the umask). safetensors 0.8 writes
    through a temporary file (Rust's tempfile crate, always 0600) renamed into place (safetensors
    issue #782), so its files come out 0600: another user serving the model (a container, a shared
    machine) could not read them."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def load_model(name_or_path, device: str | torch.device = "cpu") -> GPT:
    """The one loader every entry point uses: training resume, sampling, the app, the notebooks."""
    return GPT.from_pretrained(name_or_path, map_location=str(device)).eval()


LOAD_FIX = "Load it on a machine with more memory, or check its config.json (n_layer, n_embd)."


def damaged_weights(name_or_path, error: Exception) -> DamagedFileError:
    """The error for a model.safetensors that cannot be read, locally or in the Hub cache."""
    folder = Path(str(name_or_path))
    if not folder.is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name_or_path), "model.safetensors")
        folder = Path(cached).parent if isinstance(cached, str) else folder
    advice = weights_advice(folder).replace("REPO_ID", str(name_or_path))
    return damaged_file_error(folder / "model.safetensors", error, advice)
