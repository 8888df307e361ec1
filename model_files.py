"""A model folder's files: the Hugging Face GPT-2 layout they follow, and what to say when one is damaged.

model_gpt2.py's save_pretrained and from_pretrained write and read a folder through these: config.json
in transformers' GPT-2 names, model.safetensors in GPT-2's orientation (its Conv1D weights transposed),
the tokenizer files, and the folder found locally or downloaded from the Hub. checkpoint.py and
train_gpt2.py use the damaged-file half (which file, what is still good, what to do). It ships to the
Gradio Space with model_gpt2.py; like it, it needs only torch, huggingface_hub and safetensors
(tokenizers when saving), and does no work at import.
"""

import errno
import json
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn as nn
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

Config = TypeVar("Config")  # model_gpt2's GPTConfig, which imports this module (so it is passed in, not imported)

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # a Hub repo id: ORG/NAME

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


def to_gpt2_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
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


def from_gpt2_state_dict(tensors: dict, config, source) -> dict[str, torch.Tensor]:
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


def config_from_json(path, config_class: type[Config]) -> tuple[Config, str, dict, bool]:
    """(architecture, vocabulary, train_info, is_legacy_layout) from a config.json, strictly: every
    architecture field must be there; a bad file or value is named with what to do. config_class is
    model_gpt2's GPTConfig, passed in (model_gpt2 imports this module, not the other way round)."""
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
    keys = {f.name: f.name if legacy else GPT2_NAMES.get(f.name, f.name) for f in fields(config_class)}
    missing = [k for k in [*keys.values(), "vocab"] if d.get(k) is None]
    if missing:
        raise ValueError(
            f"{path} is not a model saved by model_gpt2: it lacks {', '.join(missing)} (a character-level GPT-2's "
            "config.json names its whole architecture and its vocabulary; no field is guessed)."
        )
    try:
        config = config_class(**{name: d[key] for name, key in keys.items()})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e
    if not isinstance(d["vocab"], str) or len(d["vocab"]) != config.vocab_size:
        raise ValueError(f"{path}: vocab must be a string of vocab_size ({config.vocab_size}) characters")
    return config, d["vocab"], dict(d.get("train_info") or {}), legacy


def model_files_in(name: str, revision: str | None) -> tuple[str, str]:
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
    """tokenizer.json and tokenizer_config.json for transformers' AutoTokenizer and transformers.js: one token
    per character with CharTokenizer's ids; decoding joins characters with nothing between them.

    No normalizer: every reader must accept the file (a character class of the whole vocabulary was Oniguruma-only
    syntax, which JavaScript rejects and which failed past 10,000 characters), and the pre-tokenizer's one pattern,
    "any single character", is the same in every regex engine. So a character outside the vocabulary becomes the
    unknown token (" " when the vocabulary has a space, else its first character) in transformers and
    transformers.js, where the app and the sampler leave it out; no token is added, so vocab_size stays the model's."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    unk = " " if " " in vocab else vocab[0]
    tok = Tokenizer(models.WordLevel({ch: i for i, ch in enumerate(vocab)}, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    tok.decoder = decoders.Fuse()
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # not GPT2Tokenizer: no byte-level BPE, no <|endoftext|>
        "clean_up_tokenization_spaces": False,
        "model_max_length": block_size,
    }
    return tok.to_str(pretty=True), config


# ---------------------------------------------------------------------------- damaged files


class DamagedFileError(ValueError):
    """A weights or state file that cannot be read (cut short, overwritten); the message says what to do."""


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


# what save_pretrained writes besides config.json (written last: it says which layout the weights are in)
SAVED_FILES = ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")

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


WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def cannot_write(error: OSError) -> str:
    """One sentence for a write that failed because of where it went, not what was written: a full disk
    (or quota, or file-size limit), or a read-only folder or someone else's."""
    where = error.filename or "a file"
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "the disk is full (or a quota or file-size limit was reached): free some space and run it again"
    else:
        fix = "the folder is read-only or not yours: choose a folder you can write to"
    return f"cannot write {where} ({error.strerror}): {fix}"


def save_safetensors(tensors: dict, path, metadata: dict) -> None:
    """safetensors' save_file, raising the OSError a failed write is (safetensors reports a full disk
    as a SafetensorError whose text ends with "(os error 28)")."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        code = re.search(r"\(os error (\d+)\)", str(e))
        if not code:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from e
