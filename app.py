"""Serve a trained character-level GPT-2 in the browser: a Gradio app that streams its text.

    python app.py --model out --port 7860         # a folder written by train_gpt2.py
    python app.py --model ORG/NAME                # a model on the Hugging Face Hub
    python app.py --model out --slots 16 --max-waiting 32   # 16 texts at once, 32 more in line (the defaults)
    python app.py --model out --threads 1         # the decode loop on one core (default: every core)
    python app.py --model out --backend onnx      # its products on ONNX Runtime (default auto: the faster here)

On a Hugging Face Space this file runs unchanged: the Space variable GPT_MODEL names the model
repo and the app listens on 0.0.0.0:7860. The event is also an API:

    from gradio_client import Client
    Client("http://127.0.0.1:7860").predict("ROMEO:", 200, 0.7, 0, api_name="/generate")

Inputs left out of an API call take the defaults the page shows (100 characters, temperature 0.7...).
"""

import argparse
import asyncio
import contextlib
import errno
import importlib.util
import math
import os
import socket
import sys
import tempfile
from pathlib import Path

import gradio as gr
import torch

from decoders import BACKENDS, ORT_VERSION
from engine import Engine, EngineBusy, EngineStopped
from explain_view import add_explain_view
from machine import ModelTooLargeError, check_fits, hardware_name
from model_gpt2 import GPT, load_model
from timeline_view import add_timeline_view

MAX_SEED = 2**32 - 1
MAX_PROMPT = 10_000  # characters kept of a longer prompt: the model reads only its last block_size anyway
MAX_TOKENS = 2000  # enough for a page of text
SLOTS = 16  # texts written at once, in one batched decode loop: 16 cost little more than 1 on a CPU
MAX_WAITING = 32  # more requests wait in line; past that they are told the server is busy
OUTPUT_LABEL = "Prompt + generated text"
STREAM_EVERY = 0.05  # seconds between a text's streamed updates: smooth to the eye, ~20 a second
# ...with a ceiling on the server's updates a second in all: each one costs the server and the client a
# millisecond or two of CPU, so with 16 texts running each gets ~5 a second, not 20 (bench.py --serving)
UPDATES_PER_SECOND = 80
# Gradio runs at most `max_threads` events at once (40 unless told) and keeps the others in a queue of its
# own that shows them no place in line. So it is told to run every request the engine can hold (`slots`
# writing, `max_waiting` in the engine's line, which says where each one is) plus this many more, which
# reach the engine only to be told at once that the server is busy.
REFUSING = 32
EXAMPLES = ["ROMEO:", "First Citizen:\n", "To be, or not", "KING RICHARD III:\nNow is the"]
TRAIN_HINT = "python data/prepare.py && python train_gpt2.py --preset cpu --out-dir out"

# how sure the model was of each character it wrote (the probability it gave it): label -> colour
COLORS = {"p>0.8": "#16a34a", "0.5-0.8": "#a3e635", "0.2-0.5": "#facc15", "<0.2": "#f87171"}
# the coloured characters read as running text, not as separate padded chips
CSS = "#colored .token { margin: 0 !important; padding: 0 !important; border-radius: 0 !important; }"


def bucket(prob: float) -> str:
    return "p>0.8" if prob > 0.8 else "0.5-0.8" if prob > 0.5 else "0.2-0.5" if prob > 0.2 else "<0.2"


def reject(message: str) -> gr.Error:
    """The error an API caller or the page sees; the server log gets this one line, not a traceback."""
    print(f"rejected a request: {message}", file=sys.stderr, flush=True)
    return gr.Error(message, print_exception=False)


def as_int(value, name: str, low: int | None = None, high: int | None = None, allow_none: bool = False):
    """An integer from a UI/API value (50, 50.0 or "50"), or gr.Error stating the valid range."""
    valid = f"an integer from {low} to {high}" if high is not None else "an integer"
    valid += " or empty" if allow_none else ""
    if value is None or value == "":
        if allow_none:
            return None
        raise reject(f"{name} must be {valid}, got nothing")
    if isinstance(value, bool):  # JSON true is not 1
        raise reject(f"{name} must be {valid}, got {value!r}")
    try:
        number = value if isinstance(value, int) else float(value)  # an int stays exact (large seeds)
        ok = number == int(number) and (low is None or number >= low) and (high is None or number <= high)
    except (TypeError, ValueError, OverflowError):  # "abc", nan, inf
        ok = False
    if not ok:
        raise reject(f"{name} must be {valid}, got {value!r}")
    return int(number)


