"""timeline.jsonl: the same prompt sampled from the model at step 0 and at every evaluation of its training, so the
rows differ only by what the model had learned (from noise to the author's style). This module reads it.

    from timeline import format_timeline, load_timeline
    rows = load_timeline("out")          # a folder written by train_gpt2.py, or a Hub repo id ORG/NAME
    print(format_timeline(rows))         # what `python sample_gpt2.py --timeline out` prints

One JSON object a line, in step order: step, tokens (seen by then), seconds (of training by then), train_loss and
val_loss (the evaluation's estimates), prompt, text (the prompt and what the model wrote after it:
`model.generate_text(prompt, chars, temperature=temperature, seed=seed)` at that step), chars, temperature, seed.
run_log.Timeline writes it; the model card (model_card.py), the app (timeline_view.py), the static page
(static/timeline.js) and sample_gpt2.py read it. It ships to the Gradio Space with timeline_view.py.
"""

import json
import os
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

from model_files import REPO_ID

TIMELINE = "timeline.jsonl"
WHY_NONE = (
    "it was trained before train_gpt2.py wrote a timeline, or with --timeline-prompt ''. "
    "Train with train_gpt2.py (the default --timeline-prompt) to watch a model learn."
)


class NoTimeline(Exception):
    """The model has no timeline; the message says why."""


def parse_timeline(text: str) -> list[dict]:
    """The rows of a timeline.jsonl's text (NaN losses, as Python's json writes them, read back as nan)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_timeline(source) -> list[dict]:
    """The rows of the timeline of a model folder or a Hub model repo; NoTimeline says why there are none."""
    source = str(source)
    if os.path.isdir(source):
        path = Path(source) / TIMELINE
        if not path.is_file():
            raise NoTimeline(f"{source} has no {TIMELINE}: {WHY_NONE}")
        return check_rows(parse_timeline(path.read_text(encoding="utf-8")), source)
    if not REPO_ID.match(source) or source.startswith((".", "/", "~")):
        raise NoTimeline(f"no model folder at {source!r}, and it is not a Hub repo id (ORG/NAME)")
    try:
        path = hf_hub_download(source, TIMELINE)
    except LocalEntryNotFoundError:  # offline (HF_HUB_OFFLINE) and not in the cache: it may well exist
        raise NoTimeline(
            f"could not download {TIMELINE} from the Hub repo {source}: offline, and not in the cache"
        ) from None
    except EntryNotFoundError:
        raise NoTimeline(f"the Hub repo {source} has no {TIMELINE}: {WHY_NONE}") from None
    except (OSError, HfHubHTTPError) as e:  # offline and not cached, no network, a private repo
        raise NoTimeline(f"could not download {TIMELINE} from the Hub repo {source} ({type(e).__name__})") from None
    return check_rows(parse_timeline(Path(path).read_text(encoding="utf-8")), source)


def check_rows(rows: list[dict], source: str) -> list[dict]:
    if not rows:
        raise NoTimeline(f"the {TIMELINE} of {source} is empty: its run stopped before its first sample")
    keys = {"step", "text", "val_loss"}
    if not all(isinstance(r, dict) and keys <= r.keys() for r in rows):
        raise NoTimeline(f"the {TIMELINE} of {source} is not a timeline (each row needs step, text and val_loss)")
    return rows


def card_rows(rows: list[dict], n: int = 4) -> list[dict]:
    """n rows spread over the run: the first (step 0), n - 2 evenly in between, the last."""
    if len(rows) <= n:
        return list(rows)
    picks = sorted({round(i * (len(rows) - 1) / (n - 1)) for i in range(n)})
    return [rows[i] for i in picks]


def loss(x) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def row_heading(r: dict) -> str:
    """'step 400 · 819,200 tokens · val loss 1.8123 · train loss 1.7900' (what is recorded of it)."""
    tokens = f" · {r['tokens']:,} tokens" if isinstance(r.get("tokens"), int) else ""
    return f"step {r['step']:,}{tokens} · val loss {loss(r.get('val_loss'))} · train loss {loss(r.get('train_loss'))}"


def format_timeline(rows: list[dict]) -> str:
    """The timeline for a terminal: the settings once, then each step's losses and its text."""
    first = rows[0]
    lines = [
        f"{len(rows)} samples of the prompt {first.get('prompt', '')!r}, {first.get('chars')} characters, temperature "
        f"{first.get('temperature')}, seed {first.get('seed')}: the same settings at every step, so they differ "
        "only by what the model had learned"
    ]
    for r in rows:
        lines += ["", f"=== {row_heading(r)} ===", r["text"]]
    return "\n".join(lines)
