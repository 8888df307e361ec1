"""The model card: the README.md of a model folder and of its Hub repo (what the model is, how well it does, how it
learned, how to use it), rendered from config.json and the files beside it (loss.png, timeline.jsonl).

    from model_card import render_model_card
    card = render_model_card(json.loads(Path("out/config.json").read_text()), "out")

checkpoint.py writes it with each saved model; hub.py renders a fresh one (with a sample) for each push.
"""

import json
import math
import re
from dataclasses import fields
from pathlib import Path

from model_files import GPT2_NAMES
from model_gpt2 import GPTConfig
from timeline import TIMELINE, NoTimeline, card_rows, check_rows, parse_timeline

# the architecture in the card's table: GPTConfig's fields under their names in config.json
ARCH_KEYS = [GPT2_NAMES.get(f.name, f.name) for f in fields(GPTConfig)]
TINY_SHAKESPEARE_VOCAB = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# what Markdown (and the Hub's math) reads as markup inside a table cell: backslash, code, emphasis, links, HTML, entities,
# the cell's end, strikethrough, math
MARKDOWN_MARKUP = re.compile(r"([\\`*_\[\]<>&|~$])")


def is_tiny_shakespeare(config: dict) -> bool:
    info = config.get("train_info")
    name = info.get("dataset") if isinstance(info, dict) else None
    if name:  # data/prepare.py names it tiny_shakespeare only when the text's sha256 is the file's
        return name == "tiny_shakespeare"
    return config.get("vocab") == TINY_SHAKESPEARE_VOCAB


CARD_USAGE = """## Use with transformers

```python
from transformers import pipeline
generate = pipeline("text-generation", model="{repo}")
print(generate("ROMEO:", max_new_tokens={n_new}, do_sample=True, temperature=0.8)[0]["generated_text"])
```

`do_sample=False` gives the greedy text; `top_k` and `top_p` narrow the choice. A character outside the
vocabulary is left out of the prompt. The prompt and the new characters together must fit in the model's context
({n_positions} characters): transformers does not slide the window; `generate_text` below does.

## Use with the project's code

Needs `model_gpt2.py` from the project (and torch, huggingface_hub, safetensors).

```python
from model_gpt2 import load_model

model = load_model("{repo}")  # or the local folder written by train_gpt2.py
print(model.generate_text("ROMEO:", max_new_tokens=300, temperature=0.8, seed=0))
```

```bash
python sample_gpt2.py --model {repo} --prompt "ROMEO:"   # streams to the terminal
python app.py --model {repo}                             # the Gradio app, locally
```
"""
CARD_TRAIN_KEYS = (
    "optimizer",
    "batch_size",
    "grad_accum_steps",
    "learning_rate",
    "muon_lr",
    "min_lr",
    "schedule",
    "warmup_iters",
    "max_iters",
    "weight_decay",
    "beta1",
    "beta2",
    "grad_clip",
    "eval_interval",
    "eval_iters",
    "seed",
)


def render_model_card(config: dict, out_dir: Path, sample: str | None = None, repo_id: str | None = None) -> str:
    """The README.md of a model folder: what it is, how well it does, how to use it.

    `config` is what config.json holds (model.hub_config()); loss.png and four rows of timeline.jsonl are shown
    when out_dir has them.
    """
    info = config.get("train_info") if isinstance(config.get("train_info"), dict) else {}
    shakespeare = is_tiny_shakespeare(config)
    n_params, vocab_size = config["num_params"], config["vocab_size"]
    curve = "\n![loss curve](loss.png)\n" if (Path(out_dir) / "loss.png").is_file() else ""
    fence = code_fence(sample or "")
    sample_block = (
        f"\n## Sample\n\nPrompt: a newline; temperature 0.8, seed 0, 300 characters, as generated:\n\n"
        f"{fence}text\n{sample}\n{fence}\n"
        if sample
        else ""
    )
    dataset = (
        "[tiny Shakespeare](https://huggingface.co/datasets/karpathy/tiny_shakespeare) (Karpathy's char-rnn corpus, "
        "1.1M characters of Shakespeare's plays); the first 90% trains, the last 10% validates."
        if shakespeare
        else f"{info.get('dataset', 'a text')} prepared with data/prepare.py (first 90% trains, last 10% validates)."
    )
    return f"""{card_front_matter(shakespeare)}
# Character-level GPT-2 ({n_params / 1e6:.2f}M parameters)

A GPT-2 that reads and writes one character at a time ({config["n_layer"]} layers, {config["n_head"]} heads,
{config["n_embd"]} dimensions, a context of {config["n_positions"]} characters), trained from scratch with
`train_gpt2.py` from the "Let's build GPT" course project. The repo is a standard transformers GPT-2: its tokenizer
(tokenizer.json) has one token per character of its {vocab_size}-character vocabulary, also listed in config.json.

## Results

| metric | value |
|---|---|
{card_results(info)}

The loss is the cross-entropy in nats per character: the average of -ln(probability the model gave the true next
character). Guessing uniformly among the {vocab_size} characters scores ln({vocab_size}) = {math.log(vocab_size):.2f};
lower is better, and exp(loss) is how many characters the model is, on average, still choosing between.
{curve}{card_timeline(out_dir)}{sample_block}
{CARD_USAGE.format(repo=repo_id or "ORG/NAME", n_new=min(300, config["n_positions"] - 8), n_positions=config["n_positions"])}
## Configuration

| setting | value |
|---|---|
{card_settings(config, info.get("train_config") or {})}

## Dataset

{dataset}

## License

MIT.
"""