def as_float(value, name: str, valid: str, ok) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan  # JSON true is not 1.0
    except (TypeError, ValueError):
        number = math.nan
    if not ok(number):  # nan fails every range
        raise reject(f"{name} must be {valid}, got {value!r}")
    return number


class Blocks(gr.Blocks):
    """gr.Blocks whose API calls may leave out trailing inputs: they take the components' defaults
    (those the API page shows). Gradio would refuse them with an error the caller never sees.
    launch() takes `launch_defaults` for what its caller leaves out (build_demo sets them)."""

    launch_defaults: dict = {}

    def validate_inputs(self, block_fn, inputs: list):
        inputs.extend(block.value for block in block_fn.inputs[len(inputs) :])  # in place: the call uses this list
        super().validate_inputs(block_fn, inputs)

    def launch(self, *args, **kwargs):
        return super().launch(*args, **(self.launch_defaults | kwargs))


def count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def finite(x) -> int | float | None:
    """x if it is a finite number, else None: a model's training facts come from its config.json, which
    anyone may have written ("lots" of tokens, NaN)."""
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return x if ok else None


def model_facts(model: GPT, source: str) -> str:
    """The header: what this model is, read from the model itself (facts that are not numbers: "not recorded")."""
    c, info = model.config, model.train_info
    val = finite(info.get("val_loss_full"))
    val = val if val is not None else finite(info.get("val_loss"))
    tokens = finite(info.get("tokens_seen"))
    val_text = f"{val:.3f}" if val is not None else "not recorded"
    tokens_text = count(tokens) if tokens is not None and tokens > 0 else "not recorded"
    return (
        "# Character-level GPT-2\n"
        f"**{count(model.num_params())} parameters** · {c.n_layer} layers · {c.n_head} heads · "
        f"{c.n_embd} dim · context {c.block_size} characters · vocabulary {c.vocab_size} characters  \n"
        f"Validation loss {val_text} (nats per character) · {tokens_text} tokens trained · model `{source}`"
    )


def add_colored(colored: list, ch: str, label: str):
    """Append a character to the coloured view, merged into the last run when its label is the same:
    the view holds one entry per run of equally sure characters, not one per character."""
    if colored and colored[-1][1] == label:
        colored[-1] = (colored[-1][0] + ch, label)
    else:
        colored.append((ch, label))


def make_generate(model: GPT, engine: Engine):
    """The event function for this model: an async generator that yields (text so far, coloured text).

    Every request goes through `engine`, the model's one decode loop; this function only waits for
    its characters and forwards them. It runs on the server's event loop and holds no thread."""
    tok = model.tokenizer

    async def generate(prompt: str, max_tokens=100, temperature=0.7, top_n=None, top_p=1.0, seed=None):
        """Continue `prompt` with `max_tokens` characters; yields the prompt + text as it grows."""
        n = as_int(max_tokens, "max tokens", 1, MAX_TOKENS)
        temperature = as_float(temperature, "temperature", "a number from 0 to 1 (0 = greedy)", lambda t: 0 <= t <= 1)
        top_n = as_int(top_n, "top N", allow_none=True)  # <= 0 means all characters
        top_p = as_float(1.0 if top_p in (None, "") else top_p, "top-p", "in (0, 1]", lambda p: 0 < p <= 1)
        seed = as_int(seed, "seed", 0, MAX_SEED, allow_none=True)

        prompt = str(prompt or "")
        if len(prompt) > MAX_PROMPT:  # a pasted book would only slow every streamed update down
            gr.Warning(
                f"The prompt has {len(prompt):,} characters: only its last {MAX_PROMPT:,} are kept "
                f"(the model reads the last {model.config.block_size})."
            )
            prompt = prompt[-MAX_PROMPT:]
        unknown = tok.unknown_chars(prompt)
        if unknown:
            gr.Warning(f"Not in the model's vocabulary, left out: {' '.join(repr(ch) for ch in unknown)}")
        ids = model.encode_prompt(prompt, errors="drop")[0].tolist()  # the model's rules: unknown out, empty = a space
        text = tok.decode(ids)  # what the model really sees

        loop, wake = asyncio.get_running_loop(), asyncio.Event()
        try:
            req = engine.submit(
                ids,
                n,
                temperature=temperature,
                top_k=top_n if top_n and top_n > 0 else None,
                top_p=top_p,
                seed=seed,
                notify=lambda: loop.call_soon_threadsafe(wake.set),  # called from the engine's thread
            )
        except EngineBusy:
            raise reject(
                f"The server is busy: {engine.slots} texts are being written and {engine.max_waiting} more "
                "wait in line. Try again in a few seconds."
            ) from None
        except EngineStopped as e:
            raise reject(f"The text generator is not running ({e}).") from None
        try:
            async for update in stream_request(engine, tok, req, text, wake):
                yield update
        finally:  # finished, failed, or the client went away (Gradio closes this generator): free the slot
            req.cancel()

    return generate


