"""In the browser: the static Space's page in headless Chromium (bench.py --browser): characters per second
and time to the first character, next to model.onnx in onnxruntime (the app's decode loop) and PyTorch's
decode_step. In the same run, and taking turns with it, the committed page on the committed exporter's graph (git
HEAD's static/ and export_onnx.py): a change to the page or its graph is measured against what it replaces, on the
same machine at the same time.
"""

import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import SHAKESPEARE_CHAR
from benchmarks.generation import decode_costs
from model_gpt2 import GPT
from train_config import PRESETS, config_from_preset, model_config

ORT_WEB_CDN = "https://cdn.jsdelivr.net/npm/onnxruntime-web@1.30.0/dist/"  # what static/index.html loads


ORT_WEB_LOCAL = Path(__file__).resolve().parent.parent / ".npm-test" / "node_modules" / "onnxruntime-web" / "dist"


CHROMIUM = "/usr/bin/chromium"


def browser_ready() -> str | None:
    """None when the in-browser benchmark can run, else what is missing."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} missing (apt-get install chromium)"
    if not ORT_WEB_LOCAL.is_dir():
        return "onnxruntime-web missing (bash tests/install_test_tools.sh)"
    return None


def ort_python_chars_per_sec(onnx_file, model: GPT, n: int) -> float:
    """The page's decode loop with onnxruntime in Python, 1 thread: the same graph, natively compiled (the app's
    onnx backend, decoders.OnnxDecoder, one request)."""
    from decoders import OnnxDecoder

    decoder = OnnxDecoder(onnx_file, model, slots=1, threads=1)
    n = min(n, model.config.block_size - 6)  # within the context: no window slide here
    t0 = time.perf_counter()
    logits = decoder.prefill(0, [0] * 6)  # a 6-character prompt, then one position per character, as the page does
    for _ in range(n - 1):
        logits = decoder.decode([0], [int(logits[0].argmax())])
    return n / (time.perf_counter() - t0)


def page_load(page, url, n) -> float:
    """Open the page (model download + ORT start) set for n greedy characters; the seconds it took."""
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("#generate:enabled", timeout=300_000)
    page.locator("#max_tokens").fill(str(n))
    page.locator("#temperature").fill("0")
    return time.perf_counter() - t0


def page_generate(page) -> dict:
    """One click of Generate (after "ROMEO:"): the page's window.lastRun {chars, seconds, firstMs}."""
    page.bring_to_front()
    page.evaluate("document.body.dataset.state = ''")
    page.locator("#generate").click()
    page.wait_for_function("document.body.dataset.state === 'done'", timeout=300_000)
    return page.evaluate("window.lastRun")


def page_results(page, load_s: float, runs: list) -> dict:
    best = max(runs, key=lambda r: r["chars"] / r["seconds"])
    return {
        "load_seconds": round(load_s, 1),
        "chars_per_sec": round(best["chars"] / best["seconds"], 1),
        "first_char_ms": round(best["firstMs"], 1),
        "threads": page.evaluate("ort.env.wasm.numThreads"),
        "isolated": page.evaluate("self.crossOriginIsolated"),
    }


