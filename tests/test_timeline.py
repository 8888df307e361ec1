"""timeline.jsonl: the same prompt sampled at step 0 and at every evaluation of a run. What training writes (one row
per evaluation plus step 0, each the saved model's own sample, character for character), that it leaves training's
random numbers alone, the model card's table, `sample_gpt2.py --timeline`, and the "How it learned" view on the
static page and in the Gradio app, in Chromium. The kill-and-resume test is tests/test_train.py's (it compares the
timelines too); the push test is tests/test_hub.py's. docs/timeline.png comes from tests/screenshot_timeline.py.
"""

import html
import json
import re
import sys
import threading
from pathlib import Path

import httpx
import pytest
import torch
from helpers import CHROMIUM, CHROMIUM_FLAGS, ROOT, free_port, make_tiny_model, require, server_process, train_tiny
from safetensors.torch import load_file

import hub
import sample_gpt2
from model_card import render_model_card, table_cell
from model_gpt2 import load_model
from run_log import Timeline, timeline_prompt
from timeline import TIMELINE, NoTimeline, card_rows, format_timeline, load_timeline
from timeline_view import curve
from train_config import ConfigError, config_from_preset

ORT_CDN = "https://cdn.jsdelivr.net/npm/onnxruntime-web@1.30.0/dist/"
ORT_LOCAL = ROOT / ".npm-test" / "node_modules" / "onnxruntime-web" / "dist"


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / TIMELINE).read_text().splitlines()]


def write_rows(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TIMELINE).write_text("".join(json.dumps(r) + "\n" for r in rows))


def fake_rows(n: int, texts=None) -> list[dict]:
    texts = texts or [f"ROMEO: sample {i}" for i in range(n)]
    return [
        dict(
            step=100 * i,
            tokens=2048 * 100 * i,
            seconds=i * 1.5,
            train_loss=4 - i / 10,
            val_loss=4.1 - i / 10,
            prompt="ROMEO:",
            text=t,
            chars=200,
            temperature=0.8,
            seed=1337,
        )
        for i, t in enumerate(texts)
    ]


# ---------------------------------------------------------------------------- writing it (fast)


def test_the_prompt_must_be_the_datas_and_the_default_falls_back(shakespeare_vocab):
    assert timeline_prompt("ROMEO:", shakespeare_vocab) == "ROMEO:"
    assert timeline_prompt("", shakespeare_vocab) == ""  # no timeline
    assert timeline_prompt("ROMEO:", "abc \n") == "\n"  # the default on a text without its letters: the text's start
    with pytest.raises(
        ConfigError, match=r"--timeline-prompt 'KING ☃:' has characters .* \('☃'\).*--timeline-prompt ''"
    ):
        timeline_prompt("KING ☃:", shakespeare_vocab)


def test_a_sample_leaves_trainings_random_numbers_and_mode_alone(shakespeare_vocab, tmp_path):
    model = make_tiny_model(shakespeare_vocab, dropout=0.1).train()
    cfg = config_from_preset("cpu", timeline_chars=30, seed=5)
    timeline = Timeline(cfg, shakespeare_vocab, tmp_path, enabled=True)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    timeline.record(model, 7, 1.25, {"train": 2.5, "val": 2.625})
    assert torch.equal(torch.get_rng_state(), state) and model.training
    timeline.record(model, 8, 1.5, {"train": 2.5, "val": float("nan")})  # broken weights: no text to show
    (row,) = rows_of(tmp_path)
    assert row == dict(
        step=7,
        tokens=7 * 16 * 128,
        seconds=1.25,
        train_loss=2.5,
        val_loss=2.625,
        prompt="ROMEO:",
        text=model.generate_text("ROMEO:", 30, temperature=0.8, seed=5),
        chars=30,
        temperature=0.8,
        seed=5,
    )
    assert not Timeline(cfg, shakespeare_vocab, tmp_path / "other", enabled=False).enabled  # rank > 0
    assert not Timeline(config_from_preset("cpu", timeline_prompt=""), shakespeare_vocab, tmp_path, True).enabled