async def stream_request(engine: Engine, tok, req, text: str, wake: asyncio.Event):
    """Yield (text so far, coloured text) as the engine writes req's characters; while req waits for a
    slot, the output's label says where it is in line."""
    colored, sent, ahead = [(text, None)], 0, None
    while not req.done.is_set() or sent < len(req.tokens):
        if not req.tokens:  # not started: say where in the line it waits
            now = engine.position(req)
            if now != ahead and (now or ahead):
                ahead = now
                label = f"Waiting for a free slot: {now} in line" if now else OUTPUT_LABEL
                yield gr.Textbox(value=text, label=label), colored
        # the first character at once (the engine wakes us), then one update per STREAM_EVERY, fewer
        # when many texts run (UPDATES_PER_SECOND): a message per character would flood the browser
        every = max(STREAM_EVERY, engine.stats()["running"] / UPDATES_PER_SECOND)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(wake.wait(), every)
        wake.clear()
        end = len(req.tokens)
        if end > sent:
            chars = tok.decode(req.tokens[sent:end])
            for ch, prob in zip(chars, req.probs[sent:end]):
                add_colored(colored, ch, bucket(prob))
            text, sent = text + chars, end
            if ahead:  # it was waiting: put the label back
                ahead = 0
                yield gr.Textbox(value=text, label=OUTPUT_LABEL), colored
            elif not req.done.is_set() or sent < len(req.tokens):
                yield text, colored
    if req.error is not None:
        raise gr.Error(f"Generation failed: {req.error}")
    yield text, colored


