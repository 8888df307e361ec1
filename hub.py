"""Share a trained model: its model card, pushing it to the Hugging Face Hub, deploying the Space.

(push_model and deploy_space are being written; render_model_card is used by train_gpt2.py.)
"""

import json
from pathlib import Path


def render_model_card(config: dict, out_dir: Path) -> str:
    """The README.md of a model folder: what it is, how well it does, how to use it."""
    info = config.get("train_info") or {}
    val = info.get("val_loss_full", info.get("val_loss"))
    arch = {k: config[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout", "bias")}
    rows = "\n".join(f"| {k} | {v} |" for k, v in arch.items())
    return f"""---
library_name: char-gpt
license: mit
pipeline_tag: text-generation
tags: [gpt2, character-level, text-generation, tiny-shakespeare]
---
# Character-level GPT-2

Validation loss: {val if val is not None else "not measured"} (nats per character, whole validation split).

| field | value |
|---|---|
{rows}

```json
{json.dumps(info, indent=1)}
```
"""
