"""Inside the model: GPT.explain's numbers against transformers' eager GPT-2 and our own forward(), the ONNX
graph the static page runs (explain.onnx) against PyTorch, the page's "Inside the model" view in Chromium,
and the app's views and /explain API (explain_view.py) through gradio_client and a browser.

SAVE_SCREENSHOT=PATH keeps the static page's view (docs/explain.png comes from the quick-start model:
EXPLAIN_TEST_MODEL=DIR runs the page's tests on that folder instead of a short training run).
"""

import os
import re
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CHROMIUM, CHROMIUM_FLAGS, ROOT, free_port, make_tiny_model, require, server_process, train_tiny

import explain_view
from export_onnx import export_onnx
from model_gpt2 import GPT, load_model

ORT_CDN = "https://cdn.jsdelivr.net/npm/onnxruntime-web@1.30.0/dist/"  # what static/index.html loads
ORT_LOCAL = ROOT / ".npm-test" / "node_modules" / "onnxruntime-web" / "dist"  # tests/install_test_tools.sh
LINE = "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun."


def perturbed_model(vocab: str, bias: bool = True, **overrides) -> GPT:
    """Random weights far from the defaults (non-zero biases, LayerNorm weights far from 1): no mixed-up tensor hides."""
    model = make_tiny_model(vocab, seed=7, bias=bias, **overrides)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.5 if "ln_" in name else 0.1))
    return model.eval()


@pytest.fixture(scope="module")
def model(shakespeare_vocab) -> GPT:
    return perturbed_model(shakespeare_vocab, n_layer=3, n_head=4, block_size=64)


def ids_of(model: GPT, text: str) -> torch.Tensor:
    return torch.tensor([model.tokenizer.encode(text)])


# ---------------------------------------------------------------------------- GPT.explain


@pytest.mark.parametrize("bias", [True, False])
def test_attention_and_lens_equal_transformers_eager_gpt2(tmp_path, shakespeare_vocab, bias):
    from transformers import GPT2LMHeadModel

    model = perturbed_model(shakespeare_vocab, bias=bias)
    model.save_pretrained(tmp_path)
    hf = GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    text = LINE[: model.config.block_size]
    seen = model.explain(text)
    with torch.no_grad():
        out = hf(ids_of(model, text), output_attentions=True, output_hidden_states=True)
    theirs = torch.stack(out.attentions, dim=1)[0]  # (n_layer, n_head, T, T)
    assert (torch.tensor(seen["attention"]) - theirs).abs().max() < 1e-5
    # the lens: each block's output through ln_f and the head (transformers' last hidden state has ln_f applied)
    with torch.no_grad():
        lens = [hf.lm_head(hf.transformer.ln_f(h)) for h in out.hidden_states[1:-1]] + [out.logits]
    for layer, logits in enumerate(lens):
        probs, ids = logits[0].softmax(-1).topk(3, dim=-1)
        assert [[g["char"] for g in row] for row in seen["lens"][layer]] == [
            [model.tokenizer.vocab[i] for i in row] for row in ids.tolist()
        ]
        assert np.allclose([[g["prob"] for g in row] for row in seen["lens"][layer]], probs.numpy(), atol=1e-5)


def test_attention_rows_sum_to_one_and_nothing_is_above_the_diagonal(model):
    attention = torch.tensor(model.explain(LINE)["attention"])  # (L, H, T, T)
    L, H, T, _ = attention.shape
    assert (L, H, T) == (model.config.n_layer, model.config.n_head, model.config.block_size)
    assert torch.allclose(attention.sum(-1), torch.ones(L, H, T), atol=1e-6)
    assert (attention.triu(diagonal=1) == 0).all() and (attention >= 0).all()
    assert (attention[..., 0, 0] == 1).all()  # the first character sees only itself


