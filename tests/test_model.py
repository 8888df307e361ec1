"""model_gpt2: tokenizer, architecture, save/load, and generation with the KV cache."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import make_tiny_model

from model_gpt2 import GPT, CharTokenizer, GPTConfig, load_model, sample_next_token
from train_config import PRESETS, config_from_preset, model_config

# ---------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_on_shakespeare(shakespeare_text):
    tok = CharTokenizer.from_text(shakespeare_text)
    assert len(tok) == 65
    assert tok.vocab == "".join(sorted(set(shakespeare_text)))
    sample = shakespeare_text[:5000]
    ids = tok.encode(sample)
    assert min(ids) >= 0 and max(ids) < 65
    assert tok.decode(ids) == sample
    assert tok.decode(torch.tensor(ids)) == sample


def test_tokenizer_unknown_characters():
    tok = CharTokenizer.from_text("hello world")
    with pytest.raises(ValueError, match=r"'Z'.*'☃'|'☃'.*'Z'"):
        tok.encode("hello Z☃")
    assert tok.unknown_chars("heZlo☃Z") == ["Z", "☃"]
    assert tok.decode(tok.encode("hello Z☃", errors="drop")) == "hello "
    assert tok.decode(tok.encode("hello Z", errors="replace")) == "hello  "
    assert tok.decode(tok.encode("hZ", errors="replace", replacement="o")) == "ho"
    with pytest.raises(ValueError, match="errors must be"):
        tok.encode("h", errors="ignore")


# ---------------------------------------------------------------- architecture


def gpt2_param_count(vocab, block, n_layer, n_embd):
    """GPT-2's parameter count from its definition, counted by hand: token and position embeddings,
    per block two LayerNorms, qkv, attention projection, 4x MLP (weights + biases), final
    LayerNorm; lm_head tied to the token embedding."""
    C = n_embd
    per_block = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    return vocab * C + block * C + n_layer * per_block + 2 * C


def test_real_gpt2_124m_parameter_count():
    """With GPT-2's own vocabulary and context, the 12/12/768 model has GPT-2 small's 124,439,808 parameters."""
    with torch.device("meta"):
        model = GPT(GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768))
    assert model.num_params() == 124_439_808


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_parameter_counts(preset):
    cfg = config_from_preset(preset)
    with torch.device("meta"):
        model = GPT(model_config(cfg, 65))
    assert model.num_params() == gpt2_param_count(65, cfg.block_size, cfg.n_layer, cfg.n_embd)
    if preset == "shakespeare-char":
        # nanoGPT prints 10.65M for its recipe, which drops the biases (bias=False); GPT-2 keeps them
        assert (
            round(model.num_params() / 1e6, 1) == 10.8 and round(model.num_params(non_embedding=True) / 1e6, 2) == 10.67
        )


def test_parameter_names_match_nanogpt_and_no_mask_buffer():
    model = make_tiny_model("abc", n_layer=1)
    expected = {
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.ln_1.bias",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_attn.bias",
        "transformer.h.0.attn.c_proj.weight",
        "transformer.h.0.attn.c_proj.bias",
        "transformer.h.0.ln_2.weight",
        "transformer.h.0.ln_2.bias",
        "transformer.h.0.mlp.c_fc.weight",
        "transformer.h.0.mlp.c_fc.bias",
        "transformer.h.0.mlp.c_proj.weight",
        "transformer.h.0.mlp.c_proj.bias",
        "transformer.ln_f.weight",
        "transformer.ln_f.bias",
        "lm_head.weight",
    }
    assert set(model.state_dict()) == expected
    assert list(model.buffers()) == []


def test_tied_weights_and_gpt2_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=500, n_layer=8, n_head=4, n_embd=256))
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    scaled = 0.02 / math.sqrt(2 * 8)  # residual projections
    assert model.transformer.h[3].attn.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert model.transformer.h[3].mlp.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert model.transformer.h[0].ln_1.eps == 1e-5


def test_gelu_is_gpt2s_tanh_gelu_in_both_forms(monkeypatch):
    """The MLP's GELU is GPT-2's tanh approximation (transformers' gelu_new): ATen's kernel eagerly,
    and, where torch.compile traces training on a CPU, the sigmoid form, equal in value and gradient."""
    gelu = GPT(GPTConfig(block_size=8, vocab_size=5, n_layer=1, n_head=1, n_embd=8)).transformer.h[0].mlp.gelu
    x = torch.linspace(-12, 12, 4001, requires_grad=True)
    ref = F.gelu(x, approximate="tanh")
    (ref_grad,) = torch.autograd.grad(ref.sum(), x)
    assert torch.equal(gelu(x), ref)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    traced = gelu(x)
    (traced_grad,) = torch.autograd.grad(traced.sum(), x)
    torch.testing.assert_close(traced, ref, atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(traced_grad, ref_grad, atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(
        gelu.sigmoid_form(x.double()), F.gelu(x.double(), approximate="tanh"), atol=1e-12, rtol=0
    )


def test_compiled_training_takes_the_sigmoid_form_and_nothing_else_does():
    """What torch.compile traces: the sigmoid form for training on a CPU (gradients needed), ATen's
    gelu for inference (no gradients: sampling, the app, ONNX export)."""
    gelu = GPT(GPTConfig(block_size=8, vocab_size=5, n_layer=1, n_head=1, n_embd=8)).transformer.h[0].mlp.gelu
    graphs = []

    def record(graph_module, example_inputs):  # a torch.compile backend that keeps the traced graph
        graphs.append({node.target for node in graph_module.graph.nodes})
        return graph_module.forward

    torch._dynamo.reset()
    compiled = torch.compile(gelu, backend=record, dynamic=False)
    x = torch.randn(4, 8, requires_grad=True)
    compiled(x)
    with torch.no_grad():  # as in the model: under no_grad, the Linear before it gives no gradient
        compiled(x.detach())
    assert len(graphs) == 2
    assert torch.sigmoid in graphs[0] and F.gelu not in graphs[0]
    assert F.gelu in graphs[1] and torch.sigmoid not in graphs[1]


def test_causality():
    """Changing token t+1 never changes the logits at positions <= t."""
    model = make_tiny_model("abcdefgh", block_size=16).eval()
    idx = torch.randint(0, 8, (2, 16), generator=torch.Generator().manual_seed(0))
    base = model(idx)[0]
    for t in (0, 5, 14):
        changed = idx.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % 8
        out = model(changed)[0]
        assert torch.equal(out[:, : t + 1], base[:, : t + 1])
        assert not torch.allclose(out[:, t + 1], base[:, t + 1])


def test_forward_loss_and_length_check():
    model = make_tiny_model("abcd", block_size=8)
    g = torch.Generator().manual_seed(0)
    idx, targets = torch.randint(0, 4, (3, 8), generator=g), torch.randint(0, 4, (3, 8), generator=g)
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 8, 4) and loss.shape == ()
    assert loss.item() == pytest.approx(math.log(4), abs=0.1)  # small init: near-uniform predictions
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_embd=100, n_head=3), "divisible by n_head"),
        (dict(block_size=0), "block_size must be a positive integer"),
        (dict(n_layer=-1), "n_layer"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kwargs)


def test_configure_optimizers_groups():
    model = make_tiny_model("abcd")
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# ---------------------------------------------------------------- save / load


def test_save_load_identical_logits_and_vocab(tmp_path, shakespeare_vocab):
    model = make_tiny_model(shakespeare_vocab, seed=3).eval()
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["vocab"] == shakespeare_vocab and cfg["n_layer"] == 2 and cfg["train_info"]["val_loss"] == 3.21
    loaded = load_model(tmp_path)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert loaded.tokenizer.vocab == shakespeare_vocab and loaded.train_info == model.train_info
    idx = torch.randint(0, len(shakespeare_vocab), (2, 32))
    assert torch.equal(loaded(idx)[0], model(idx)[0])
    assert GPT.from_pretrained(str(tmp_path)).config == model.config


def test_loading_a_mismatched_or_foreign_folder_fails_clearly(tmp_path, tiny_model_dir):
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**cfg, "n_layer": 3}))
    (wrong / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="do not match its config.json"):
        load_model(wrong)

    foreign = tmp_path / "bert"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 768}))
    (foreign / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a model saved by model_gpt2"):
        load_model(foreign)

    with pytest.raises(ValueError, match="config.json and model.safetensors missing"):
        load_model(tmp_path / "bert" / "..")  # a folder, but not a model
    with pytest.raises(FileNotFoundError, match="train_gpt2.py --out-dir"):
        load_model(tmp_path / "nothing-here")


# ---------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def gen_model():
    return make_tiny_model("abcdefghijklmnop", seed=1, block_size=24, n_layer=2).eval()


@pytest.mark.parametrize("new_tokens", [10, 60])  # within block_size, and well past it (several slides)
def test_kv_cache_greedy_equals_full_recompute(gen_model, new_tokens):
    prompt = torch.randint(0, 16, (3, 7), generator=torch.Generator().manual_seed(5))
    cached = gen_model.generate(prompt, new_tokens, temperature=0, use_cache=True)
    uncached = gen_model.generate(prompt, new_tokens, temperature=0, use_cache=False)
    assert cached.shape == (3, 7 + new_tokens)
    assert torch.equal(cached[:, :7], prompt)
    assert torch.equal(cached, uncached)


def test_kv_cache_logits_match_uncached(gen_model):
    """Prefill + one-token decodes give the same logits as running the whole sequence."""
    idx = torch.randint(0, 16, (2, 20), generator=torch.Generator().manual_seed(2))
    full = gen_model(idx)[0]
    cache = gen_model._new_cache(2)
    parts = [gen_model(idx[:, :12], kv_cache=cache)[0]]
    parts += [gen_model(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(12, 16)]
    parts.append(gen_model(idx[:, 16:20], kv_cache=cache)[0])  # several tokens after a non-empty cache
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 2])  # B == 1 takes the matrix-vector path
@pytest.mark.parametrize("bias", [True, False])
def test_decode_step_matches_forward(batch, bias):
    """The flat one-token decode path gives forward()'s logits and fills the cache the same way."""
    model = make_tiny_model("abcdefghijklmnop", seed=4, block_size=16, bias=bias).eval()
    idx = torch.randint(0, 16, (batch, 16), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        full = model(idx)[0]
        cache = model._new_cache(batch)
        steps = [model(idx[:, :5], kv_cache=cache)[0][:, -1]]
        steps += [model.decode_step(idx[:, t], cache) for t in range(5, 16)]
        assert cache.pos == 16
        assert torch.allclose(torch.stack(steps, dim=1), full[:, 4:], atol=1e-5)
        with pytest.raises(ValueError, match="block_size 16"):
            model.decode_step(idx[:, 0], cache)


def test_prompt_longer_than_block_size(gen_model):
    prompt = torch.randint(0, 16, (1, 40), generator=torch.Generator().manual_seed(3))
    out = gen_model.generate(prompt, 30, temperature=0)
    assert torch.equal(out, gen_model.generate(prompt, 30, temperature=0, use_cache=False))


def test_sampling_is_seeded(gen_model):
    prompt = torch.zeros((2, 3), dtype=torch.long)
    a = gen_model.generate(prompt, 50, temperature=0.9, top_k=5, top_p=0.95, seed=7)
    b = gen_model.generate(prompt, 50, temperature=0.9, top_k=5, top_p=0.95, seed=7, use_cache=False)
    c = gen_model.generate(prompt, 50, temperature=0.9, top_k=5, top_p=0.95, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert gen_model.generate_text("abc", 40, temperature=1.0, seed=3) == gen_model.generate_text(
        "abc", 40, temperature=1.0, seed=3
    )


def test_stream_yields_tokens_with_probabilities(gen_model):
    steps = list(gen_model.stream_text("abc", 20, temperature=0))
    assert len(steps) == 20
    assert "abc" + "".join(ch for ch, _ in steps) == gen_model.generate_text("abc", 20, temperature=0)
    assert all(0 < p <= 1 for _, p in steps)
    samples = gen_model.generate_text("ab", 15, num_samples=4, temperature=1.0, seed=0)
    assert len(samples) == 4 and all(len(s) == 17 and s.startswith("ab") for s in samples)
    # an empty prompt means " "; this vocabulary has no space, so its first character stands in
    assert gen_model.generate_text("", 5, temperature=0) == gen_model.generate_text("a", 5, temperature=0)


def test_start_text_of_unconditional_samples():
    assert CharTokenizer("ab \n").start_text == "\n"  # a new line, as nanoGPT's sample.py starts
    assert CharTokenizer("ab ").start_text == " "
    assert CharTokenizer("xyz").start_text == "x"


def test_top_k_keeps_exactly_k_even_with_ties():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0, 2.0]])
    seen = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        seen.add(sample_next_token(logits, temperature=1.0, top_k=2, generator=g).item())
    assert len(seen) == 2 and seen <= {1, 2, 3}
    assert sample_next_token(logits, temperature=0).item() == 1  # greedy: argmax
    for k in (None, 0, -1):  # all tokens
        seen = {sample_next_token(logits, 5.0, top_k=k, generator=g).item() for _ in range(600)}
        assert seen == set(range(6))


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    g = torch.Generator().manual_seed(0)
    seen = {sample_next_token(probs.log(), 1.0, top_p=0.75, generator=g).item() for _ in range(500)}
    assert seen == {0, 1}  # 0.5 < 0.75 so the second token is needed; 0.8 >= 0.75 stops there
    seen = {sample_next_token(probs.log(), 1.0, top_p=0.1, generator=g).item() for _ in range(100)}
    assert seen == {0}


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=2.5), "top_k"),
    ],
)
def test_invalid_sampling_values(gen_model, kwargs, name):
    args = dict(max_new_tokens=5, temperature=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        gen_model.generate(torch.zeros((1, 1), dtype=torch.long), **args)
    with pytest.raises(ValueError, match="num_samples"):
        gen_model.generate_text("a", 5, num_samples=0)


@pytest.mark.parametrize("temperature, top_p", [(1e-40, None), (5e-324, None), (0.8, 1e-300), (1e-40, 1e-300)])
def test_a_tiny_temperature_or_top_p_samples_the_likeliest_character(temperature, top_p):
    logits = torch.randn(4, 65, generator=torch.Generator().manual_seed(0)) * 5
    ids = sample_next_token(logits, temperature, top_p=top_p, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ids.flatten(), logits.argmax(dim=-1))
