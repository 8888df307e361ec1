"""The Gradio app end to end: the real `python app.py --model DIR --port P` command, its API through
gradio_client, 16 users at once, the streamed messages themselves (Gradio's SSE protocol), a full server's
waiting line and busy error, cancel and disconnect, and a real browser (Debian's chromium driven by Playwright).

The model is the random-weight tiny_model_dir, or APP_TEST_MODEL=DIR (a trained model gives a nicer
screenshot; SAVE_SCREENSHOT=PATH keeps the browser's screenshot there, e.g. docs/app.png).
"""

import asyncio
import contextlib
import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from helpers import CHROMIUM, CHROMIUM_FLAGS, ROOT, free_port, make_tiny_model, require, server_process

import app
from engine import Engine
from model_gpt2 import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:
    return Path(os.environ.get("APP_TEST_MODEL") or tiny_model_dir)


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir)


@pytest.fixture(scope="module")
def server_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("app") / "app.log"


@contextlib.contextmanager
def run_app(model_dir, log: Path, *args: str):
    """`python app.py --model DIR --port P [args]`, as a user runs it; yields its URL once it answers HTTP 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [sys.executable, "app.py", "--model", str(model_dir), "--port", str(port), *args]
    # import gradio ~5 s + launch ~5 s on a quiet machine
    with server_process(cmd, lambda: httpx.get(url, timeout=5).status_code == 200, log, timeout=120, cwd=ROOT):
        yield url


@pytest.fixture(scope="module")
def server(model_dir, server_log):
    with run_app(model_dir, server_log) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False, analytics_enabled=False)


def generate(client, *args):
    """The API call a user makes: prompt, max tokens, temperature, top N[, top-p, seed]."""
    return client.predict(*args, api_name="/generate")


def test_greedy_output_is_the_prompt_plus_the_models_text(client, model):
    text, colored = generate(client, "ROMEO:", 40, 0, 0)
    assert text == model.generate_text("ROMEO:", 40, temperature=0)
    assert len(text) == len("ROMEO:") + 40
    # the coloured view holds the same text, each generated character labelled by its probability
    assert "".join(span["token"] for span in colored) == text
    assert {span["class_or_confidence"] for span in colored} - {None} <= {"p>0.8", "0.5-0.8", "0.2-0.5", "<0.2"}


def test_defaults_empty_prompt_and_top_n(client, model):
    # only the prompt given: 100 characters at temperature 0.7 over all characters (the seed is named to compare)
    text, _ = client.predict("First Citizen:\n", seed=5, api_name="/generate")
    assert text == model.generate_text("First Citizen:\n", 100, temperature=0.7, seed=5)
    text, _ = generate(client, "", 10, 0, 0)  # an empty prompt means a single space
    assert text == model.generate_text(" ", 10, temperature=0)
    for all_characters in (None, 0, -3):  # top N empty or <= 0: all characters
        text, _ = generate(client, "KING:", 40, 1.0, all_characters, 1.0, 11)
        assert text == model.generate_text("KING:", 40, temperature=1.0, seed=11)
    text, _ = generate(client, "KING:", 40, 1.0, 1, 1.0, 11)  # top 1 is greedy
    assert text == model.generate_text("KING:", 40, temperature=0)


def test_a_very_long_prompt_keeps_its_end(client, model):
    prompt = "ROMEO: " * 3000  # 21,000 characters
    text, _ = generate(client, prompt, 20, 0, 0)
    kept = prompt[-app.MAX_PROMPT :]
    assert text == model.generate_text(kept, 20, temperature=0)


def test_a_seed_repeats_the_text(client):
    a = generate(client, "To be, or not", 60, 1.0, 0, 0.95, 123)[0]
    assert generate(client, "To be, or not", 60, 1.0, 0, 0.95, 123)[0] == a
    assert generate(client, "To be, or not", 60, 1.0, 0, 0.95, 124)[0] != a


def test_output_streams_as_it_is_generated(client):
    job = client.submit("ROMEO:", 400, 0.8, 0, api_name="/generate")
    partials = [out[0] for out in job]
    final = job.result()[0]
    assert len(final) == len("ROMEO:") + 400
    assert len(set(partials)) > 1, "the text arrived in one piece, not streamed"
    assert all(final.startswith(p) for p in partials)


@pytest.mark.parametrize(
    "args, message",
    [
        (("ROMEO:", 0, 0.7, 0), "max tokens must be an integer from 1 to 2000"),
        (("ROMEO:", 5000, 0.7, 0), "max tokens must be an integer from 1 to 2000"),
        (("ROMEO:", 50, 1.5, 0), r"temperature must be a number from 0 to 1"),
        (("ROMEO:", 50, 0.7, 0, 0.0), r"top-p must be in \(0, 1\]"),
        (("ROMEO:", 50, 0.7, 0, 1.0, 1.5), "seed must be an integer"),
    ],
)
def test_out_of_range_values_say_the_valid_range(client, args, message):
    with pytest.raises(AppError, match=message):
        generate(client, *args)


def call_http(url: str, data: list) -> tuple[str, str]:
    """The API over plain HTTP, as curl calls it: (SSE event name of the outcome, its data)."""
    event_id = httpx.post(f"{url}gradio_api/call/generate", json={"data": data}, timeout=30).json()["event_id"]
    lines = httpx.get(f"{url}gradio_api/call/generate/{event_id}", timeout=60).text.splitlines()
    events = [(e.split(": ", 1)[1], d.split(": ", 1)[1]) for e, d in zip(lines, lines[1:]) if e.startswith("event: ")]
    return events[-1]


def test_http_api_missing_inputs_take_the_defaults(server, model):
    event, data = call_http(server, ["ROMEO:"])  # max tokens 100, temperature 0.7, top N all, top-p 1, seed random
    assert event == "complete", data
    assert len(json.loads(data)[0]) == len("ROMEO:") + 100
    event, data = call_http(server, ["ROMEO:", 30, 0])  # greedy: the text is known
    assert event == "complete" and json.loads(data)[0] == model.generate_text("ROMEO:", 30, temperature=0)


def test_http_api_rejects_booleans_with_one_log_line(server, server_log):
    before = server_log.read_text()
    for data, message in [
        (["ROMEO:", True, 0.7], "max tokens must be an integer from 1 to 2000, got True"),
        (["ROMEO:", 20, True], "temperature must be a number from 0 to 1 (0 = greedy), got True"),
    ]:
        event, got = call_http(server, data)
        assert event == "error" and message in json.loads(got)["error"], got
    time.sleep(0.5)
    new = server_log.read_text()[len(before) :]
    assert "Traceback" not in new
    assert [line for line in new.splitlines() if "rejected" in line] == [
        "rejected a request: max tokens must be an integer from 1 to 2000, got True",
        "rejected a request: temperature must be a number from 0 to 1 (0 = greedy), got True",
    ], new


def test_unknown_characters_are_left_out(client):
    text, _ = generate(client, "ROMEO: ☃", 30, 0.7, 0)
    assert text.startswith("ROMEO: ") and "☃" not in text
    assert len(text) == len("ROMEO: ") + 30


@pytest.fixture(scope="module")
def big_model_dir(shakespeare_vocab, tmp_path_factory) -> Path:
    """A 10.7M-parameter model (the shakespeare-char shape, random weights): its 2000 characters take
    seconds, long enough to act while it runs."""
    folder = tmp_path_factory.mktemp("big_model")
    make_tiny_model(shakespeare_vocab, n_layer=6, n_head=6, n_embd=384, block_size=256).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def one_slot_server(big_model_dir):
    """One slot and a line of one."""
    with run_app(big_model_dir, big_model_dir / "app.log", "--slots", "1", "--max-waiting", "1") as url:
        yield url, load_model(big_model_dir)


CROWD_SLOTS, CROWD_LINE = 2, 40  # together more than the 40 events Gradio runs at once unless told otherwise


@pytest.fixture(scope="module")
def crowded_server(big_model_dir):
    """Two slots and a line of 40, the decode loop on one thread (its texts take longer: time to act)."""
    args = ("--slots", str(CROWD_SLOTS), "--max-waiting", str(CROWD_LINE), "--threads", "1")
    with run_app(big_model_dir, big_model_dir / "crowded.log", *args) as url:
        yield url


def new_user(url) -> Client:
    # one Client per user: Gradio's cancel stops every running event of a session, like closing its tab
    return Client(url, verbose=False, analytics_enabled=False)


def generate_fn(url) -> int:
    return next(d["id"] for d in httpx.get(url + "config").json()["dependencies"] if d.get("api_name") == "generate")


def sse_messages(url, data):
    """The generate event over Gradio's own protocol, as a browser runs it: (bytes, message) per SSE message."""
    fn = generate_fn(url)
    session = uuid.uuid4().hex
    join = {"data": data, "fn_index": fn, "session_hash": session, "event_data": None, "trigger_id": None}
    httpx.post(url + "gradio_api/queue/join", json=join).raise_for_status()
    with httpx.stream("GET", url + f"gradio_api/queue/data?session_hash={session}", timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                yield len(line), message
                if message["msg"] == "process_completed":
                    return


SIXTEEN = [  # (prompt, max tokens, temperature, top N, top-p, seed): one user each
    (app.EXAMPLES[i % 4], 600 + 80 * i, (0, 0.5, 0.8, 1.0)[i % 4], (0, 5, 0, 20)[i // 4], (1.0, 0.9)[i % 2], i)
    for i in range(16)
]


def test_sixteen_users_at_once_each_get_their_own_text(server, model):
    users = [new_user(server) for _ in range(16)]
    start = threading.Barrier(16)

    def one(i):
        start.wait()  # all 16 ask at the same moment
        t0 = time.perf_counter()
        job = users[i].submit(*SIXTEEN[i], api_name="/generate")
        first = None
        for _ in job:
            first = first or time.perf_counter() - t0
        return first, time.perf_counter() - t0, job.result()[0]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    for (prompt, n, temperature, top_n, top_p, seed), (_, _, text) in zip(SIXTEEN, results):
        # greedy or seeded among 15 others: the very text generate_text gives alone
        assert text == model.generate_text(
            prompt, n, temperature=temperature, top_k=top_n or None, top_p=top_p, seed=seed
        )
    # they ran together: every user saw text before the first of them finished (two at a time would not)
    assert max(first for first, _, _ in results) < min(finish for _, finish, _ in results)


def test_each_streamed_update_carries_only_the_new_text(server, model):
    sizes, text, final = [], None, None
    for size, message in sse_messages(server, ["ROMEO:", 2000, 0.8, 0, 1.0, 3]):
        if message["msg"] == "process_generating":
            data = message["output"]["data"][0]
            if text is None:  # the first update holds the value itself
                text = data
            else:  # then only edits: the characters added since the last update
                assert all(op == "append" and path == [] for op, path, _ in data), data
                text += "".join(chunk for _, _, chunk in data)
                sizes.append(size)
        elif message["msg"] == "process_completed":
            final, final_size = message["output"]["data"][0], size
    assert final == text == model.generate_text("ROMEO:", 2000, temperature=0.8, seed=3)
    assert len(sizes) > 5, "not streamed"
    # no update grows with the text: the last ones are no bigger than the first ones, and all of them
    # together are a few times the size of the final message (which holds everything once)
    assert max(sizes) < 0.75 * final_size
    assert sum(sizes) < 5 * final_size


def wait_for_text(job, timeout=60):
    deadline = time.monotonic() + timeout
    while not any(isinstance(out[0], str) and len(out[0]) > 6 for out in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), "no text arrived"
        time.sleep(0.01)
    return time.monotonic()


def assert_slot_freed_early(started, stopped_at, stopped_chars, next_request):
    """`next_request` gets the slot and finishes long before the stopped request would have written its 2000."""
    rate = stopped_chars / max(stopped_at - started, 1e-3)  # the stopped request's characters per second
    next_request()
    assert time.monotonic() - stopped_at < 0.5 * (2000 - stopped_chars) / rate, "the slot was not freed at once"


def greedy_king(url, model):
    assert new_user(url).predict("KING:", 30, 0, 0, api_name="/generate")[0] == model.generate_text(
        "KING:", 30, temperature=0
    )


def test_a_full_server_says_who_waits_refuses_more_and_cancel_frees_the_slot(one_slot_server):
    url, model = one_slot_server
    first, second, third = new_user(url), new_user(url), new_user(url)
    running = first.submit("ROMEO:", 2000, 0.8, 0, api_name="/generate")
    started = wait_for_text(running)
    waiting = second.submit("To be, or not", 30, 0, 0, api_name="/generate")
    deadline = time.monotonic() + 30  # the page says it waits, and where in the line
    while not any(
        isinstance(o[0], dict) and o[0].get("label") == "Waiting for a free slot: 1 in line" for o in waiting.outputs()
    ):
        assert time.monotonic() < deadline, waiting.outputs()
        time.sleep(0.01)
    with pytest.raises(AppError, match="The server is busy: 1 texts are being written and 1 more wait in line"):
        third.predict("KING:", 10, 0, 0, api_name="/generate")
    running.cancel()
    stopped_at, chars = time.monotonic(), len(running.outputs()[-1][0]) - len("ROMEO:")

    def the_waiting_one_runs():
        assert waiting.result(timeout=60)[0] == model.generate_text("To be, or not", 30, temperature=0)

    assert_slot_freed_early(started, stopped_at, chars, the_waiting_one_runs)
    greedy_king(url, model)  # and the slot serves the next one


def test_a_client_that_disconnects_frees_its_slot(one_slot_server):
    url, model = one_slot_server
    text, updates = None, 0
    for _, message in sse_messages(url, ["ROMEO:", 2000, 0.8, 0, 1.0, 1]):
        if message["msg"] == "process_generating":
            data = message["output"]["data"][0]
            if text is None:
                text, started = data, time.monotonic()
            else:
                text += "".join(chunk for _, _, chunk in data)
            updates += 1
            if updates == 10:
                break  # closes the connection, as closing the browser tab does
    assert_slot_freed_early(started, time.monotonic(), len(text) - len("ROMEO:"), lambda: greedy_king(url, model))


def test_browser_generates_with_the_chosen_settings(server, model, tmp_path):
    require(Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    prompt, n = "ROMEO:", 160
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(server)
            page.locator("#prompt textarea").fill(prompt)
            page.locator("#max_tokens input").fill(str(n))
            temperature = page.locator("#temperature input[type=number]")
            temperature.fill("0.8")
            temperature.press("Enter")
            page.get_by_text("More options").click()
            page.locator("#seed input").fill("7")
            page.get_by_role("button", name="Generate").click()
            # the text streams in: wait for the final value, not the first change
            page.wait_for_function(
                "n => document.querySelector('#output textarea').value.length === n",
                arg=len(prompt) + n,
                timeout=60_000,
            )
            text = page.locator("#output textarea").input_value()
            # the page's settings reached the model: the same seed gives the same text here
            assert text == model.generate_text(prompt, n, temperature=0.8, seed=7)
            page.locator("#colored").get_by_text("p>0.8").first.wait_for()  # the coloured view's legend
            page.screenshot(path=tmp_path / "app.png", full_page=True)
            if os.environ.get("SAVE_SCREENSHOT"):
                page.screenshot(path=os.environ["SAVE_SCREENSHOT"], full_page=True)
            # a character the model never saw: left out, and the page says which
            page.locator("#prompt textarea").fill("ROMEO: ☃")
            page.get_by_role("button", name="Generate").click()
            page.locator(".toast-body", has_text="☃").wait_for(timeout=30_000)
        finally:
            browser.close()


def test_a_stopped_decode_loop_gets_a_one_line_error_not_a_traceback(model):
    import asyncio

    import gradio as gr

    engine = Engine(model, slots=1)
    engine.close()
    generate = app.make_generate(model, engine)
    with pytest.raises(gr.Error, match=r"The text generator is not running \(the decode loop has stopped; restart"):
        asyncio.run(generate("ROMEO:", 10).__anext__())


def test_without_a_model_the_app_says_how_to_get_one(tmp_path, monkeypatch):
    import app

    monkeypatch.chdir(tmp_path)  # no out/ here
    monkeypatch.delenv("GPT_MODEL", raising=False)
    with pytest.raises(SystemExit) as e:
        app.main([])
    assert "python train_gpt2.py --preset cpu --out-dir out" in str(e.value.code)
    assert "--model" in str(e.value.code) and "GPT_MODEL" in str(e.value.code)
    # the Space variable is read when --model is not given
    monkeypatch.setenv("GPT_MODEL", str(tmp_path / "missing"))
    with pytest.raises(SystemExit) as e:
        app.main([])
    assert "missing" in str(e.value.code)


def test_a_model_too_large_or_damaged_is_refused_with_the_reason(tiny_model_dir, tmp_path):
    from test_failures import cut, huge_model_dir

    huge = huge_model_dir(tiny_model_dir, tmp_path)
    with pytest.raises(SystemExit) as e:
        app.main(["--model", str(huge)])
    assert f"Could not load the model '{huge}': the model '{huge}' (" in str(e.value.code)
    assert "GB to load (weights, KV cache); this machine has" in str(e.value.code)
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, damaged)
    cut(damaged / "model.safetensors")
    with pytest.raises(SystemExit) as e:
        app.main(["--model", str(damaged)])
    assert f"{damaged / 'model.safetensors'} is damaged: it cannot be read as safetensors" in str(e.value.code)


# ---------------------------------------------------------------------------- one user never ends another's request


def test_a_tiny_temperature_sent_by_one_user_leaves_the_page_of_another_writing(crowded_server):
    """One user streams 1,000 characters in the page while another sends temperature 1e-40 through the
    HTTP API: the page's text completes; the API request completes too, or fails alone saying why."""
    require(Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    url, n = crowded_server, 1000
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.locator("#prompt textarea").fill("ROMEO:")
            page.locator("#max_tokens input").fill(str(n))
            page.get_by_role("button", name="Generate").click()
            page.wait_for_function("document.querySelector('#output textarea').value.length > 26", timeout=60_000)
            event, data = call_http(url, ["KING:", 50, 1e-40])  # while the page's text is being written
            shown = len(page.locator("#output textarea").input_value())
            page.wait_for_function(
                """n => document.querySelector('#output textarea').value.length === n
                       || document.querySelector('.toast-body')""",
                arg=len("ROMEO:") + n,
                timeout=120_000,
            )
            assert page.locator(".toast-body").count() == 0, page.locator(".toast-body").all_text_contents()
            assert len(page.locator("#output textarea").input_value()) == len("ROMEO:") + n
            assert shown < len("ROMEO:") + n, "the page had finished before the other request came: nothing was tested"
            if event == "complete":
                assert len(json.loads(data)[0]) == len("KING:") + 50
            else:  # alone, saying which settings it could not sample with
                assert event == "error" and "temperature 1e-40" in data, (event, data)
        finally:
            browser.close()


async def follow(http: httpx.AsyncClient, url: str, fn: int, data: list, messages: list):
    """One user over Gradio's own protocol (as the page runs it): each message into `messages`, until the last."""
    session = uuid.uuid4().hex
    join = {"data": data, "fn_index": fn, "session_hash": session, "event_data": None, "trigger_id": None}
    (await http.post(url + "gradio_api/queue/join", json=join)).raise_for_status()
    async with http.stream("GET", url + f"gradio_api/queue/data?session_hash={session}") as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data:"):
                messages.append(json.loads(line[5:]))
                if messages[-1]["msg"] == "process_completed":
                    return


async def until(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not seen within {timeout:.0f} s: {what}"
        await asyncio.sleep(0.02)


def test_requests_past_the_line_are_told_the_server_is_busy_at_once(crowded_server):
    """2 slots and a line of 40: two long texts write, 40 requests wait and each is told its place in line,
    and the 5 that come next are told at once that the server is busy (Gradio's own queue, which runs 40
    events at once unless told otherwise, would have kept them without a word)."""
    url = crowded_server
    fn = generate_fn(url)

    def says(messages, text):
        return any(text in json.dumps(m) for m in messages)

    async def scenario():
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            writing = [[] for _ in range(CROWD_SLOTS)]
            tasks = [
                asyncio.create_task(follow(http, url, fn, ["ROMEO:", 2000, 0.8, 0, 1.0, i], m))
                for i, m in enumerate(writing)
            ]
            await until(lambda: all(says(m, "process_generating") for m in writing), "the two texts start")
            waiting = [[] for _ in range(CROWD_LINE)]
            tasks += [asyncio.create_task(follow(http, url, fn, ["KING:", 5, 0, 0], m)) for m in waiting]
            await until(
                lambda: (
                    all(says(m, "Waiting for a free slot") for m in waiting)
                    or any(says(m, "process_completed") for m in writing)
                ),
                "every one in line says so",
            )
            told = sum(says(m, "Waiting for a free slot") for m in waiting)
            assert told == CROWD_LINE, (
                f"only {told} of the {CROWD_LINE} requests in line were told their place while both slots were busy"
            )
            refused = [[] for _ in range(5)]
            await asyncio.gather(*(follow(http, url, fn, ["KING:", 5, 0, 0], m) for m in refused))
            still_writing = not any(says(m, "process_completed") for m in writing)
            for task in tasks:  # the users leave: their connections close
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return refused, still_writing

    refused, still_writing = asyncio.run(scenario())
    for messages in refused:
        last = messages[-1]
        assert last["msg"] == "process_completed" and last["success"] is False, last
        assert f"The server is busy: {CROWD_SLOTS} texts are being written and {CROWD_LINE} more wait" in json.dumps(
            last
        )
    assert still_writing, "the texts ended before the others came: nothing was tested"


def test_uploads_are_refused(server):
    """The app has no file input: an upload is refused, not stored and served back."""
    reply = httpx.post(server + "gradio_api/upload", files={"files": ("big.bin", b"\0" * 100_000)}, timeout=30)
    assert reply.status_code == 413, reply.text
    assert "big.bin" not in reply.text


# ---------------------------------------------------------------------------- starting the app: one-line errors


def test_a_port_in_use_is_named_with_the_flag(tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as e:
            app.main(["--model", str(tiny_model_dir), "--port", str(port)])
    message = str(e.value.code)
    assert (
        message
        == f"Port {port} is already in use on 127.0.0.1 (another app?): pass another --port, e.g. --port {port + 1}"
    )


def test_more_threads_than_cores_are_warned_about(tmp_path, capsys):
    cores = app.usable_cores()
    with pytest.raises(SystemExit):  # the model does not exist: it stops there, after the warning
        app.main(["--model", str(tmp_path / "missing"), "--threads", str(cores + 1), "--port", str(free_port())])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "--threads" in line]
    assert warnings == [
        f"warning: --threads {cores + 1} but this machine lets the app use {cores} cores: more threads than cores "
        f"make the decode loop much slower; pass --threads {cores} or fewer"
    ]


def test_slots_that_cannot_fit_are_refused_before_starting(tiny_model_dir, monkeypatch, capsys):
    """--slots 1000000000 would need hundreds of TB of KV cache: refused at once, naming --slots; and a
    decode loop that dies before serving ends the app with its reason."""
    args = ["--model", str(tiny_model_dir), "--slots", "1000000000", "--port", str(free_port())]
    with pytest.raises(SystemExit) as e:
        app.main(args)
    message = str(e.value.code)
    assert "with --slots 1000000000" in message and "Pass a smaller --slots" in message and "\n" not in message
    assert "serving" not in capsys.readouterr().out
    monkeypatch.setattr(app, "check_fits", lambda *a, **k: None)  # as if the estimate had let it through
    with pytest.raises(SystemExit) as e:
        app.main(args)
    assert str(e.value.code).startswith("Could not start the text generator: the decode process could not load")
    assert "can't allocate memory" in str(e.value.code)
    assert "serving" not in capsys.readouterr().out


def test_facts_that_are_not_numbers_are_not_shown(tmp_path, shakespeare_vocab):
    """A config.json written by someone else: its training facts are shown only when they are numbers."""
    model = make_tiny_model(shakespeare_vocab)
    model.train_info.update(tokens_seen="lots", val_loss=float("nan"), val_loss_full="1.2")
    model.save_pretrained(tmp_path)
    header = app.model_facts(load_model(tmp_path), "someone/else")
    assert "Validation loss not recorded" in header and "not recorded tokens trained" in header