def committed_variant(tmp, ref: str = "HEAD"):
    """(static folder, exporter) of git `ref`: its static/ files and its export_onnx.export_onnx, written under tmp;
    None with the reason when git or that exporter cannot give them."""
    import importlib.util
    import subprocess

    root = Path(__file__).resolve().parent.parent
    folder = Path(tmp, "committed")
    (folder / "static").mkdir(parents=True)
    try:
        for name in ("static/index.html", "static/app.js", "export_onnx.py"):
            shown = subprocess.run(["git", "show", f"{ref}:{name}"], cwd=root, capture_output=True, check=True)
            (folder / name).write_bytes(shown.stdout)
    except (OSError, subprocess.CalledProcessError) as e:
        return None, f"git show {ref}: {getattr(e, 'stderr', b'').decode().strip() or e}"
    spec = importlib.util.spec_from_file_location(f"committed_export_onnx_{ref}", folder / "export_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # it imports this checkout's model_gpt2: the same model
    return (folder / "static", module.export_onnx), None


def bench_browser(vocab, n=200, baseline: str | None = "HEAD", rounds: int = 5) -> dict:
    """The static Space's page in headless Chromium (random weights: speed does not depend on them): characters
    per second and time to the first character with 1 WebAssembly thread and with one per core, next to model.onnx
    in onnxruntime (Python, 1 thread) and PyTorch's decode_step; and, in the same run, git `baseline`'s page on its
    own graph (committed_*_threads), unless baseline is None. Each page stays open and the pages generate in turn,
    `rounds` times each after a warm-up round: each page's best run."""
    import threading
    from unittest import mock

    from playwright.sync_api import sync_playwright

    import hub
    from export_onnx import export_onnx

    cpu_arch = {k: PRESETS["cpu"][k] for k in SHAKESPEARE_CHAR}
    out, threads = {}, sorted({1, 2, min(4, os.cpu_count() or 1)})
    with sync_playwright() as p, tempfile.TemporaryDirectory() as tmp:
        variants, skipped = [("", hub.STATIC_DIR, export_onnx)], None  # (key prefix, static folder, exporter)
        if baseline:
            committed, skipped = committed_variant(tmp, baseline)
            variants += [("committed_", *committed)] if committed else []
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        context = browser.new_context()

        # the pinned CDN URL answered from the npm install, nothing leaves the machine: redirected to a loopback
        # server, because Playwright passing the 14 MB .wasm through route.fulfill() takes seconds of its own
        ort_server = cors_file_server(ORT_WEB_LOCAL)
        ort_url = f"http://127.0.0.1:{ort_server.server_port}/"
        redirect_ort_web(context, ort_url)
        for name, arch in (("cpu preset", cpu_arch), ("shakespeare-char (10.7M)", SHAKESPEARE_CHAR)):
            torch.manual_seed(0)
            model = GPT(model_config(config_from_preset(None, **arch), len(vocab)), vocab=vocab).eval()
            res = {"params": model.num_params()} | ({"committed_skipped": skipped} if skipped else {})
            pages, servers = {}, []  # one open page per variant and thread count
            try:
                for prefix, static_dir, exporter in variants:
                    folder = Path(tmp, prefix + name.split()[0])
                    model.save_pretrained(folder)
                    try:
                        onnx_file = exporter(model, folder)
                    except Exception as e:  # the committed exporter's packages (onnxscript...) may be gone
                        if not prefix:
                            raise
                        res["committed_skipped"] = f"its export_onnx failed: {type(e).__name__}: {e}"
                        continue
                    res[prefix + "onnx_mb"] = round(onnx_file.stat().st_size / 1e6, 1)
                    with mock.patch.object(hub, "STATIC_DIR", static_dir):  # that variant's page and scripts
                        servers.append(hub.preview_server(folder, onnx_file, port=0))
                    threading.Thread(target=servers[-1].serve_forever, daemon=True).start()
                    for t in threads:
                        page = context.new_page()
                        url = f"http://127.0.0.1:{servers[-1].server_port}/?threads={t}"
                        pages[f"{prefix}{t}_threads"] = page, page_load(page, url, n)
                    if not prefix:
                        res["ort_python_1_thread_chars_per_sec"] = round(
                            ort_python_chars_per_sec(onnx_file, model, n), 1
                        )
                # the variants take turns, round after round: a busy moment of a shared machine slows them alike.
                # Best of `rounds` after one round that pays for WebAssembly's tier-up compilation.
                runs = {key: [] for key in pages}
                for i in range(rounds + 1):
                    for key, (page, _) in pages.items():
                        run = page_generate(page)
                        if i:
                            runs[key].append(run)
                res.update({key: page_results(page, load_s, runs[key]) for key, (page, load_s) in pages.items()})
            finally:
                for page, _ in pages.values():
                    page.close()
                for server in servers:
                    server.shutdown()
                    server.server_close()
            res["torch_decode_step_ms"] = decode_costs(model, "cpu")["decode_step_ms"]
            out[name] = res
        browser.close()
        ort_server.shutdown()
    return out


def cors_file_server(folder):
    """A loopback server for the files in folder, with the headers jsDelivr sends (CORS, CORP)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Handler(SimpleHTTPRequestHandler):
        extensions_map = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript"}

        def end_headers(self):
            self.send_header("access-control-allow-origin", "*")
            self.send_header("cross-origin-resource-policy", "cross-origin")
            super().end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def browser_table(b) -> list[str]:
    head = f"{'in the browser (Chromium, WASM)':32} {'threads':>7} {'chars/s':>8} {'first char':>11} {'load':>7}"
    lines = ["", head + "   committed page and graph (git HEAD), same run"]
    for name, r in b.items():
        if r.get("committed_skipped"):
            lines.append(f"{name}: the committed page not measured ({r['committed_skipped']})")
        for key, run in ((k, v) for k, v in r.items() if k.endswith("_threads") and not k.startswith("committed_")):
            row = f"{name:32} {run['threads']:7} {run['chars_per_sec']:8.1f} {run['first_char_ms']:8.1f} ms {run['load_seconds']:5.1f} s"
            old = r.get("committed_" + key)
            if old:
                ratio = run["chars_per_sec"] / old["chars_per_sec"]
                row += f"   {old['chars_per_sec']:8.1f} chars/s ({ratio:.2f}x), {old['first_char_ms']:.1f} ms"
            lines.append(row)
        lines.append(
            f"  model.onnx in onnxruntime (Python, 1 thread): {r['ort_python_1_thread_chars_per_sec']:.0f} chars/s; "
            f"PyTorch decode_step {r['torch_decode_step_ms']:.2f} ms"
        )
    return lines


def redirect_ort_web(target, ort_url: str) -> None:
    """Answer the page's pinned CDN URL of ONNX Runtime Web from ort_url (a local server of the npm install), on a
    Playwright page or browser context."""
    target.route(
        ORT_WEB_CDN + "**",
        lambda route: route.fulfill(
            status=307,
            headers={
                "location": ort_url + route.request.url.removeprefix(ORT_WEB_CDN),
                "access-control-allow-origin": "*",
            },
        ),
    )