def build_demo(
    model: GPT,
    source: str = "",
    slots: int = SLOTS,
    max_waiting: int = MAX_WAITING,
    threads: int | None = None,
    backend: str = "auto",
    onnx_file=None,
    no_graph: str = "",
) -> gr.Blocks:
    """The page around `model` (`source` names it in the header). Its launch() brings the CSS and the queue settings.

    Generation runs in one Engine for the model, in a process of its own with `threads` threads (default: every
    core PyTorch uses here): `slots` texts at once, `max_waiting` more in line, its products on `backend`
    (engine.Engine: onnx_file is the model's standard ONNX graph, or None and no_graph says why)."""
    engine = Engine(
        model,
        slots=slots,
        max_waiting=max_waiting,
        threads=threads,
        backend=backend,
        onnx_file=onnx_file,
        no_graph=no_graph,
    )
    with Blocks(title="Character-level GPT-2") as demo:
        gr.Markdown(model_facts(model, source))
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(
                    label="Prompt",
                    lines=3,
                    placeholder="Start the text; Shift+Enter generates. Empty = a space; characters the model never saw are left out.",
                    elem_id="prompt",
                )
                with gr.Row():
                    max_tokens = gr.Number(
                        100, label="Max tokens", precision=0, minimum=1, maximum=MAX_TOKENS, elem_id="max_tokens"
                    )
                    top_n = gr.Number(
                        0, label="Top N", precision=0, info="empty or 0 = all characters", elem_id="top_n"
                    )
                temperature = gr.Slider(
                    0, 1, 0.7, step=0.05, label="Temperature", info="0 = always the likeliest", elem_id="temperature"
                )
                with gr.Accordion("More options", open=False):
                    top_p = gr.Slider(
                        0.01,
                        1,
                        1.0,
                        step=0.01,
                        label="Top-p",
                        info="sample from the likeliest characters holding this much probability",
                        elem_id="top_p",
                    )
                    seed = gr.Number(
                        None,
                        label="Seed",
                        precision=0,
                        info="empty = random; a number repeats the text",
                        elem_id="seed",
                    )
                btn = gr.Button("Generate", variant="primary")
                gr.Examples([[p] for p in EXAMPLES], inputs=[prompt])
            with gr.Column(scale=2):
                output = gr.Textbox(label=OUTPUT_LABEL, lines=12, buttons=["copy"], elem_id="output")
                colored = gr.HighlightedText(
                    label="How sure the model was of each character",
                    color_map=COLORS,
                    show_legend=True,
                    show_inline_category=False,
                    combine_adjacent=True,
                    elem_id="colored",
                )
        gr.on(
            [btn.click, prompt.submit],
            make_generate(model, engine),
            inputs=[prompt, max_tokens, temperature, top_n, top_p, seed],
            outputs=[output, colored],
            api_name="generate",
            # no limit at Gradio's level: every request reaches the engine at once, which runs `slots` of
            # them together, keeps the rest in line (saying where) and refuses the ones past its line
            concurrency_limit=None,
            # raw values reach generate(), which checks them and names the valid range itself
            # (the components' own checks would say only "Value 1.5 is greater than maximum value 1")
            preprocess=False,
        )
        add_explain_view(model, output)  # "Inside the model" for the text, and the /explain API
        add_timeline_view(source)  # "How it learned": its sample at each evaluation of its training
    # Gradio's own queue only hands requests over (see REFUSING): the engine's line is the one with a limit;
    # and no file input here: an upload would only be stored and served back, so none is taken
    demo.launch_defaults = dict(css=CSS, max_threads=slots + max_waiting + REFUSING, max_file_size=0)
    return demo.queue(max_size=None, default_concurrency_limit=2)


def pick_model(arg: str | None) -> str:
    """--model, else the GPT_MODEL variable (a Space's setting), else out/ when it holds a model."""
    source = arg or os.environ.get("GPT_MODEL")
    if source:
        return source
    if Path("out", "config.json").is_file():
        return "out"
    sys.exit(
        "No model to serve. Train one first:\n"
        f"    {TRAIN_HINT}\n"
        "or pass --model DIR_OR_REPO_ID (or set the GPT_MODEL environment variable, e.g. on a Space)."
    )