def test_the_card_shows_four_rows_that_no_sample_can_break(tmp_path, shakespeare_vocab):
    from markdown_it import MarkdownIt

    hostile = ["ROMEO:\nx | y", "`code` **b** _i_", "<script>alert(1)</script> &amp;", "[a](b) ~~s~~ $x$ \\", "end"]
    rows = fake_rows(7, hostile + ["six", "last\n\nlines"])
    write_rows(tmp_path, rows)
    card = render_model_card(make_tiny_model(shakespeare_vocab).hub_config(), tmp_path)
    assert card_rows(rows) == [rows[0], rows[2], rows[4], rows[6]]  # step 0, two in between, the last
    assert "## How it learned" in card and f"[{TIMELINE}]({TIMELINE})" in card
    section = card.split("## How it learned")[1].split("\n## ")[0]
    rendered = MarkdownIt("commonmark").enable("table").render(section)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL) for row in rendered.split("<tr>")[2:]]
    assert rendered.count("<table>") == 1 and [len(c) for c in cells] == [4, 4, 4, 4]  # four rows of four cells
    for r, c in zip(card_rows(rows), cells):
        assert c[0] == f"{r['step']:,}" and c[2] == f"{r['val_loss']:.4f}"
        # each text shown as it is: escaped for HTML, line breaks as <br>, nothing read as markup
        assert c[3] == html.escape(r["text"], quote=False).replace("\n", "<br>")
    assert f"| 0 | 0 | 4.1000 | {table_cell(rows[0]['text'])} |" in card
    assert "## How it learned" not in render_model_card(make_tiny_model("abc").hub_config(), tmp_path / "none")


def test_sample_gpt2_prints_the_timeline_or_says_why_not(tmp_path, capsys):
    rows = fake_rows(3)
    write_rows(tmp_path / "run", rows)
    assert sample_gpt2.main(["--timeline", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == format_timeline(rows) and "=== step 200 · 409,600 tokens · val loss 3.9000" in printed
    assert sample_gpt2.main(["--model", str(tmp_path / "run"), "--timeline"]) == 0  # bare --timeline: --model's
    assert capsys.readouterr().out.strip() == format_timeline(rows)
    (tmp_path / "old").mkdir()
    assert sample_gpt2.main(["--timeline", str(tmp_path / "old")]) == 2
    assert "has no timeline.jsonl: it was trained before" in capsys.readouterr().err
    with pytest.raises(NoTimeline, match="could not download timeline.jsonl from the Hub repo org/name"):
        load_timeline("org/name")  # offline (conftest): said, not raised as a traceback


def test_the_apps_curve_marks_the_chosen_step():
    rows = fake_rows(4)
    rows[1]["train_loss"] = None  # a loss not recorded is left out, not drawn at 0
    df = curve(rows, 2)
    marker = df[df.series == "this step"]
    assert list(marker.step) == [200, 200] and list(marker.loss) == [df.loss.min(), df.loss.max()]
    assert len(df[df.series == "val loss"]) == 4 and len(df[df.series == "train loss"]) == 3


# ---------------------------------------------------------------------------- a real run (slow)


@pytest.fixture(scope="module")
def run_dir(prepared_data, tmp_path_factory) -> Path:
    """A short real run with dropout, evaluating at 20, 40, 60 (2 layers: the app's views want more than one)."""
    out = tmp_path_factory.mktemp("timeline") / "out"
    return train_tiny(prepared_data, out, n_layer=2, max_iters=60, eval_interval=20, dropout=0.1, timeline_chars=120)


@pytest.mark.slow
def test_a_run_samples_step_0_and_every_evaluation_and_the_saved_model_wrote_its_row(run_dir):
    rows = rows_of(run_dir)
    assert [r["step"] for r in rows] == [0, 20, 40, 60]
    assert rows[0]["val_loss"] > rows[-1]["val_loss"]
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "val_loss" in line]
    assert [(r["step"], r["val_loss"], r["train_loss"]) for r in rows[1:]] == [
        (r["step"], r["val_loss"], r["train_loss"]) for r in evals
    ]  # the evaluation's own losses
    assert all(r["tokens"] == r["step"] * 16 * 32 and r["prompt"] == "ROMEO:" and r["chars"] == 120 for r in rows)
    best = load_model(run_dir)
    (row,) = [r for r in rows if r["step"] == best.train_info["step"]]
    assert row["text"] == best.generate_text("ROMEO:", 120, temperature=row["temperature"], seed=row["seed"])
    assert len(row["text"]) == len("ROMEO:") + 120 and row["temperature"] == 0.8 and row["seed"] == 1337
    assert "## How it learned" in (run_dir / "README.md").read_text()  # the local card has it too


@pytest.mark.slow
def test_no_timeline_with_an_empty_prompt_and_training_is_the_same_without_it(prepared_data, run_dir, tmp_path):
    """--timeline-prompt '': no file. The weights are those of the run with a timeline, bit for bit (dropout on):
    the samples took none of training's random numbers."""
    out = train_tiny(
        prepared_data, tmp_path / "out", n_layer=2, max_iters=60, eval_interval=20, dropout=0.1, timeline_prompt=""
    )
    assert not (out / TIMELINE).exists()
    a, b = load_file(out / "resume.safetensors"), load_file(run_dir / "resume.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model."))


