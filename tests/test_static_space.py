"""The static Space: the ONNX export (checked with onnxruntime) and the page, run in a real browser.

The browser test serves the page and a trained model folder on loopback (`hub.preview_server`, what
`python hub.py preview-static` runs) and answers the page's requests for the pinned ONNX Runtime Web
CDN URL from the copy that tests/install_test_tools.sh installs with npm: nothing leaves the machine.
SAVE_SCREENSHOT=PATH keeps the browser's screenshot (docs/static_space.png comes from the cpu preset:
STATIC_TEST_MODEL=out).
"""

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CHROMIUM, CHROMIUM_FLAGS, ROOT, free_port, make_tiny_model, require, server_process, train_tiny

import hub
from export_onnx import export_onnx, io_names
from model_gpt2 import load_model

ORT_VERSION = "1.30.0"
ORT_CDN = f"https://cdn.jsdelivr.net/npm/onnxruntime-web@{ORT_VERSION}/dist/"
ORT_LOCAL = ROOT / ".npm-test" / "node_modules" / "onnxruntime-web" / "dist"
PROMPT, N = "ROMEO:", 200


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, prepared_data) -> Path:
    """A model folder from a short real training run (context 32, so 200 characters slide the window 6 times),
    or STATIC_TEST_MODEL=DIR."""
    if os.environ.get("STATIC_TEST_MODEL"):
        return Path(os.environ["STATIC_TEST_MODEL"])
    out = tmp_path_factory.mktemp("trained") / "out"
    return train_tiny(prepared_data, out, max_iters=60, eval_interval=30, n_layer=2)


@pytest.fixture(scope="module")
def onnx_file(trained_dir, tmp_path_factory) -> Path:
    return export_onnx(load_model(trained_dir), tmp_path_factory.mktemp("onnx"))


