"""A saved model folder is also a transformers GPT-2 repo: GPT2LMHeadModel, pipeline() and AutoTokenizer
read it and compute exactly what model_gpt2 computes. transformers is a test dependency only."""

import json
import warnings

import pytest
import torch
from helpers import ROOT, make_tiny_model, require, train_tiny
from safetensors.torch import load_file, save_model
from transformers import AutoTokenizer, GPT2LMHeadModel, pipeline

from hub import convert_folder
from model_gpt2 import GPT, load_model


def perturbed_model(vocab: str, bias: bool) -> GPT:
    """Random weights far from the defaults: non-zero biases, LayerNorm weights far from 1."""
    model = make_tiny_model(vocab, seed=7, bias=bias)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.5 if "ln_" in name else 0.1))
    return model.eval()


@pytest.mark.parametrize("bias", [True, False])
def test_gpt2lmheadmodel_gives_our_logits(tmp_path, shakespeare_vocab, bias):
    model = perturbed_model(shakespeare_vocab, bias)
    model.save_pretrained(tmp_path)
    hf = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(
        0, model.config.vocab_size, (3, model.config.block_size), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        ours, theirs = model(idx)[0], hf(idx).logits
    assert (ours - theirs).abs().max() < 1e-5
    # and our loader reads the same file back to identical weights (a bias=False model stays bias-free)
    loaded = load_model(tmp_path)
    assert loaded.config == model.config
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_weights_are_stored_in_gpt2s_layout(tmp_path, shakespeare_vocab):
    model = perturbed_model(shakespeare_vocab, bias=False)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    block = model.transformer.h[0]
    # Conv1D orientation: (in, out). c_proj is square, so only the values tell a missing transpose apart
    assert torch.equal(saved["transformer.h.0.attn.c_proj.weight"], block.attn.c_proj.weight.T)
    assert torch.equal(saved["transformer.h.0.attn.c_attn.weight"], block.attn.c_attn.weight.T)
    assert torch.equal(saved["transformer.h.0.mlp.c_fc.weight"], block.mlp.c_fc.weight.T)
    assert torch.equal(saved["transformer.h.0.mlp.c_proj.weight"], block.mlp.c_proj.weight.T)
    # GPT-2 always has biases: a bias=False model gets explicit zeros; the head is tied, stored once
    assert torch.count_nonzero(saved["transformer.h.0.attn.c_proj.bias"]) == 0
    assert torch.count_nonzero(saved["transformer.ln_f.bias"]) == 0
    assert "lm_head.weight" not in saved
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert config["n_positions"] == model.config.block_size and config["activation_function"] == "gelu_new"
    assert config["tie_word_embeddings"] is True and config["layer_norm_epsilon"] == 1e-5
    assert config["vocab"] == shakespeare_vocab and config["num_params"] == model.num_params()


def test_a_non_zero_bias_in_a_bias_free_model_is_refused(tmp_path, shakespeare_vocab):
    model = perturbed_model(shakespeare_vocab, bias=False)
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["transformer.ln_f.bias"][0] = 1.0
    from safetensors.torch import save_file

    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="non-zero transformer.ln_f.bias but config.json says bias: false"):
        load_model(tmp_path)


def test_autotokenizer_matches_char_tokenizer_on_the_whole_validation_text(tiny_model_dir, shakespeare_text):
    val = shakespeare_text[int(0.9 * len(shakespeare_text)) :]
    ours = load_model(tiny_model_dir).tokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok(val)["input_ids"]
    assert ids == ours.encode(val)
    assert tok.decode(ids) == val  # byte for byte: newlines and runs of spaces included
    assert len(tok) == len(ours) == 65
    # a character outside the vocabulary is the unknown token, a space (the app leaves it out); no token is added
    assert tok("ROMEO: ☃ hi")["input_ids"] == ours.encode("ROMEO:   hi")
    assert len(tok) == 65


def test_a_vocabulary_of_over_10000_characters_saves_and_round_trips_in_transformers(tmp_path):
    """Any vocabulary prepare.py accepts: 12,000 characters (CJK, emoji, controls) save and tokenize exactly. The
    tokenizer used to be built with a character class of the whole vocabulary, which Oniguruma refused past
    10,000 characters ("too many multibyte code ranges") and JavaScript's regular expressions refused at all."""
    base = "\t\n\r !abcXYZ😀🙂"  # controls, a space, ASCII, characters outside the Basic Multilingual Plane
    vocab = base + "".join(chr(0x4E00 + i) for i in range(12_000 - len(base)))  # and CJK ideographs
    assert len(vocab) == 12_000
    model = make_tiny_model(vocab)
    model.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "".join(vocab[(i * 7919) % len(vocab)] for i in range(5000)) + "\r\n\t  😀" + vocab[-1]
    ids = tok(text)["input_ids"]
    assert ids == model.tokenizer.encode(text) and tok.decode(ids) == text and len(tok) == 12_000
    assert "normalizer" not in tok.backend_tokenizer.to_str() or '"normalizer":null' in tok.backend_tokenizer.to_str()


@pytest.fixture(scope="module")
def trained_long_context(tmp_path_factory, prepared_data):
    """A real (short) training run with a context long enough for 200 new characters after a prompt."""
    out = tmp_path_factory.mktemp("trained256") / "out"
    return train_tiny(prepared_data, out, max_iters=40, eval_interval=20, n_layer=2, block_size=256, batch_size=4)