def main(argv=None):
    on_space = bool(os.environ.get("SPACE_ID"))
    ap = argparse.ArgumentParser(description="Serve a character-level GPT-2 with Gradio.")
    ap.add_argument("--model", default=None, help="model folder or Hub repo id (default: $GPT_MODEL, else out/)")
    ap.add_argument(
        "--host",
        default="0.0.0.0" if on_space else "127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 on a Space)",
    )
    ap.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    ap.add_argument("--slots", type=int, default=SLOTS, help=f"texts generated at once, batched (default {SLOTS})")
    ap.add_argument(
        "--max-waiting",
        type=int,
        default=MAX_WAITING,
        help=f"requests that may wait for a slot; more are told to try again (default {MAX_WAITING})",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help=f"PyTorch threads of the decode loop (default {torch.get_num_threads()}: every core PyTorch uses here)",
    )
    ap.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="what runs the decode loop's products: torch, onnx (ONNX Runtime on the model's onnx/model.onnx) or "
        "auto (default: times both at start and keeps the faster here)",
    )
    args = ap.parse_args(argv)
    if args.backend == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        sys.exit(f"--backend onnx needs ONNX Runtime, which is not installed: pip install onnxruntime=={ORT_VERSION}")
    if args.slots < 1 or args.max_waiting < 0 or args.threads < 1:
        ap.error(
            f"--slots and --threads must be >= 1 and --max-waiting >= 0, got {args.slots}, {args.threads} "
            f"and {args.max_waiting}"
        )
    if not 1 <= args.port <= 65535:
        ap.error(f"--port must be from 1 to 65535, got {args.port}")
    cores = usable_cores()
    if args.threads > cores:
        print(
            f"warning: --threads {args.threads} but this machine lets the app use {cores} cores: more threads than "
            f"cores make the decode loop much slower; pass --threads {cores} or fewer",
            file=sys.stderr,
        )
    check_port(args.host, args.port)  # before loading anything: a taken port is found in a second

    source = pick_model(args.model)
    try:
        model = load_model(source)
    except (OSError, ValueError) as e:
        sys.exit(f"Could not load the model {source!r}: {e}")
    c = model.config
    slot_mb = 2 * c.n_layer * c.block_size * c.n_embd * 4 / 1e6  # one slot's keys and values, fp32
    try:  # the decode loop preallocates the KV cache of every slot: refuse what cannot fit before starting it
        check_fits(
            c,
            batch_size=args.slots,
            what=f"{source} with --slots {args.slots}",
            fix=f"Pass a smaller --slots (each slot's KV cache takes {slot_mb:,.2f} MB).",
        )
    except ModelTooLargeError as e:
        sys.exit(str(e))
    with tempfile.TemporaryDirectory() as tmp:  # an exported graph lives here until the decode loop has loaded it
        onnx_file, no_graph = find_graph(source, model, tmp) if args.backend != "torch" else (None, "")
        try:
            demo = build_demo(
                model, source, args.slots, args.max_waiting, args.threads, args.backend, onnx_file, no_graph
            )
        except RuntimeError as e:  # the decode loop died before serving: say why, instead of serving "restart the app"
            sys.exit(f"Could not start the text generator: {e}")
    print(
        f"serving {source}: {count(model.num_params())} parameters, {args.slots} texts at once on "
        f"{hardware_name('cpu')}, at http://{args.host}:{args.port}"
    )
    try:
        demo.launch(server_name=args.host, server_port=args.port)
    except OSError as e:  # the port was taken in the meantime
        sys.exit(f"Could not listen on {args.host}:{args.port} ({e}): pass another --port")


def find_graph(source: str, model: GPT, tmp) -> tuple[str | None, str]:
    """The model's standard ONNX graph for the onnx backend, and why there is none: the folder's onnx/model.onnx
    when it is newer than its weights, else the Hub repo's, else one exported into tmp (that needs the onnx
    package, which a Space does not install: then there is none, and the loop runs on PyTorch)."""
    folder = Path(source)
    if folder.is_dir():
        graph = folder / "onnx" / "model.onnx"
        if graph.is_file() and graph.stat().st_mtime >= (folder / "model.safetensors").stat().st_mtime:
            return str(graph), ""
    else:
        from huggingface_hub import hf_hub_download

        with contextlib.suppress(Exception):  # not in the repo (pushed before it had one), offline: export instead
            return hf_hub_download(source, "onnx/model.onnx"), ""
    try:
        from export_onnx import export_standard

        print(f"exporting {source} to ONNX for the decode loop (python hub.py export-onnx DIR keeps one)", flush=True)
        return str(export_standard(model, Path(tmp) / "model.onnx")), ""
    except ImportError as e:
        return None, f"no onnx/model.onnx beside the model, and exporting one needs the onnx package ({e})"
    except Exception as e:  # noqa: BLE001 - the app still serves, on PyTorch
        return None, f"no onnx/model.onnx beside the model, and exporting one failed ({type(e).__name__}: {e})"


def usable_cores() -> int:
    """The cores this process may run on (a container or taskset may allow fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_port(host: str, port: int):
    """Exit with one line when the app cannot listen on host:port (Gradio would print a traceback, later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: a closed app's port is free
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                sys.exit(
                    f"Port {port} is already in use on {host} (another app?): pass another --port, e.g. --port {port + 1}"
                )
            sys.exit(f"Cannot listen on {host}:{port} ({e.strerror or e}): pass another --host or --port")


if __name__ == "__main__":
    main()