@pytest.mark.slow
def test_an_unknown_character_in_the_prompt_is_refused_before_training(prepared_data, tmp_path, capsys):
    import train_gpt2

    args = [
        f"--data-dir={prepared_data}",
        f"--out-dir={tmp_path / 'out'}",
        "--timeline-prompt=ROMEO ☃",
        "--max-iters=1",
    ]
    assert train_gpt2.main(args) == 2
    err = capsys.readouterr().err
    assert "--timeline-prompt 'ROMEO ☃' has characters the data's vocabulary lacks ('☃')" in err
    assert not (tmp_path / "out" / "resume.safetensors").exists()


# ---------------------------------------------------------------------------- the views, in Chromium (slow)


def browser(p):
    require(Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: apt-get install chromium")
    return p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)


def offline_page(b, **kwargs):
    """A page that reaches only loopback (and the pinned ONNX Runtime from its local copy, when installed)."""
    page = b.new_page(**kwargs)
    page.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/]).*"), lambda route: route.abort())
    if ORT_LOCAL.is_dir():
        types = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm"}

        def answer(route):
            path = ORT_LOCAL / route.request.url.removeprefix(ORT_CDN).split("?")[0]
            headers = {"access-control-allow-origin": "*", "cross-origin-resource-policy": "cross-origin"}
            body = path.read_bytes() if path.is_file() else b""
            route.fulfill(status=200 if body else 404, body=body, headers=headers, content_type=types.get(path.suffix))

        page.route(ORT_CDN + "**", answer)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