def test_top_next_characters_are_softmax_of_forward_logits(model):
    seen = model.explain(LINE, top=5)
    ids = ids_of(model, LINE)[:, -model.config.block_size :]
    with torch.no_grad():
        probs = model(ids)[0][0].softmax(-1)  # the fast path: SDPA
    top_p, top_i = probs.topk(5, dim=-1)
    vocab = model.tokenizer.vocab
    assert [[c["char"] for c in row] for row in seen["top"]] == [[vocab[i] for i in row] for row in top_i.tolist()]
    assert np.allclose([[c["prob"] for c in row] for row in seen["top"]], top_p.numpy(), atol=1e-5)
    # what really came next, and its probability; nothing after the last character
    window = ids[0].tolist()
    assert seen["next"] == [vocab[i] for i in window[1:]] + [None]
    real = [probs[t, window[t + 1]].item() for t in range(len(window) - 1)]
    assert np.allclose(seen["next_prob"][:-1], real, atol=1e-5) and seen["next_prob"][-1] is None


def test_the_lens_after_the_last_layer_is_the_models_output(model):
    seen = model.explain(LINE, top=3)
    assert seen["lens"][-1] == seen["top"]  # the same numbers, not just close: both are the last layer's
    assert len(seen["lens"]) == model.config.n_layer and all(len(g) == 3 for g in seen["lens"][0])


def test_a_long_text_keeps_its_last_window_and_unknown_characters_are_left_out(model):
    block = model.config.block_size
    text = "☃" + LINE * 3 + "é"
    seen = model.explain(text)
    known = text.replace("☃", "").replace("é", "")
    assert "".join(seen["chars"]) == known[-block:] and seen["cut"] == len(known) - block
    assert seen["unknown"] == ["☃", "é"]
    short = model.explain("ab☃c")
    assert short["chars"] == ["a", "b", "c"] and short["cut"] == 0 and short["unknown"] == ["☃"]
    assert len(model.explain("a")["attention"][0][0]) == 1  # one character is a window too


@pytest.mark.parametrize(
    "text, top, message",
    [
        ("", 5, "the text is empty: give the model at least one character to read"),
        ("☃é☃", 5, "none of the text's characters are in the model's vocabulary ('☃' 'é'): write with the characters"),
        (None, 5, "text must be a string, got NoneType"),
        ("ROMEO", 0, "top must be an integer >= 1, got 0"),
    ],
)
def test_bad_input_is_a_value_error_that_says_what_to_change(model, text, top, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        model.explain(text, top=top)


def test_explain_leaves_the_model_as_it_found_it(model):
    model.train()
    try:
        assert model.explain("ROMEO")["chars"] == list("ROMEO") and model.training
    finally:
        model.eval()


# ---------------------------------------------------------------------------- explain.onnx (onnxruntime)


def explain_onnx_of(model: GPT, folder: Path) -> Path:
    export_onnx(model, folder)
    path = folder / "onnx" / "explain.onnx"
    require(path.is_file(), "export_onnx.py writes no onnx/explain.onnx yet")
    return path


@pytest.mark.parametrize("bias", [True, False])
def test_explain_onnx_outputs_equal_pytorch(tmp_path, shakespeare_vocab, bias):
    import onnxruntime

    model = perturbed_model(shakespeare_vocab, bias=bias)
    sess = onnxruntime.InferenceSession(str(explain_onnx_of(model, tmp_path)), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", "attention", "lens_logits"]
    for T in (1, 17, model.config.block_size):  # any window, up to the whole context
        ids = torch.randint(0, len(shakespeare_vocab), (1, T), generator=torch.Generator().manual_seed(T))
        with torch.no_grad():
            expected = [x.numpy() for x in model.internals(ids)]
        got = sess.run(None, {"input_ids": ids.numpy()})
        for name, a, b in zip(("logits", "attention", "lens_logits"), got, expected, strict=True):
            assert a.shape == b.shape, name
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=0, err_msg=name)


# ---------------------------------------------------------------------------- the app's views (no server)


def test_the_api_answer_is_explain_at_one_position(model):
    seen = model.explain(LINE)
    T = len(seen["chars"])
    for position, i in ((-1, T - 1), (0, 0), (10, 10), (-T, 0)):
        got = explain_view.explain_position(model, LINE, position)
        assert got["position"] == i and got["char"] == seen["chars"][i] and got["top"] == seen["top"][i]
        assert got["next"] == seen["next"][i] and got["next_prob"] == seen["next_prob"][i]
        assert got["attention"] == [[head[i][: i + 1] for head in layer] for layer in seen["attention"]]
        assert got["lens"] == [layer[i] for layer in seen["lens"]]
    for bad in (T, -T - 1, 1.5, "3", True):
        with pytest.raises(ValueError, match=f"position must be an integer from {-T} to {T - 1}"):
            explain_view.explain_position(model, LINE, bad)


def test_the_app_view_shows_the_numbers_and_every_head(model):
    seen = model.explain(LINE)
    page = explain_view.view_html(seen, 5, 1, 2, model.config.block_size)
    for c in seen["top"][5]:
        assert f'data-prob="{c["prob"]:.3f}"' in page
    assert "data-real=true" in page and "Showing the last 64 characters" in page
    image = explain_view.heads_image(seen, 1, 2)
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert image.shape[0] > model.config.n_layer * 64 and image.shape[1] > model.config.n_head * 64


# ---------------------------------------------------------------------------- the static page in Chromium


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, prepared_data) -> Path:
    if os.environ.get("EXPLAIN_TEST_MODEL"):
        return Path(os.environ["EXPLAIN_TEST_MODEL"])
    out = tmp_path_factory.mktemp("trained") / "out"
    return train_tiny(prepared_data, out, max_iters=60, eval_interval=30, n_layer=2)