def code_fence(text: str) -> str:
    """A Markdown code fence that `text` cannot close: longer than any run of backticks in it (3 at least)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def finite(x) -> int | float | None:
    """x if it is a finite number, else None: training facts come from a config.json that anyone may have written."""
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return x if ok else None


def card_front_matter(shakespeare: bool) -> str:
    tags = ["gpt2", "character-level", "text-generation"] + (["tiny-shakespeare"] if shakespeare else [])
    return "\n".join(
        ["---", "library_name: transformers", "license: mit", "pipeline_tag: text-generation", "tags:"]
        + [f"- {t}" for t in tags]
        + (["datasets:", "- karpathy/tiny_shakespeare"] if shakespeare else [])
        + ["---"]
    )


def card_results(info: dict) -> str:
    """The rows of the card's results table; the validation loss says what it was measured on. A fact that is
    not what it should be (a number that is not a finite number, a name that is not text) is "not recorded"."""
    tc = info.get("train_config") if isinstance(info.get("train_config"), dict) else {}

    def number(key, spec):
        x = finite(info.get(key))
        return "not recorded" if x is None else format(x, spec)

    def text(key):
        x = info.get(key)
        return x.replace("|", "/").replace("\n", " ") if isinstance(x, str) and x.strip() else "not recorded"

    if finite(info.get("val_loss_full")) is not None:
        val = f"| validation loss (whole validation split) | {info['val_loss_full']:.4f} |"
    elif finite(info.get("val_loss")) is not None:
        iters = finite(tc.get("eval_iters"))
        batches = f"{iters} fixed batches" if iters is not None else "fixed batches"
        val = f"| validation loss (estimate on {batches} of the validation split) | {info['val_loss']:.4f} |"
    else:
        val = "| validation loss | not measured |"
    return "\n".join(
        [
            val,
            f"| train loss (estimate at the saved step) | {number('train_loss', '.4f')} |",
            f"| steps | {number('step', ',')} |",
            f"| tokens seen | {number('tokens_seen', ',')} |",
            f"| hardware | {text('hardware')} |",
            f"| precision | {text('dtype')} |",
        ]
    )


def card_settings(config: dict, train_config: dict) -> str:
    """The architecture, the parameter count and the training settings, one table row each."""
    settings = [(k, config[k]) for k in ARCH_KEYS] + [("parameters", f"{config['num_params']:,}")]
    if isinstance(train_config, dict):
        settings += [(k, train_config[k]) for k in CARD_TRAIN_KEYS if k in train_config]
    return "\n".join(f"| {k} | {v} |" for k, v in settings)


def card_timeline(out_dir) -> str:
    """'How it learned': four rows of timeline.jsonl (step 0, two in between, the last) with their val loss, as a
    table; nothing when out_dir has no timeline (or one that does not read as one: anyone may have written it)."""
    path = Path(out_dir) / TIMELINE
    try:
        rows = check_rows(parse_timeline(path.read_text(encoding="utf-8")), str(out_dir))
    except (OSError, ValueError, NoTimeline):
        return ""
    rows = [r for r in rows if isinstance(r["text"], str) and isinstance(r["step"], int)]
    if not rows:
        return ""
    first = rows[0]
    prompt = table_cell(json.dumps(first.get("prompt", "")))  # quoted, its new lines as \n, no markup
    settings = f"{first.get('chars')} characters, temperature {first.get('temperature')}, seed {first.get('seed')}"
    shown = "Four of them" if len(rows) > 4 else "All of them"
    lines = [
        "\n## How it learned\n",
        f"The prompt {prompt} sampled from the model at step 0 and at each evaluation of its training ({len(rows)}"
        f" samples; {table_cell(settings)}): they differ only by what it had learned. {shown}:\n",
        "| step | tokens seen | val loss | sample |",
        "|---:|---:|---:|---|",
    ]
    for r in card_rows(rows):
        tokens, val = r.get("tokens"), finite(r.get("val_loss"))
        tokens = f"{tokens:,}" if isinstance(tokens, int) and not isinstance(tokens, bool) else "-"
        lines.append(f"| {r['step']:,} | {tokens} | {'-' if val is None else f'{val:.4f}'} | {table_cell(r['text'])} |")
    lines.append(f"\nEvery sample is in [{TIMELINE}]({TIMELINE}), one JSON object a line.\n")
    return "\n".join(lines)


def table_cell(text: str) -> str:
    """text as one Markdown table cell that shows it as it is: each markup character escaped with a backslash (so
    none starts emphasis, code, a link or HTML, or ends the cell), each line break a <br>."""
    return MARKDOWN_MARKUP.sub(r"\\\1", text).replace("\r", "").replace("\n", "<br>")