@pytest.fixture(scope="module")
def preview(run_dir, tmp_path_factory):
    """hub.py preview-static's server, for the run (with its timeline) at /a/ and a folder without one at /b/."""
    from export_onnx import export_onnx

    onnx_file = export_onnx(load_model(run_dir), tmp_path_factory.mktemp("onnx"))
    old = tmp_path_factory.mktemp("old")
    for name in ("config.json", "model.safetensors"):
        (old / name).write_bytes((run_dir / name).read_bytes())
    servers = [hub.preview_server(folder, onnx_file, port=0) for folder in (run_dir, old)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield [f"http://127.0.0.1:{s.server_port}/" for s in servers]
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.mark.slow
def test_the_static_page_shows_each_steps_text_and_says_why_when_there_is_none(preview, run_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    with_timeline, without = preview
    rows = rows_of(run_dir)
    with sync_playwright() as p:
        b = browser(p)
        try:
            page, errors = offline_page(b, viewport={"width": 1280, "height": 900})
            page.goto(with_timeline)
            page.wait_for_selector("#timeline[data-state=done]", timeout=60_000)
            slider, text = page.locator("#timeline-step"), page.locator("#timeline-text")
            assert slider.is_visible() and page.get_by_label("Step (arrow keys").get_attribute("id") == "timeline-step"
            assert text.text_content() == rows[-1]["text"]  # the last step first
            slider.focus()
            page.keyboard.press("Home")  # the keyboard moves it: step 0
            assert text.text_content() == rows[0]["text"]
            assert (
                f"Step 0 · 0 tokens · val loss {rows[0]['val_loss']:.4f}"
                in page.locator("#timeline-losses").text_content()
            )
            page.keyboard.press("ArrowRight")
            assert text.text_content() == rows[1]["text"]
            marker = page.locator("#timeline-marker")
            x1 = float(marker.get_attribute("x1"))
            page.keyboard.press("End")
            assert (
                text.text_content() == rows[-1]["text"] and float(marker.get_attribute("x1")) > x1
            )  # the marker moved
            assert page.locator("#timeline-curve polyline").count() == 2  # val and train
            phone, phone_errors = offline_page(b, viewport={"width": 375, "height": 800})
            phone.goto(with_timeline)
            phone.wait_for_selector("#timeline[data-state=done]", timeout=60_000)
            assert phone.evaluate(
                "document.getElementById('timeline').scrollWidth <= document.getElementById('timeline').clientWidth"
            )
            box = phone.locator("#timeline-curve").bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 375  # readable at a phone's width
            phone.screenshot(path=tmp_path / "phone.png", full_page=True)

            page.goto(without)
            page.wait_for_selector("#timeline[data-state=done]", timeout=60_000)
            assert page.locator("#timeline-status").text_content().startswith("This model has no timeline.jsonl")
            assert page.locator("#timeline-view").is_hidden() and page.locator("#timeline-step").is_hidden()
            assert errors == [] and phone_errors == []
        finally:
            b.close()


@pytest.mark.slow
def test_the_app_shows_each_steps_text_and_says_why_when_there_is_none(run_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    rows = rows_of(run_dir)
    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.json", "model.safetensors"):
        (old / name).write_bytes((run_dir / name).read_bytes())
    with sync_playwright() as p:
        b = browser(p)
        try:
            for folder in (run_dir, old):
                port = free_port()
                url = f"http://127.0.0.1:{port}/"
                cmd = [sys.executable, "app.py", "--model", str(folder), "--port", str(port), "--slots", "1"]
                log = tmp_path / f"{folder.name}.log"
                with server_process(cmd, lambda u=url: httpx.get(u, timeout=5).status_code == 200, log, cwd=ROOT):
                    page, errors = offline_page(b, viewport={"width": 1280, "height": 900})
                    page.goto(url)
                    if folder == old:
                        page.get_by_text("No timeline for this model").wait_for(timeout=60_000)
                        assert "has no timeline.jsonl" in page.locator("#timeline_missing").text_content()
                        assert page.locator("#timeline_step").count() == 0
                        continue
                    textbox = page.locator("#timeline_text textarea")
                    textbox.wait_for(timeout=60_000)
                    assert textbox.input_value() == rows[-1]["text"]
                    slider = page.locator("#timeline_step input[type=range]")
                    slider.focus()
                    page.keyboard.press("Home")
                    page.wait_for_function(
                        "t => document.querySelector('#timeline_text textarea').value === t", arg=rows[0]["text"]
                    )
                    page.keyboard.press("ArrowRight")
                    page.wait_for_function(
                        "t => document.querySelector('#timeline_text textarea').value === t", arg=rows[1]["text"]
                    )
                    assert (
                        f"step 20 · 10,240 tokens · val loss {rows[1]['val_loss']:.4f}"
                        in page.locator("#timeline_heading").text_content()
                    )
                    assert page.locator("#timeline_plot").is_visible()
                    assert errors == []
        finally:
            b.close()