@pytest.fixture(scope="module")
def exported(trained_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("onnx")
    explain_onnx_of(load_model(trained_dir), folder)
    return folder / "onnx"


def route_cdn_to_local_copy(page):
    """As in test_static_space.py: the pinned CDN URL answered from the npm install; nothing else leaves loopback."""
    types = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def answer(route):
        path = ORT_LOCAL / route.request.url.removeprefix(ORT_CDN).split("?")[0]
        headers = {"access-control-allow-origin": "*", "cross-origin-resource-policy": "cross-origin"}
        if not path.is_file():
            return route.fulfill(status=404)
        route.fulfill(status=200, body=path.read_bytes(), headers=headers, content_type=types.get(path.suffix))

    page.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/]).*"), lambda route: route.abort())
    page.route(ORT_CDN + "**", answer)


def serve(path: Path):
    """A route handler that answers with the file at `path`."""
    return lambda route: route.fulfill(path=str(path))


def close(shown: str, value: float) -> bool:
    """A number the page shows with 3 decimals equals `value` to 3 decimals (rounding either way at the edge)."""
    return abs(float(shown) - value) <= 0.0005 + 1e-6


@pytest.mark.slow
def test_the_static_page_shows_what_pytorch_computes(trained_dir, exported, tmp_path):
    require(Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: apt-get install chromium")
    require(ORT_LOCAL.is_dir(), "onnxruntime-web not installed: run bash tests/install_test_tools.sh")
    require("gptPage" in (ROOT / "static" / "app.js").read_text(), "static/app.js does not expose window.gptPage yet")
    from playwright.sync_api import sync_playwright

    import hub

    model = load_model(trained_dir)
    block = model.config.block_size
    server = hub.preview_server(trained_dir, exported / "model.onnx", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    extra = {
        url + "explain.js": ROOT / "static" / "explain.js",
        url + "model/onnx/explain.onnx": exported / "explain.onnx",
    }
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            route_cdn_to_local_copy(page)
            for address, path in extra.items():  # whether or not the preview serves them itself
                page.route(address, serve(path))
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("#generate:enabled", timeout=120_000)

            def look(text):
                page.locator("#prompt").fill(text)
                page.evaluate("document.getElementById('output').textContent = ''")
                page.evaluate("document.getElementById('inside').dataset.state = ''")
                if not page.locator("#inside").evaluate("d => d.open"):
                    page.locator("#inside > summary").click()  # opening it looks at the text
                else:
                    page.locator("#inside-run").click()
                page.wait_for_function("document.getElementById('inside').dataset.state === 'done'", timeout=60_000)

            text = LINE[: block - 2] if block > len(LINE) else LINE[-block:]
            look(text)
            seen = model.explain(text)
            assert page.locator("#inside-error").is_hidden()
            strip = page.locator("#inside-strip [role=option]")
            assert strip.count() == len(seen["chars"])
            i, layer, head = 9, model.config.n_layer - 1, model.config.n_head - 1
            page.locator(f"#inside-heads button[data-layer='{layer}'][data-head='{head}']").click()
            strip.nth(i).click()
            assert strip.nth(i).get_attribute("aria-selected") == "true"

            def check_position(i):
                rows = page.locator("#inside-candidates li[data-char]")
                shown = [(r.get_attribute("data-char"), r.get_attribute("data-prob")) for r in rows.all()]
                expected = seen["top"][i]
                assert [ch for ch, _ in shown[:5]] == [c["char"] for c in expected]
                assert all(close(prob, c["prob"]) for (_, prob), c in zip(shown, expected))
                real = page.locator("#inside-candidates li[data-real=true]")
                assert real.get_attribute("data-char") == seen["next"][i]
                assert close(real.get_attribute("data-prob"), seen["next_prob"][i])
                weights = [strip.nth(j).get_attribute("data-weight") for j in range(len(seen["chars"]))]
                row = seen["attention"][layer][head][i]
                assert all(close(w, row[j]) for j, w in enumerate(weights)), (weights, row)
                lens = page.locator("#inside-lens tr[data-layer]")
                assert lens.count() == model.config.n_layer
                for n in range(model.config.n_layer):
                    best = seen["lens"][n][i][0]
                    assert lens.nth(n).get_attribute("data-char") == best["char"]
                    assert close(lens.nth(n).get_attribute("data-prob"), best["prob"])

            check_position(i)
            # the keyboard: the chosen character is the strip's one tab stop; arrows, Home and End move
            assert page.evaluate("document.activeElement.id") == f"inside-ch-{i}"
            page.keyboard.press("ArrowRight")
            page.keyboard.press("ArrowRight")
            assert strip.nth(i + 2).get_attribute("aria-selected") == "true"
            assert page.evaluate("document.activeElement.id") == f"inside-ch-{i + 2}"
            check_position(i + 2)
            page.keyboard.press("Home")
            check_position(0)
            page.locator("#inside-run").focus()
            page.keyboard.press("Tab")
            page.keyboard.press("End")
            assert page.evaluate("document.activeElement.id") == f"inside-ch-{len(seen['chars']) - 1}"
            assert "nothing came next" in page.locator("#inside-candidates").text_content()
            if os.environ.get("SAVE_SCREENSHOT"):
                page.locator("#inside-strip [role=option]").nth(min(40, len(seen["chars"]) - 1)).click()
                page.locator("#inside").screenshot(path=os.environ["SAVE_SCREENSHOT"])

            # bad text: a message on the page, no exception
            look(LINE * 3)
            note = page.locator("#inside-note").text_content()
            assert f"Showing the last {block} characters" in note
            assert strip.count() == block
            look("☃é")
            assert (
                page.locator("#inside-error")
                .text_content()
                .startswith("None of the text's characters are in the model's vocabulary")
            )
            look("")
            assert page.locator("#inside-error").text_content().startswith("There is no text to look inside yet")

            # after a generation the open view looks at the prompt + generated text
            page.locator("#prompt").fill("ROMEO:")
            page.locator("#temperature").fill("0")
            page.locator("#max_tokens").fill("20")
            page.evaluate("document.getElementById('inside').dataset.state = ''")
            page.locator("#generate").click()
            page.wait_for_function("document.getElementById('inside').dataset.state === 'done'", timeout=60_000)
            generated = model.generate_text("ROMEO:", 20, temperature=0)
            assert page.locator("#output").text_content() == generated
            assert "".join(o.get_attribute("data-char") for o in strip.all()) == generated[-block:]
            assert errors == []
        finally:
            browser.close()
            server.shutdown()
            server.server_close()


@pytest.mark.slow
def test_the_static_page_reads_on_a_phone(trained_dir, exported):
    require(Path(CHROMIUM).is_file() and ORT_LOCAL.is_dir(), "needs chromium and bash tests/install_test_tools.sh")
    require("gptPage" in (ROOT / "static" / "app.js").read_text(), "static/app.js does not expose window.gptPage yet")
    from playwright.sync_api import sync_playwright

    import hub

    server = hub.preview_server(trained_dir, exported / "model.onnx", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 375, "height": 800})
            route_cdn_to_local_copy(page)
            page.route(url + "explain.js", serve(ROOT / "static" / "explain.js"))
            page.route(url + "model/onnx/explain.onnx", serve(exported / "explain.onnx"))
            page.goto(url)
            page.wait_for_selector("#generate:enabled", timeout=120_000)
            page.locator("#prompt").fill(LINE)
            page.locator("#inside > summary").click()
            page.wait_for_function("document.getElementById('inside').dataset.state === 'done'", timeout=60_000)
            assert page.evaluate("document.documentElement.scrollWidth") <= 375  # nothing wider than the phone
            assert page.locator("#inside-heads canvas").first.bounding_box()["width"] >= 20
        finally:
            browser.close()
            server.shutdown()
            server.server_close()


# ---------------------------------------------------------------------------- the app: API and browser


@pytest.mark.slow
def test_the_app_explains_through_its_api_and_in_the_browser(trained_dir, tmp_path):
    import httpx
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    model = load_model(trained_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [sys.executable, "app.py", "--model", str(trained_dir), "--port", str(port), "--slots", "2"]
    with server_process(cmd, lambda: httpx.get(url, timeout=5).status_code == 200, tmp_path / "app.log", 120, cwd=ROOT):
        client = Client(url, verbose=False, analytics_enabled=False)
        for position in (-1, 0, 7):
            got = client.predict(LINE, position, api_name="/explain")
            expected = explain_view.explain_position(model, LINE, position)
            assert got.keys() == expected.keys()
            assert {k: got[k] for k in ("chars", "cut", "unknown", "position", "char", "next")} == {
                k: expected[k] for k in ("chars", "cut", "unknown", "position", "char", "next")
            }
            assert [c["char"] for c in got["top"]] == [c["char"] for c in expected["top"]]
            assert np.allclose([c["prob"] for c in got["top"]], [c["prob"] for c in expected["top"]], atol=1e-6)
            assert np.allclose(np.array(got["attention"]), np.array(expected["attention"]), atol=1e-6)
            assert [g["char"] for layer in got["lens"] for g in layer] == [
                g["char"] for layer in expected["lens"] for g in layer
            ]
        for text, position, message in [
            ("", -1, "the text is empty"),
            ("☃", -1, "none of the text's characters are in the model's vocabulary"),
            ("ROMEO", 5, "position must be an integer from -5 to 4"),
        ]:
            with pytest.raises(AppError, match=message):
                client.predict(text, position, api_name="/explain")

        require(Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: apt-get install chromium")
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url)
                page.locator("#prompt textarea").fill("ROMEO:")
                page.locator("#max_tokens input").fill("40")
                temperature = page.locator("#temperature input[type=number]")
                temperature.fill("0")
                temperature.press("Enter")
                page.get_by_role("button", name="Generate").click()
                text = model.generate_text("ROMEO:", 40, temperature=0)
                page.wait_for_function(
                    "t => document.querySelector('#output textarea').value === t", arg=text, timeout=60_000
                )
                assert not page.locator("#output textarea").is_editable()  # still the page's output, read-only
                page.get_by_text("Inside the model").click()
                page.locator("#inside_look").click()
                page.locator("#inside-candidates li[data-char]").first.wait_for(timeout=60_000)
                seen = model.explain(text)
                shown = page.locator("#inside-candidates li[data-char]")
                for c, row in zip(seen["top"][-1], shown.all(), strict=False):
                    assert row.get_attribute("data-char") == c["char"] and close(
                        row.get_attribute("data-prob"), c["prob"]
                    )
                weights = [s.get_attribute("data-weight") for s in page.locator("#inside-strip span").all()]
                assert all(close(w, x) for w, x in zip(weights, seen["attention"][0][0][-1], strict=True))
                page.locator("#inside_html img, #inside img, img").first.wait_for(timeout=30_000)  # the heads' grid
            finally:
                browser.close()


def test_the_app_view_builds_for_one_layer_one_head_and_a_context_of_one(shakespeare_vocab):
    import gradio as gr

    from explain_view import add_explain_view

    smallest = make_tiny_model(shakespeare_vocab, n_layer=1, n_head=1, n_embd=8, block_size=1)
    with gr.Blocks():
        add_explain_view(smallest, gr.Textbox())
    assert smallest.explain("RO")["chars"] == ["O"]  # the last window: one character