@pytest.mark.slow
def test_pipeline_greedy_text_equals_generate_text(trained_long_context):
    generate = pipeline("text-generation", model=str(trained_long_context))
    text = generate("ROMEO:", max_new_tokens=200, do_sample=False)[0]["generated_text"]
    expected = load_model(trained_long_context).generate_text("ROMEO:", 200, temperature=0)
    assert len(expected) == 206
    assert text == expected


TRANSFORMERS_JS = ROOT / ".npm-test" / "node_modules" / "@huggingface" / "transformers"
# transformers.js in Node, from the copy tests/install_test_tools.sh installs: its greedy text and the graph's I/O
GREEDY_JS = """
const path = require("path");
const [npmDir, modelsDir, name, prompt, n] = process.argv.slice(2);
const load = require("module").createRequire(path.join(npmDir, "node_modules", "here.js"));
(async () => {
  const { env, pipeline } = load("@huggingface/transformers");
  env.allowRemoteModels = false;  // the folder only: nothing from the network
  env.localModelPath = modelsDir;
  const generate = await pipeline("text-generation", name, { dtype: "fp32" });
  const out = await generate(prompt, { max_new_tokens: Number(n), do_sample: false });
  const session = generate.model.sessions.model;
  const io = { inputs: session.inputNames, outputs: session.outputNames };
  console.log(JSON.stringify({ text: out[0].generated_text, ...io }));
})().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
"""


@pytest.mark.slow
def test_transformers_js_pipeline_greedy_text_equals_generate_text(trained_long_context, tmp_path):
    """A new user's first try in JavaScript: transformers.js's pipeline("text-generation", folder) reads our
    tokenizer.json and onnx/model.onnx (Optimum's GPT-2 layout) and writes, greedily, our very text."""
    import shutil
    import subprocess

    require(shutil.which("node") is not None, "node missing: apt-get install nodejs")
    require(TRANSFORMERS_JS.is_dir(), "transformers.js not installed: run bash tests/install_test_tools.sh")
    from export_onnx import export_onnx, io_names

    folder = tmp_path / "models" / "tiny-gpt"
    shutil.copytree(trained_long_context, folder)
    model = load_model(folder)
    export_onnx(model, folder)
    (tmp_path / "greedy.cjs").write_text(GREEDY_JS)
    args = ["node", str(tmp_path / "greedy.cjs"), str(ROOT / ".npm-test"), str(tmp_path / "models"), "tiny-gpt"]
    proc = subprocess.run([*args, "ROMEO:", "200"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (out["inputs"], out["outputs"]) == io_names(model.config.n_layer)  # the names it expects of a GPT-2
    expected = model.generate_text("ROMEO:", 200, temperature=0)
    assert len(expected) == 206 and out["text"] == expected


def test_a_folder_of_the_older_layout_loads_and_converts(tmp_path, shakespeare_vocab, capsys):
    """Before this layout: our own config keys, weights in our orientation (saved by huggingface_hub's mixin)."""
    model = perturbed_model(shakespeare_vocab, bias=True)
    old = tmp_path / "old"
    old.mkdir()
    c = model.config
    legacy = {
        **{k: getattr(c, k) for k in c.__dataclass_fields__},
        "vocab": shakespeare_vocab,
        "train_info": {"step": 3},
    }
    (old / "config.json").write_text(json.dumps(legacy))
    save_model(model, str(old / "model.safetensors"))
    idx = torch.randint(0, c.vocab_size, (1, c.block_size))
    with pytest.warns(UserWarning, match=f"python hub.py convert {old}"):
        loaded = load_model(old)
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], model(idx)[0])

    convert_folder(old)
    assert "converted" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no more "older layout" warning
        converted = load_model(old)
    assert converted.train_info == {"step": 3}
    hf = GPT2LMHeadModel.from_pretrained(old).eval()
    with torch.no_grad():
        assert torch.equal(converted(idx)[0], model(idx)[0])
        assert (hf(idx).logits - model(idx)[0]).abs().max() < 1e-5


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.pop("n_embd"), "lacks n_embd"),
        (lambda c: c.pop("vocab"), "lacks vocab"),
        (lambda c: c.update(activation_function="relu"), "activation_function is 'relu'"),
        (lambda c: c.update(n_head=5), "must be divisible by n_head"),
    ],
)
def test_config_problems_name_the_file_and_the_key(tmp_path, tiny_model_dir, edit, message):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    edit(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message) as e:
        load_model(tmp_path)
    assert str(tmp_path / "config.json") in str(e.value)


def test_invalid_json_names_the_file(tmp_path, tiny_model_dir):
    (tmp_path / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes())
    (tmp_path / "config.json").write_text('{"model_type": "gpt2",')
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_model(tmp_path)


@pytest.mark.slow
def test_pipeline_stops_at_the_context_and_starts_an_empty_prompt(trained_long_context):
    """generation_config.json: max_length = the context, bos_token_id = our start character. An explicit
    max_new_tokens past the context still goes past it, and transformers then raises IndexError (wpe has
    n_positions rows): what the docs say."""
    folder = trained_long_context
    model = load_model(folder)
    block = model.config.block_size
    generate = pipeline("text-generation", model=str(folder), device="cpu")
    text = generate("ROMEO:", do_sample=False)[0]["generated_text"]
    assert len(text) == block  # the prompt and its continuation fill the context, then it stops
    assert text == model.generate_text("ROMEO:", block - len("ROMEO:"), temperature=0)
    empty = generate("", do_sample=False)[0]["generated_text"]
    start = model.tokenizer.start_text
    assert empty == model.generate_text(start, block - 1, temperature=0)
    with pytest.raises(IndexError):
        generate("ROMEO:", max_new_tokens=block, do_sample=False)
