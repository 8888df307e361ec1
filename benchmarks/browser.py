"""In the browser: the static Space's page in headless Chromium (bench.py --browser): characters per second
and time to the first character, next to the same ONNX graph in onnxruntime and PyTorch's decode_step.
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
    """The page's decode loop with onnxruntime in Python, 1 thread: the same graph, natively compiled."""
    import numpy as np
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = onnxruntime.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
    c = model.config
    key = value = np.zeros((0, c.n_layer, c.n_head, c.n_embd // c.n_head), dtype=np.float32)
    n = min(n, c.block_size - 6)  # within the context: no window slide here
    ids, t0 = [0] * 6, time.perf_counter()
    for _ in range(n):  # a 6-character prompt, then one position per character, as the page does
        logits, k, v = sess.run(
            None, {"input_ids": np.array([ids], dtype=np.int64), "past_key": key, "past_value": value}
        )
        key, value, ids = np.concatenate([key, k]), np.concatenate([value, v]), [int(logits[0, -1].argmax())]
    return n / (time.perf_counter() - t0)


def page_run(page, url, n) -> dict:
    """Load the page (model download + ORT start), then generate n characters greedily after "ROMEO:", best of 3
    (the first run also pays for WebAssembly's tier-up compilation; a shared machine only ever slows a run down)."""
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("#generate:enabled", timeout=300_000)
    load_s = time.perf_counter() - t0
    page.locator("#max_tokens").fill(str(n))
    page.locator("#temperature").fill("0")
    runs = []
    for _ in range(3):
        page.evaluate("document.body.dataset.state = ''")
        page.locator("#generate").click()
        page.wait_for_function("document.body.dataset.state === 'done'", timeout=300_000)
        runs.append(page.evaluate("window.lastRun"))
    best = max(runs, key=lambda r: r["chars"] / r["seconds"])
    return {
        "load_seconds": round(load_s, 1),
        "chars_per_sec": round(best["chars"] / best["seconds"], 1),
        "first_char_ms": round(best["firstMs"], 1),
        "threads": page.evaluate("ort.env.wasm.numThreads"),
        "isolated": page.evaluate("self.crossOriginIsolated"),
    }


def bench_browser(vocab, n=200) -> dict:
    """The static Space's page in headless Chromium (random weights: speed does not depend on them): characters
    per second and time to the first character with 1 WebAssembly thread and with one per core, next to the same
    ONNX graph in onnxruntime (Python, 1 thread) and PyTorch's decode_step."""
    import threading

    from playwright.sync_api import sync_playwright

    import hub
    from export_onnx import export_onnx

    cpu_arch = {k: PRESETS["cpu"][k] for k in SHAKESPEARE_CHAR}
    out, threads = {}, sorted({1, 2, min(4, os.cpu_count() or 1)})
    with sync_playwright() as p, tempfile.TemporaryDirectory() as tmp:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()

        # the pinned CDN URL answered from the npm install, nothing leaves the machine: redirected to a loopback
        # server, because Playwright passing the 14 MB .wasm through route.fulfill() takes seconds of its own
        ort_server = cors_file_server(ORT_WEB_LOCAL)
        ort_url = f"http://127.0.0.1:{ort_server.server_port}/"
        page.route(
            ORT_WEB_CDN + "**",
            lambda route: route.fulfill(
                status=307,
                headers={
                    "location": ort_url + route.request.url.removeprefix(ORT_WEB_CDN),
                    "access-control-allow-origin": "*",
                },
            ),
        )
        for name, arch in (("cpu preset", cpu_arch), ("shakespeare-char (10.7M)", SHAKESPEARE_CHAR)):
            torch.manual_seed(0)
            model = GPT(model_config(config_from_preset(None, **arch), len(vocab)), vocab=vocab).eval()
            folder = Path(tmp, name.split()[0])
            model.save_pretrained(folder)
            onnx_file = export_onnx(model, folder)
            server = hub.preview_server(folder, onnx_file, port=0)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            try:
                url = f"http://127.0.0.1:{server.server_port}/"
                res = {"params": model.num_params(), "onnx_mb": round(onnx_file.stat().st_size / 1e6, 1)}
                res.update({f"{t}_threads": page_run(page, f"{url}?threads={t}", n) for t in threads})
            finally:
                server.shutdown()
                server.server_close()
            res["ort_python_1_thread_chars_per_sec"] = round(ort_python_chars_per_sec(onnx_file, model, n), 1)
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
    lines = ["", f"{'in the browser (Chromium, WASM)':32} {'threads':>7} {'chars/s':>8} {'first char':>11} {'load':>7}"]
    for name, r in b.items():
        for run in (v for k, v in r.items() if k.endswith("_threads")):
            lines.append(
                f"{name:32} {run['threads']:7} {run['chars_per_sec']:8.1f} {run['first_char_ms']:8.1f} ms {run['load_seconds']:5.1f} s"
            )
        lines.append(
            f"  same graph in onnxruntime (Python, 1 thread): {r['ort_python_1_thread_chars_per_sec']:.0f} chars/s; "
            f"PyTorch decode_step {r['torch_decode_step_ms']:.2f} ms"
        )
    return lines
