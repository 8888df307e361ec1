"""What the model does with a text, as plain numbers: GPT.explain's body (model_gpt2.py stays short).

    from model_gpt2 import load_model
    seen = load_model("out").explain("ROMEO:\nWhat light", top=5)
    seen["top"][-1]          # [{"char": " ", "prob": 0.41}, ...]: what it would write next
    seen["attention"][0][1]  # layer 1, head 2: a (T, T) list of rows, row i = how character i spread its attention

Everything comes from one pass of GPT.internals over the last window of the text, so the three views
(app.py's explain_view.py, the static page's explain.js, gpt_dev.ipynb) show the same numbers.
Pure torch: no file I/O, and no import of model_gpt2 (it imports this module).
"""

import torch

LENS_TOP = 3  # guesses kept per layer and position in the logit lens


def check_text(tokenizer, text, block_size: int) -> tuple[list[int], int, list[str]]:
    """The ids of the last window of `text` (at most block_size), the known characters cut before it, and
    the distinct unknown characters left out. ValueError, naming the problem and the fix, when nothing is left."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    if not text:
        raise ValueError("the text is empty: give the model at least one character to read")
    unknown = tokenizer.unknown_chars(text)
    ids = tokenizer.encode(text, errors="drop")
    if not ids:
        shown = " ".join(repr(ch) for ch in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ValueError(
            f"none of the text's characters are in the model's vocabulary ({shown}): "
            f"write with the characters it knows: {tokenizer.vocab!r}"
        )
    cut = max(0, len(ids) - block_size)
    return ids[cut:], cut, unknown


def ranked(probs: torch.Tensor, k: int, vocab: str) -> list:
    """probs (..., V) -> nested lists of the k likeliest as {"char", "prob"}, likeliest first."""
    p, i = probs.topk(min(k, probs.size(-1)), dim=-1)

    def rows(ps, ix):
        if ps and isinstance(ps[0], list):
            return [rows(a, b) for a, b in zip(ps, ix, strict=True)]
        return [{"char": vocab[j], "prob": q} for j, q in zip(ix, ps, strict=True)]

    return rows(p.tolist(), i.tolist())


@torch.inference_mode()
def explain(model, text: str, top: int = 5) -> dict:
    """See GPT.explain. `model` is a GPT with a tokenizer."""
    if model.tokenizer is None:
        raise ValueError("this model has no vocabulary: build it with GPT(config, vocab=...)")
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise ValueError(f"top must be an integer >= 1, got {top!r}")
    ids, cut, unknown = check_text(model.tokenizer, text, model.config.block_size)
    vocab = model.tokenizer.vocab
    was_training = model.training
    model.eval()
    try:
        idx = torch.tensor([ids], dtype=torch.long, device=model.lm_head.weight.device)
        logits, attention, lens_logits = (x[0].float().cpu() for x in model.internals(idx))
    finally:
        model.train(was_training)
    probs = logits.softmax(dim=-1)  # (T, V)
    real = probs[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()  # what really came next
    return {
        "chars": [vocab[i] for i in ids],
        "cut": cut,
        "unknown": unknown,
        "top": ranked(probs, top, vocab),
        "next": [vocab[i] for i in ids[1:]] + [None],
        "next_prob": real + [None],
        "attention": attention.tolist(),  # (n_layer, n_head, T, T)
        "lens": ranked(lens_logits.softmax(dim=-1), LENS_TOP, vocab),  # (n_layer, T, 3)
    }
