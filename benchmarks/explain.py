"""The "Inside the model" pass (bench.py --explain): one full window of the 10.7M model through onnx/explain.onnx,
on the static page in headless Chromium (ONNX Runtime Web, what a visitor waits for), in onnxruntime (Python) and
in PyTorch (GPT.internals). Random weights: the time does not depend on them.
"""

import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchmarks.browser import CHROMIUM, ORT_WEB_LOCAL, cors_file_server, redirect_ort_web
from benchmarks.common import SHAKESPEARE_CHAR
from model_gpt2 import GPT
from train_config import config_from_preset, model_config

STATIC = Path(__file__).resolve().parent.parent / "static"


def best_ms(fn, runs: int = 5) -> float:
    """The best of `runs` timings of fn() after one warm-up call, in ms (a shared machine only slows runs down)."""
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return min(times)


def page_explain_ms(page, url: str, text: str, runs: int = 5) -> dict:
    """Open the page, open "Inside the model" on `text` (the first pass also creates the session), then
    `runs` more passes: window.lastExplain.ms, the session.run call alone, as explain.js measures it."""
    page.goto(url)
    page.wait_for_selector("#generate:enabled", timeout=300_000)
    page.locator("#prompt").fill(text)
    done = "document.getElementById('inside').dataset.state === 'done'"
    page.evaluate("document.getElementById('inside').dataset.state = ''")
    t0 = time.perf_counter()
    page.locator("#inside > summary").click()
    page.wait_for_function(done, timeout=300_000)
    first = {
        "first_view_s": round(time.perf_counter() - t0, 2),
        "first_ms": round(page.evaluate("window.lastExplain.ms"), 1),
    }
    error = page.locator("#inside-error").text_content()
    if error:
        raise RuntimeError(f"the page's view failed: {error}")
    times = []
    for _ in range(runs):
        page.evaluate("document.getElementById('inside').dataset.state = ''")
        page.locator("#inside-run").click()
        page.wait_for_function(done, timeout=300_000)
        times.append(page.evaluate("window.lastExplain.ms"))
    return first | {"best_ms": round(min(times), 1), "median_ms": round(statistics.median(times), 1)}


def bench_explain(vocab: str) -> dict:
    """The explain pass on a full window (block_size characters) of nanoGPT's 10.7M shape."""
    import numpy as np
    import onnxruntime
    from playwright.sync_api import sync_playwright

    import hub
    from export_onnx import export_onnx

    torch.manual_seed(0)
    model = GPT(model_config(config_from_preset(None, **SHAKESPEARE_CHAR), len(vocab)), vocab=vocab).eval()
    T = model.config.block_size
    ids = torch.randint(0, len(vocab), (1, T), generator=torch.Generator().manual_seed(0))
    text = "".join(vocab[i] for i in ids[0].tolist())
    with torch.inference_mode():
        torch_ms = best_ms(lambda: model.internals(ids))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model.save_pretrained(folder)
        onnx_file = export_onnx(model, folder)
        explain_file = onnx_file.parent / "explain.onnx"
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = onnxruntime.InferenceSession(str(explain_file), opts, providers=["CPUExecutionProvider"])
        ort_ms = best_ms(lambda: sess.run(None, {"input_ids": ids.numpy().astype(np.int64)}))
        server = hub.preview_server(folder, onnx_file, port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ort_server = cors_file_server(ORT_WEB_LOCAL)
        url, ort_url = f"http://127.0.0.1:{server.server_port}/", f"http://127.0.0.1:{ort_server.server_port}/"
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
                )
                page = browser.new_page()
                redirect_ort_web(page, ort_url)  # the pinned CDN URL answered from the npm install
                # whether or not the preview serves the view's files itself
                page.route(url + "explain.js", lambda route: route.fulfill(path=str(STATIC / "explain.js")))
                page.route(url + "model/onnx/explain.onnx", lambda route: route.fulfill(path=str(explain_file)))
                in_page = {t: page_explain_ms(page, f"{url}?threads={t}", text) for t in (1, 2)}
                browser.close()
        finally:
            server.shutdown()
            server.server_close()
            ort_server.shutdown()
        graph_kb = round(explain_file.stat().st_size / 1e3, 1)
    return {
        "params": model.num_params(),
        "window": T,
        "explain_onnx_kb": graph_kb,
        **{f"browser_{t}_threads": r for t, r in in_page.items()},
        "ort_python_1_thread_ms": round(ort_ms, 1),
        "torch_internals_ms": round(torch_ms, 1),
        "torch_threads": torch.get_num_threads(),
    }


def explain_table(r: dict) -> list[str]:
    lines = ["", f"explain pass, a full window ({r['window']} characters) of the {r['params']:,}-parameter model:"]
    for key, run in r.items():
        if key.startswith("browser_"):
            threads = key.split("_")[1]
            lines.append(
                f"  in the browser (Chromium, WASM, {threads} thread(s)): best {run['best_ms']:.0f} ms, "
                f"median {run['median_ms']:.0f} ms; first view {run['first_view_s']:.1f} s (session start included)"
            )
    lines.append(
        f"  onnxruntime (Python, 1 thread) {r['ort_python_1_thread_ms']:.0f} ms; PyTorch internals() "
        f"{r['torch_internals_ms']:.0f} ms ({r['torch_threads']} threads); explain.onnx {r['explain_onnx_kb']:.0f} kB"
    )
    return lines
