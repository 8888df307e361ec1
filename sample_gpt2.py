"""Sample from a trained character-level GPT-2, printing the text as it is generated.

    python sample_gpt2.py --model out --prompt "ROMEO:" --max-new-tokens 500
    python sample_gpt2.py --model ORG/NAME --temperature 0.8 --top-k 40 --seed 1 --num-samples 3
    python sample_gpt2.py --timeline out                     # how it learned: its sample at each evaluation
    python sample_gpt2.py --help                             # every flag, with its default

--model takes a folder written by train_gpt2.py or a Hugging Face Hub repo id. Each sample
streams to stdout character by character, one after another (several are each followed by a
line of dashes), so Ctrl-C keeps everything printed so far. The same --seed gives the same
text, and the first of several samples is the text --num-samples 1 gives. --timeline prints the model's
timeline.jsonl instead (the same prompt sampled at step 0 and at each evaluation of its training: timeline.py).
"""

import argparse
import sys
from dataclasses import dataclass

import torch

from cli import add_flags, arg
from machine import pick_device
from model_gpt2 import check_sampling, load_model
from timeline import NoTimeline, format_timeline, load_timeline


@dataclass
class SampleConfig:
    """Every field is a command-line flag: --max-new-tokens, --top-k, ..."""

    model: str = arg("out", "folder written by train_gpt2.py, or a Hub repo id ORG/NAME")
    prompt: str = arg("", "text the samples continue (empty: a new line, or a space if the text had none)")
    max_new_tokens: int = arg(500, "characters to generate per sample")
    temperature: float = arg(0.8, "0 = greedy (always the most likely character)")
    top_k: int = arg(0, "keep only the k most likely characters (0 = all)")
    top_p: float = arg(1.0, "keep the fewest characters whose probability reaches p (1 = all)")
    seed: int = arg(1337, "random seed: the same seed gives the same text")
    num_samples: int = arg(1, "samples to generate, one after another")
    device: str = arg("auto", "auto = cuda > mps > cpu")


def parse_args(argv=None) -> tuple[SampleConfig, str | None]:
    """The sampling settings, and the model whose timeline to print instead (None: sample)."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_flags(ap, SampleConfig)
    ap.add_argument(
        "--timeline",
        nargs="?",
        const="",
        metavar="MODEL",
        help="print the timeline of MODEL (default: --model), a folder or Hub repo, instead of sampling",
    )
    args = vars(ap.parse_args(argv))
    timeline = args.pop("timeline")
    return SampleConfig(**args), (timeline or args["model"]) if timeline is not None else None


def sample(cfg: SampleConfig) -> None:
    """Print cfg.num_samples continuations of cfg.prompt; raise ValueError/OSError on bad input."""
    check_sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p)  # before the slow part
    if cfg.num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {cfg.num_samples}")
    device = pick_device(cfg.device)
    model = load_model(cfg.model, device)
    print(f"{cfg.model}: {model.num_params() / 1e6:.2f}M parameters on {device}", file=sys.stderr)
    prompt = cfg.prompt or model.tokenizer.start_text
    model.tokenizer.encode(prompt)  # the tokenizer names any character outside the vocabulary, before any output
    # one stream of random numbers through all the samples, so the seed fixes every one of them
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    sampling = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, generator=generator)
    for _ in range(cfg.num_samples):
        print(prompt, end="", flush=True)
        for ch, _prob in model.stream_text(prompt, cfg.max_new_tokens, **sampling):
            print(ch, end="", flush=True)
        print()
        if cfg.num_samples > 1:
            print("---------------", flush=True)


def main(argv=None) -> int:
    cfg, timeline_of = parse_args(argv)
    try:
        if timeline_of is not None:
            print(format_timeline(load_timeline(timeline_of)))
        else:
            sample(cfg)
    except (ValueError, OSError, NoTimeline) as e:  # bad flag, missing folder or repo, unknown characters
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the text printed so far stays: each character was flushed as it came
        print(flush=True)
        print("interrupted: the text above is everything generated so far", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