def session(path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def empty_cache(model) -> list:
    """past_key_values.* of no positions: (1, n_head, 0, head_dim) for each layer's keys and values."""
    c = model.config
    return [np.zeros((1, c.n_head, 0, c.n_embd // c.n_head), dtype=np.float32)] * (2 * c.n_layer)


def run(sess, ids, past):
    """One row through the standard graph: `ids` after the positions in `past`; (logits (T, vocab), present)."""
    P, T = past[0].shape[2], len(ids)
    feed = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, P + T), dtype=np.int64)}
    feed["position_ids"] = np.arange(P, P + T, dtype=np.int64)[None]
    feed |= dict(zip(io_names(len(past) // 2)[0][3:], past))
    logits, *present = sess.run(None, feed)
    return logits[0], present


# ---------------------------------------------------------------------------- ONNX (onnxruntime, Python)


@pytest.mark.parametrize("bias", [True, False])
def test_onnx_logits_equal_pytorch_for_the_whole_context(tmp_path, shakespeare_vocab, bias):
    model = make_tiny_model(shakespeare_vocab, seed=3, bias=bias).eval()
    with torch.no_grad():  # weights far from their init, so a mixed-up tensor cannot hide
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    sess = session(export_onnx(model, tmp_path))
    ids = torch.randint(
        0, len(shakespeare_vocab), (1, model.config.block_size), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        expected = model(ids)[0][0].numpy()  # (block_size, vocab)
    prefill, _ = run(sess, ids[0].tolist(), empty_cache(model))  # the whole context in one call
    np.testing.assert_allclose(prefill, expected, atol=1e-4, rtol=0)
    past = empty_cache(model)  # and one position at a time, up to the last one the context has
    for t in range(model.config.block_size):
        logits, past = run(sess, [ids[0, t].item()], past)
        np.testing.assert_allclose(logits[-1], expected[t], atol=1e-4, rtol=0)
    assert [i.name for i in sess.get_inputs()] == io_names(model.config.n_layer)[0]  # Optimum's GPT-2 names


def test_a_batch_of_rows_at_different_positions_equals_each_row_alone(tmp_path, shakespeare_vocab):
    """What the app's onnx backend relies on: padded rows (attention_mask 0) and their own position_ids give
    each row the logits it gets alone."""
    model = make_tiny_model(shakespeare_vocab, seed=4).eval()
    sess = session(export_onnx(model, tmp_path))
    rows = [[5, 9, 3], [7, 1, 2, 8, 4, 6, 0], [11]]
    alone = [run(sess, ids, empty_cache(model))[0][-1] for ids in rows]
    T = max(map(len, rows))  # left-padded to the longest row
    ids = np.array([[0] * (T - len(r)) + r for r in rows], dtype=np.int64)
    mask = np.array([[0] * (T - len(r)) + [1] * len(r) for r in rows], dtype=np.int64)
    positions = np.array([[0] * (T - len(r)) + list(range(len(r))) for r in rows], dtype=np.int64)
    c = model.config
    past = [np.zeros((3, c.n_head, 0, c.n_embd // c.n_head), dtype=np.float32)] * (2 * c.n_layer)
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    batched = sess.run(["logits"], feed | dict(zip(io_names(c.n_layer)[0][3:], past)))[0][:, -1]
    np.testing.assert_allclose(batched, np.stack(alone), atol=1e-5, rtol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_explain_graph_equals_internals_and_holds_no_weights_of_its_own(tmp_path, shakespeare_vocab, bias):
    """onnx/explain.onnx (the "Inside the model" views): logits, attention and the logit lens of GPT.internals,
    with its weights read from model.onnx's own bytes (ONNX external data) instead of a second copy."""
    model = make_tiny_model(shakespeare_vocab, seed=5, bias=bias).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    graph = export_onnx(model, tmp_path)
    explain = tmp_path / "onnx" / "explain.onnx"
    assert explain.stat().st_size < graph.stat().st_size / 4
    sess = session(explain)  # ONNX Runtime reads the external data from model.onnx beside it
    assert [o.name for o in sess.get_outputs()] == ["logits", "attention", "lens_logits"]
    ids = torch.randint(
        0, len(shakespeare_vocab), (2, model.config.block_size), generator=torch.Generator().manual_seed(1)
    )
    for window in (ids, ids[:1, :7]):  # a full context and a short window of one row
        with torch.no_grad():
            expected = model.internals(window)
        got = sess.run(None, {"input_ids": window.numpy()})
        for name, theirs, ours in zip(("logits", "attention", "lens_logits"), got, expected):
            assert theirs.shape == tuple(ours.shape), name
            np.testing.assert_allclose(theirs, ours.numpy(), atol=1e-4, rtol=0, err_msg=name)


def test_page_step_graph_holds_no_weights_of_its_own_and_equals_the_standard_graph(tmp_path, shakespeare_vocab):
    """onnx/step.onnx (the page's decode step: the cache positions outermost, only the new positions' keys and values
    out) reads every weight from model.onnx's bytes, and gives model.onnx's logits, prefill and one step at a time."""
    import onnx

    model = make_tiny_model(shakespeare_vocab, seed=6).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    graph = export_onnx(model, tmp_path)
    step_file = graph.with_name("step.onnx")
    assert step_file.stat().st_size < 100_000 < graph.stat().st_size  # a few tens of KB: the graph alone
    proto = onnx.load(str(step_file), load_external_data=False)
    inside = [t.name for t in proto.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    assert all(len(onnx.numpy_helper.to_array(t).tobytes()) < 1024 for t in proto.graph.initializer if t.name in inside)
    assert {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"} == {"model.onnx"}
    step = session(step_file)
    assert [i.name for i in step.get_inputs()] == ["input_ids", "past_key", "past_value"]
    c = model.config
    ids = torch.randint(0, len(shakespeare_vocab), (c.block_size,), generator=torch.Generator().manual_seed(2)).tolist()
    expected, _ = run(session(graph), ids, empty_cache(model))  # (block_size, vocab)
    key = value = np.zeros((0, c.n_layer, c.n_head, c.n_embd // c.n_head), dtype=np.float32)
    for start, end in [(0, 5), *((t, t + 1) for t in range(5, c.block_size))]:  # a prefill, then one at a time
        feed = {"input_ids": np.array([ids[start:end]], dtype=np.int64), "past_key": key, "past_value": value}
        logits, k, v = step.run(None, feed)
        assert k.shape == v.shape == (end - start, c.n_layer, c.n_head, c.n_embd // c.n_head)
        np.testing.assert_allclose(logits[0], expected[start:end], atol=1e-4, rtol=0)
        key, value = np.concatenate([key, k]), np.concatenate([value, v])


def onnx_greedy(sess, model, prompt, n):
    """The page's loop (static/app.js stream()) in Python: prefill, decode, slide the window past the context."""
    block = model.config.block_size
    shift, vocab, stoi = max(1, block // 4), model.tokenizer.vocab, model.tokenizer.stoi
    context = [stoi[ch] for ch in prompt][-block:]
    logits, past = run(sess, context, empty_cache(model))
    text = prompt
    for i in range(n):
        nxt = int(logits[-1].argmax())
        text += vocab[nxt]
        if i == n - 1:
            break
        context.append(nxt)
        if len(context) > block:
            context = context[-(block - shift) :]
            logits, past = run(sess, context, empty_cache(model))
        else:
            logits, past = run(sess, [nxt], past)
    return text


def test_onnx_greedy_generation_equals_pytorch(trained_dir, onnx_file):
    model = load_model(trained_dir)
    expected = model.generate_text(PROMPT, N, temperature=0)
    assert onnx_greedy(session(onnx_file), model, PROMPT, N) == expected


@pytest.mark.slow
def test_export_onnx_command(trained_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("config.json", "model.safetensors"):
        (out / name).write_bytes((trained_dir / name).read_bytes())
    proc = subprocess.run([sys.executable, "hub.py", "export-onnx", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and (out / "onnx" / "model.onnx").is_file()
    model = load_model(out)
    assert onnx_greedy(session(out / "onnx" / "model.onnx"), model, PROMPT, 50) == model.generate_text(
        PROMPT, 50, temperature=0
    )
    proc = subprocess.run(
        [sys.executable, "hub.py", "export-onnx", str(tmp_path / "nothing")], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "does not hold a model that loads" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_preview_static_command_serves_the_page_and_the_model(trained_dir, tmp_path):
    """`python hub.py preview-static DIR --port P`: the page, app.js and the model's files, with the Space's headers."""
    import httpx

    out = tmp_path / "out"
    out.mkdir()
    for name in ("config.json", "model.safetensors"):  # no onnx/ yet: the command exports one for itself
        (out / name).write_bytes((trained_dir / name).read_bytes())
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [sys.executable, "hub.py", "preview-static", str(out), "--port", str(port)]
    # exporting takes seconds to a minute on a busy machine; the page answers once it is done
    with server_process(
        cmd, lambda: httpx.get(url, timeout=5).status_code == 200, tmp_path / "preview.log", 300, cwd=ROOT
    ):
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and '<meta name="model-url" content="model/">' in page.text
        for key, value in hub.ISOLATION_HEADERS.items():
            assert page.headers[key] == value  # as the Space sends them: WebAssembly threads
        assert httpx.get(url + "app.js").content == (ROOT / "static" / "app.js").read_bytes()
        assert httpx.get(url + "model/config.json").content == (out / "config.json").read_bytes()
        served = tmp_path / "served.onnx"
        served.write_bytes(httpx.get(url + "model/onnx/model.onnx", timeout=30).content)
        model = load_model(out)
        assert onnx_greedy(session(served), model, PROMPT, 40) == model.generate_text(PROMPT, 40, temperature=0)
        assert httpx.get(url + "model/model.safetensors").status_code == 404  # only what the page needs
        assert not (out / "onnx").exists()  # the preview leaves the model folder as it was


# ---------------------------------------------------------------------------- the page in Chromium


def test_the_page_pins_the_engine_it_was_tested_with():
    page = (ROOT / "static" / "index.html").read_text()
    assert f'src="{ORT_CDN}ort.wasm.min.js"' in page
    assert f'const ORT_DIST = "{ORT_CDN}";' in (ROOT / "static" / "app.js").read_text()
    assert f"onnxruntime-web@{ORT_VERSION}" in (ROOT / "tests" / "install_test_tools.sh").read_text()


def route_cdn_to_local_copy(page):
    """Answer the pinned CDN URL from the npm install, with the headers jsDelivr sends (CORS, CORP)."""
    types = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def answer(route):
        path = ORT_LOCAL / route.request.url.removeprefix(ORT_CDN).split("?")[0]
        if not path.is_file():
            return route.fulfill(status=404)
        headers = {"access-control-allow-origin": "*", "cross-origin-resource-policy": "cross-origin"}
        route.fulfill(status=200, body=path.read_bytes(), headers=headers, content_type=types.get(path.suffix))

    # the route added last is tried first: everything not on loopback is refused, except the CDN copy
    page.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/]).*"), lambda route: route.abort())
    page.route(ORT_CDN + "**", answer)


@pytest.fixture(scope="module")
def preview(trained_dir, onnx_file):
    server = hub.preview_server(trained_dir, onnx_file, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


# records every text the page's status line shows (the download progress is gone by the time the model is ready)
STATUS_LOG = """window.statusLog = [];
window.generated = [];  // each gpt:generated event's text
document.addEventListener("gpt:generated", (e) => window.generated.push(e.detail.text));
document.addEventListener("DOMContentLoaded", () => {
  const status = document.getElementById("status");
  new MutationObserver(() => window.statusLog.push(status.textContent)).observe(status, {childList: true});
});"""


def generate(page, prompt, max_tokens, temperature, top_n):
    page.locator("#prompt").fill(prompt)
    page.locator("#max_tokens").fill(str(max_tokens))
    page.locator("#temperature").fill(str(temperature))
    page.locator("#top_n").fill(str(top_n))
    page.evaluate("document.body.dataset.state = ''")
    page.locator("#generate").click()
    page.wait_for_function("document.body.dataset.state === 'done'", timeout=120_000)
    return page.locator("#output").text_content()


# what an "Inside the model" view does with window.gptPage: open explain.onnx with model.onnx's bytes as its
# external data (no second download of the weights) and run one window
EXPLAIN_IN_THE_PAGE = """async (prompt) => {
  const g = await window.gptPage.ready;
  const explain = new Uint8Array(await (await fetch(g.baseUrl + "onnx/explain.onnx")).arrayBuffer());
  const session = await g.ort.InferenceSession.create(explain, {
    externalData: [{ path: "model.onnx", data: new Uint8Array(g.modelBytes) }],
  });
  const ids = Array.from(prompt, (ch) => g.stoi.get(ch));
  const input = new g.ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]);
  const out = await session.run({ input_ids: input });
  const result = { keys: Object.keys(g).sort(), baseUrl: g.baseUrl, modelBytes: g.modelBytes.byteLength,
    vocab: g.vocab.join(""), n_layer: g.config.n_layer, outputs: session.outputNames };
  for (const name of session.outputNames) result[name] = { dims: out[name].dims, data: Array.from(out[name].data) };
  return result;
}"""


@pytest.mark.slow
def test_the_page_generates_what_pytorch_generates(preview, trained_dir, onnx_file, tmp_path):
    require(Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: apt-get install chromium")
    require(ORT_LOCAL.is_dir(), "onnxruntime-web not installed: run bash tests/install_test_tools.sh")
    from playwright.sync_api import sync_playwright

    model = load_model(trained_dir)
    greedy = model.generate_text(PROMPT, N, temperature=0)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            route_cdn_to_local_copy(page)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            model_downloads = []  # the weights (model.onnx) and the page's decode step (step.onnx, the graph alone)
            page.on("request", lambda r: model_downloads.append(r.url) if r.url.endswith(".onnx") else None)
            explain_bytes = (onnx_file.parent / "explain.onnx").read_bytes()  # the preview serves model.onnx only
            page.route(preview + "model/onnx/explain.onnx", lambda route: route.fulfill(status=200, body=explain_bytes))
            page.add_init_script(STATUS_LOG)
            page.goto(preview)
            page.wait_for_selector("#generate:enabled", timeout=120_000)  # the model has loaded
            shown = page.evaluate("window.statusLog")  # the loading messages, in order
            assert any(re.fullmatch(r"Downloading the model: [\d.]+ of [\d.]+ MB \(\d+%\)", t) for t in shown), shown
            assert shown[-1].startswith("Ready: loaded in"), shown
            assert page.evaluate("self.crossOriginIsolated"), "the preview must send COOP/COEP, as the Space does"
            facts = page.locator("#facts").text_content()
            info = model.train_info
            assert (
                f"{model.num_params():,} parameters" in facts or f"{model.num_params() / 1e6:.2f}M parameters" in facts
            )
            assert (
                f"Validation loss {info['val_loss_full']:.3f}" in facts
                and f"context {model.config.block_size}" in facts
            )

            assert generate(page, PROMPT, N, 0, 0) == greedy  # greedy: character for character
            assert page.evaluate("window.generated") == [greedy]  # gpt:generated, with prompt + text

            # window.gptPage, for the views: explain.onnx runs on model.onnx's bytes, downloaded once
            got = page.evaluate(EXPLAIN_IN_THE_PAGE, PROMPT)
            assert got["keys"] == sorted(["ort", "session", "config", "vocab", "stoi", "modelBytes", "baseUrl"])
            assert got["baseUrl"] == preview + "model/" and got["modelBytes"] == onnx_file.stat().st_size
            assert got["vocab"] == model.tokenizer.vocab and got["n_layer"] == model.config.n_layer
            assert got["outputs"] == ["logits", "attention", "lens_logits"]
            with torch.no_grad():
                expected = model.internals(model.encode_prompt(PROMPT))
            for name, ours in zip(got["outputs"], expected):
                assert got[name]["dims"] == list(ours.shape), name
                np.testing.assert_allclose(np.array(got[name]["data"]), ours.numpy().ravel(), atol=1e-4, err_msg=name)
            assert sorted(model_downloads) == [preview + f"model/onnx/{f}.onnx" for f in ("explain", "model", "step")]
            assert generate(page, PROMPT, N, 0.7, 1) == greedy  # top N = 1 leaves only the likeliest
            page.screenshot(path=tmp_path / "static_space.png", full_page=True)
            if os.environ.get("SAVE_SCREENSHOT"):
                page.screenshot(path=os.environ["SAVE_SCREENSHOT"], full_page=True)
            sampled = generate(page, "", 30, 1, -5)  # empty prompt = a space; top N <= 0 = all characters
            assert sampled.startswith(" ") and len(sampled) == 31 and set(sampled) <= set(model.tokenizer.vocab)

            text = generate(page, "ROMEO: ☃", 20, 0, 0)  # a character the model never saw: left out, and said so
            assert text == model.generate_text("ROMEO: ", 20, temperature=0)
            assert "left out" in page.locator("#note").text_content() and "☃" in page.locator("#note").text_content()

            for field, value, message in [
                ("#temperature", "1.5", "temperature must be a number from 0 to 1 (0 = greedy), got '1.5'"),
                ("#max_tokens", "5000", "max tokens must be an integer from 1 to 2000, got '5000'"),
                ("#top_n", "2.5", "top N must be an integer or empty, got '2.5'"),
            ]:
                page.locator("#prompt").fill(PROMPT)
                for name, good in (("#temperature", "0"), ("#max_tokens", "20"), ("#top_n", "")):
                    page.locator(name).fill(value if name == field else good)
                page.locator("#generate").click()
                assert page.locator("#error").text_content() == message
                assert page.locator("#output").text_content() == text  # nothing was generated
            assert errors == []
        finally:
            browser.close()


@pytest.mark.slow
def test_a_repo_pushed_by_the_earlier_release_still_generates(trained_dir, onnx_file, tmp_path):
    """Before step.onnx, a repo's onnx/model.onnx was the page's step graph itself, weights inside (and there was no
    explain.onnx): the page runs it, and greedy text is still PyTorch's."""
    require(Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: apt-get install chromium")
    require(ORT_LOCAL.is_dir(), "onnxruntime-web not installed: run bash tests/install_test_tools.sh")
    import onnx
    from playwright.sync_api import sync_playwright

    earlier = tmp_path / "onnx" / "model.onnx"
    earlier.parent.mkdir()
    onnx.save(onnx.load(str(onnx_file.with_name("step.onnx"))), str(earlier))  # weights read in: one whole file
    server = hub.preview_server(trained_dir, earlier, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page()
            route_cdn_to_local_copy(page)
            page.goto(f"http://127.0.0.1:{server.server_port}/")
            page.wait_for_selector("#generate:enabled", timeout=120_000)
            assert generate(page, PROMPT, N, 0, 0) == load_model(trained_dir).generate_text(PROMPT, N, temperature=0)
            page.locator("#inside summary").click()  # no explain.onnx in such a repo: the view says what to do
            page.locator("#inside-error").get_by_text("push it again with `python hub.py push`").wait_for()
            browser.close()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_the_page_runs_only_hub_models_and_names_its_source(preview, trained_dir, onnx_file):
    """?model= may name only a model repo on the Hub (ORG/NAME, or its resolve/main/ URL): any other address is
    refused on the page, with nothing fetched from it. The page links the repo it runs, and shows a training
    fact of that repo's config.json only when it is a finite number."""
    require(Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: apt-get install chromium")
    require(ORT_LOCAL.is_dir(), "onnxruntime-web not installed: run bash tests/install_test_tools.sh")
    import json

    from playwright.sync_api import sync_playwright

    config = json.loads((trained_dir / "config.json").read_text())
    config["train_info"].update(tokens_seen="lots", val_loss_full=float("nan"), val_loss="1.5")
    repo_files = {"config.json": json.dumps(config).encode(), "onnx/model.onnx": onnx_file.read_bytes()}  # NaN too
    repo_files["onnx/step.onnx"] = onnx_file.with_name("step.onnx").read_bytes()
    hub_url = "https://huggingface.co/testorg/tiny-gpt/resolve/main/"

    def from_the_hub(route):
        body = repo_files.get(route.request.url.removeprefix(hub_url))
        route.fulfill(status=200 if body else 404, body=body or b"", headers={"access-control-allow-origin": "*"})

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            route_cdn_to_local_copy(page)
            page.route(hub_url + "**", from_the_hub)
            asked = []
            page.on("request", lambda r: asked.append(r.url))
            for other in ("https://evil.example/org/name/resolve/main/", f"{preview}model/", "org/name.git"):
                page.goto(f"{preview}?model={other}")
                page.locator("#error").wait_for()
                assert page.locator("#error").text_content() == (
                    "?model= takes a model repo on the Hugging Face Hub, ORG/NAME or "
                    f"https://huggingface.co/ORG/NAME/resolve/main/, got '{other}': this page runs no model from anywhere else"
                )
                assert (
                    page.locator("#status").text_content() == "Not loaded." and page.locator("#generate").is_disabled()
                )
            fetched = [u for u in asked if "evil.example" in u.split("?")[0] or u.endswith(("config.json", ".onnx"))]
            assert fetched == [], fetched

            for model in ("testorg/tiny-gpt", hub_url):  # the repo id, and its URL
                page.goto(f"{preview}?model={model}")
                page.wait_for_selector("#generate:enabled", timeout=120_000)
                link = page.locator("#source a")
                assert link.text_content() == "testorg/tiny-gpt"
                assert link.get_attribute("href") == "https://huggingface.co/testorg/tiny-gpt"
                facts = page.locator("#facts").text_content()
                assert "Validation loss not recorded" in facts and "not recorded tokens trained" in facts, facts

            page.goto(preview)  # its own model: the preview's folder
            page.wait_for_selector("#generate:enabled", timeout=120_000)
            assert page.locator("#source").text_content() == "Model: the local folder (model/)"
        finally:
            browser.close()


@pytest.mark.slow
def test_preview_answers_head_as_get_and_serves_nothing_else(tiny_model_dir, tmp_path, monkeypatch):
    """HEAD gets GET's headers without the body; a path the page does not use is 404, whatever the current
    folder holds."""
    import httpx

    (tmp_path / "secret.txt").write_text("not for the web")
    monkeypatch.chdir(tmp_path)
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"onnx bytes")
    server = hub.preview_server(tiny_model_dir, onnx_file, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    try:
        for path in ("", "app.js", "model/config.json", "model/onnx/model.onnx"):
            get, head = httpx.get(url + path), httpx.head(url + path)
            assert get.status_code == head.status_code == 200 and head.content == b""
            assert {k: v for k, v in head.headers.items() if k != "date"} == {
                k: v for k, v in get.headers.items() if k != "date"
            }
        for path in ("secret.txt", "model/", "tests/", "app.py"):
            assert httpx.head(url + path).status_code == httpx.get(url + path).status_code == 404, path
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_bench_browser_only_reports_the_page_speed(prepared_data):
    """`python bench.py --browser-only`, the README's in-browser speed command, runs and reports both shapes."""
    require(Path(CHROMIUM).is_file() and ORT_LOCAL.is_dir(), "needs chromium and bash tests/install_test_tools.sh")
    import json

    args = [sys.executable, "bench.py", "--browser-only", "--data-dir", str(prepared_data)]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    browser = json.loads(proc.stdout)["browser"]
    assert browser["shakespeare-char (10.7M)"]["params"] == 10_770_816 and browser["cpu preset"]["params"] == 818_048
    for shape in browser.values():
        assert shape["1_threads"]["threads"] == 1 and shape["2_threads"]["threads"] == 2
        assert all(run["isolated"] for k, run in shape.items() if k.endswith("_threads"))
        assert all(
            run["chars_per_sec"] > 0 and run["first_char_ms"] > 0 for k, run in shape.items() if k.endswith("_threads")
        )
    assert "in the browser (Chromium, WASM)" in proc.stderr
