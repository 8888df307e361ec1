"""Generation speed: model.stream() with its KV cache against nanoGPT's full recompute, and what one cached
token costs beside the floor under it (reading every weight once), with PyTorch and with ONNX Runtime (the app's
two decode backends, decoders.py). bench.py and benchmarks/browser.py use these.
"""

import statistics

import torch

from benchmarks.common import SHAKESPEARE_CHAR, median_seconds, timed
from benchmarks.nanogpt import nanogpt_generate
from model_gpt2 import GPT
from train_config import PRESETS, config_from_preset, model_config


@torch.inference_mode()
def decode_costs(model: GPT, device) -> dict:
    """What one cached token costs against recomputing a full window, and the floor under it.

    The floor: the model's matrix-vector products alone (every weight read once), with nothing
    else of the decode step around them. On a CPU that is memory bandwidth; the rest of the step
    is ~100 small ops (LayerNorm, attention, GELU, adds, cache writes) and their dispatch.
    """
    c = model.config
    cache = model._new_cache(1)
    model(torch.zeros((1, c.block_size // 2), dtype=torch.long, device=device), kv_cache=cache)  # half-full cache
    tok = torch.zeros(1, dtype=torch.long, device=device)

    def step():
        model.decode_step(tok, cache)
        cache.pos -= 1  # the same position again: a steady context length

    mats = [
        (m.weight, torch.randn(m.in_features, device=device)) for m in model.modules() if isinstance(m, torch.nn.Linear)
    ]
    weights_mb = sum(w.numel() * w.element_size() for w, _ in mats) / 1e6
    floor = median_seconds(device, lambda: [torch.mv(w, x) for w, x in mats], reps=50)
    window = torch.zeros((1, c.block_size), dtype=torch.long, device=device)
    return {
        "decode_step_ms": round(1000 * median_seconds(device, step, reps=50), 3),
        "matvec_floor_ms": round(1000 * floor, 3),
        "weights_mb": round(weights_mb, 1),
        "weight_read_gb_per_s": round(weights_mb / 1000 / floor, 1),
        "full_window_ms": round(1000 * median_seconds(device, lambda: model(window), reps=5), 2),
    }


def decoder_step_ms(model: GPT, rows: int = 16) -> dict:
    """The app's decode loop, one step: ms for one request alone and for `rows` at once, with each backend in turns
    (best of 3, as app.py --backend auto times them), on a CPU. ONNX Runtime's figures need onnx and onnxruntime."""
    import tempfile
    from pathlib import Path

    from decoders import OnnxDecoder, TorchDecoder, time_decoder
    from export_onnx import export_standard

    decoders = {"torch": TorchDecoder(model, rows)}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            graph = export_standard(model, Path(tmp) / "model.onnx")
            decoders["onnx"] = OnnxDecoder(graph, model, rows, torch.get_num_threads())
        except ImportError:  # no onnx or onnxruntime here: PyTorch's figures only
            pass
        best = {}
        for _ in range(3):
            for name, decoder in decoders.items():
                (one, many), _ = time_decoder(decoder, model.config, rows, steps=20)
                old = best.get(name, (float("inf"), float("inf")))
                best[name] = (min(one, old[0]), min(many, old[1]))
    return {
        f"{name}_decode_ms": {"1_row": round(one, 3), f"{rows}_rows": round(many, 3)}
        for name, (one, many) in best.items()
    }


def bench_generation(device, vocab, quick) -> dict:
    """KV-cached model.stream() against nanoGPT's full recompute, on random weights (speed does not depend on them)."""
    cpu_arch = {k: PRESETS["cpu"][k] for k in SHAKESPEARE_CHAR}
    out = {}
    for name, arch in (("shakespeare-char (10.7M)", SHAKESPEARE_CHAR), ("cpu preset", cpu_arch)):
        torch.manual_seed(0)
        model = GPT(model_config(config_from_preset(None, **arch), len(vocab)), vocab=vocab).to(device).eval()
        prompt = model.encode_prompt("ROMEO:")
        first = [timed(device, next, model.stream(prompt, 10, seed=0)) for _ in range(5)]  # call -> first token
        res = {
            "params": model.num_params(),
            "block_size": arch["block_size"],
            "prompt_len": prompt.size(1),
            "first_token_ms": round(1000 * statistics.median(first), 2),
            **decode_costs(model, device),
            **(decoder_step_ms(model) if str(device) == "cpu" else {}),
        }
        for n in (100,) if quick else (100, 500):
            cached = timed(device, list, model.stream(prompt, n, seed=0))
            uncached = timed(device, nanogpt_generate, model, prompt, n, torch.Generator(device).manual_seed(0))
            res[f"{n}_tokens"] = {
                "cached_seconds": round(cached, 3),
                "uncached_seconds": round(uncached, 2),
                "cached_tokens_per_sec": round(n / cached, 1),
                "uncached_tokens_per_sec": round(n / uncached, 1),
                "speedup": round(uncached / cached, 1),
            }
        out[name] = res
    return out
