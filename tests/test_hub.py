"""Sharing a model: the model card, downloading from a Hub-compatible server, pushing and deploying.

Downloads go through a real Hub-compatible server on loopback (olah). Uploads cannot: olah is
read-only and there is no upload server here, so push and deploy run against a recording
stand-in for HfApi and the tests check exactly what would be sent (repo ids, repo types, file
names and bytes, the Space variable) and that every failure is a clear HubError raised before
anything is sent, leaving the local files untouched.
"""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
import torch
import yaml
from helpers import ROOT, make_tiny_model, require, train_tiny
from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError
from olah_server import INSTALL_HINT, find_olah_cli, olah_server

import hub
from hub import HubError, deploy_space, push_model
from model_card import render_model_card, table_cell
from model_gpt2 import load_model

REPO = "testorg/tiny-gpt"
SPACE = "testorg/tiny-gpt-demo"
PROMPT = "ROMEO:"


def front_matter(text: str) -> dict:
    assert text.startswith("---\n"), text[:100]
    return yaml.safe_load(text.split("---\n")[1])


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under folder, by its path relative to it (onnx/model.onnx)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class RecordingApi:
    """Stands in for HfApi: records every call and, for upload_folder, the files as they would be sent.

    `fail` (an exception) is raised by the call named `fail_on`, as the Hub or the network would."""

    def __init__(self, fail: Exception | None = None, fail_on: str = "create_repo"):
        self.calls, self.sent, self.fail, self.fail_on = [], None, fail, fail_on

    def _record(self, name, *args, **kwargs):
        self.calls.append((name, args, kwargs))
        if self.fail is not None and name == self.fail_on:
            raise self.fail

    def create_repo(self, repo_id, **kwargs):
        self._record("create_repo", repo_id, **kwargs)

    def upload_folder(self, *, folder_path, **kwargs):
        self.sent = files_of(Path(folder_path))  # read now: the staging folder is temporary
        self._record("upload_folder", **kwargs)

    def add_space_variable(self, repo_id, key, value, **kwargs):
        self._record("add_space_variable", repo_id, key, value, **kwargs)


def http_error(status: int) -> HfHubHTTPError:
    request = httpx2.Request("POST", f"https://huggingface.co/api/repos/create?{status}")
    return HfHubHTTPError(f"{status} Client Error", response=httpx2.Response(status, request=request))


@pytest.fixture
def online(monkeypatch):
    """conftest turns offline mode on for the whole session; these tests need it off (nothing is sent anyway)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def trained_out(tmp_path_factory, prepared_data) -> Path:
    """An out-dir from a real (tiny) training run: config.json, model.safetensors, README.md,
    resume.safetensors, metrics.jsonl, loss.png."""
    return train_tiny(prepared_data, tmp_path_factory.mktemp("trained") / "out")


# ---------------------------------------------------------------------------- model card


def test_model_card_reports_whole_split_loss_config_and_usage(tmp_path, shakespeare_vocab):
    model = make_tiny_model(shakespeare_vocab)
    model.train_info.update(
        val_loss_full=1.2345,
        train_loss=1.1,
        hardware="test CPU",
        train_config={"learning_rate": 0.004, "eval_iters": 20},
    )
    (tmp_path / "loss.png").write_bytes(b"png")
    card = render_model_card(model.hub_config(), tmp_path, sample="KING: hello", repo_id=REPO)
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and meta["license"] == "mit"
    assert meta["pipeline_tag"] == "text-generation" and {"gpt2", "character-level", "text-generation"} <= set(
        meta["tags"]
    )
    assert meta["datasets"] == ["karpathy/tiny_shakespeare"] and "tiny-shakespeare" in meta["tags"]
    assert "| validation loss (whole validation split) | 1.2345 |" in card
    assert (
        "| tokens seen | 12,345 |" in card and "| hardware | test CPU |" in card and "| learning_rate | 0.004 |" in card
    )
    assert f"| parameters | {model.num_params():,} |" in card
    assert "![loss curve](loss.png)" in card and "KING: hello" in card
    assert (
        f'load_model("{REPO}")' in card
        and f"sample_gpt2.py --model {REPO}" in card
        and f"app.py --model {REPO}" in card
    )
    assert "ln(65) = 4.17" in card
    assert "```python\nfrom model_gpt2 import load_model\n" in card  # the usage snippet runs as written
    # the transformers snippet comes first: three lines, pipeline() on the repo id
    snippet = card.split("## Use with transformers\n\n```python\n")[1].split("```")[0]
    assert card.index("## Use with transformers") < card.index("from model_gpt2 import load_model")
    assert len(snippet.strip().splitlines()) == 3 and f'pipeline("text-generation", model="{REPO}")' in snippet


def test_model_card_labels_the_batch_estimate_and_omits_what_is_missing(tmp_path):
    vocab = "abcdefghij"
    model = make_tiny_model(vocab, bias=False)  # conftest's train_info: val_loss only, no val_loss_full
    model.train_info["train_config"] = {"eval_iters": 7}
    card = render_model_card(model.hub_config(), tmp_path)
    assert "| validation loss (estimate on 7 fixed batches of the validation split) | 3.2100 |" in card
    assert f"| parameters | {model.num_params():,} |" in card  # the count without biases
    assert "loss.png" not in card and "## Sample" not in card and "datasets" not in front_matter(card)
    assert "ln(10) = 2.30" in card


def test_only_tiny_shakespeare_is_labelled_as_it(tmp_path, shakespeare_vocab):
    """The card names karpathy/tiny_shakespeare only for the data prepare.py recognised by its sha256."""
    model = make_tiny_model(shakespeare_vocab)
    for dataset, labelled in (("tiny_shakespeare", True), ("shakespeare_sonnets", False), ("text", False)):
        model.train_info["dataset"] = dataset
        meta = front_matter(render_model_card(model.hub_config(), tmp_path))
        assert (meta.get("datasets") == ["karpathy/tiny_shakespeare"]) is labelled, dataset


@pytest.mark.parametrize("sample", ["KING:\n````\n# not a heading", "``` `````` `", "a ``` b\n```\n## x"])
def test_no_sample_can_close_its_code_block(tmp_path, shakespeare_vocab, sample):
    """The sample is fenced with more backticks than any run in it: rendered, it is one code block, all of it."""
    from markdown_it import MarkdownIt

    card = render_model_card(make_tiny_model(shakespeare_vocab).hub_config(), tmp_path, sample=sample)
    tokens = MarkdownIt("commonmark").parse(card.split("## Sample", 1)[1].split("## Use with transformers")[0])
    blocks = [t for t in tokens if t.type == "fence"]
    assert [b.content for b in blocks] == [sample + "\n"]
    assert [t.tag for t in tokens if t.type == "heading_open"] == []  # nothing of it became markdown


FOREIGN_FACTS = {"tokens_seen": "lots", "val_loss_full": float("nan"), "val_loss": "1.5", "train_loss": [1]}


def test_facts_that_are_not_numbers_are_not_shown_in_the_card(tmp_path, shakespeare_vocab):
    """A config.json written by someone else: the card shows a training fact only when it is a finite number
    (or, for the hardware and precision, text)."""
    model = make_tiny_model(shakespeare_vocab)
    model.train_info.update(FOREIGN_FACTS, step=float("inf"), hardware=5, train_config="fast")
    card = render_model_card(model.hub_config(), tmp_path)
    for row in ("tokens seen", "train loss (estimate at the saved step)", "steps", "hardware"):
        assert f"| {row} | not recorded |" in card
    assert "| validation loss | not measured |" in card


def test_convert_and_push_take_a_config_with_foreign_facts(tmp_path, shakespeare_vocab, online, capsys, monkeypatch):
    def no_onnx(model, out_dir):  # the card is what this test reads: the ONNX file has tests of its own
        (Path(out_dir) / "model.onnx").write_bytes(b"")
        return Path(out_dir) / "model.onnx"

    monkeypatch.setattr(hub, "export_onnx_checked", no_onnx)
    make_tiny_model(shakespeare_vocab).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["train_info"].update(FOREIGN_FACTS)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert hub.main(["convert", str(tmp_path)]) == 0, capsys.readouterr().err
    assert "| tokens seen | not recorded |" in (tmp_path / "README.md").read_text()
    api = RecordingApi()
    push_model(tmp_path, REPO, token="hf_test", api=api)
    assert "| tokens seen | not recorded |" in api.sent["README.md"].decode()


@pytest.mark.parametrize("repo_id", ["org/name.git", "org/..", "org/--x", "org/" + "a" * 196, "org/-x"])
def test_repo_ids_the_hub_refuses_are_refused_before_anything_runs(tmp_path, online, capsys, repo_id):
    api = RecordingApi()
    with pytest.raises(HubError, match=r"is not a name the Hub accepts \(.*\)\. Use ORG/NAME"):
        push_model(tmp_path / "not-even-a-model", repo_id, token="hf_test", api=api)
    with pytest.raises(HubError, match="is not a name the Hub accepts"):
        hub.deploy_static_space(repo_id, REPO, token="hf_test", api=api)
    assert api.calls == []
    assert hub.main(["push", str(tmp_path), repo_id]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: repo id {repo_id!r} is not a name the Hub accepts") and err.count("\n") == 1


# ---------------------------------------------------------------------------- download from a Hub server


@pytest.fixture(scope="module")
def hub_download(tmp_path_factory, trained_out):
    """Push trained_out (recorded), serve what would be sent as testorg/tiny-gpt with olah, and load it
    in a fresh Python pointed at that server, with our loader and with transformers."""
    cli = find_olah_cli()
    require(cli is not None, f"olah not installed: run {INSTALL_HINT}")
    work = tmp_path_factory.mktemp("olah")
    api = RecordingApi()
    constants.HF_HUB_OFFLINE, offline = False, constants.HF_HUB_OFFLINE
    try:
        push_model(trained_out, REPO, token="hf_test", api=api)
    finally:
        constants.HF_HUB_OFFLINE = offline
    pushed = work / "pushed"
    pushed.mkdir()
    for name, data in api.sent.items():
        (pushed / name).parent.mkdir(parents=True, exist_ok=True)
        (pushed / name).write_bytes(data)
    with olah_server(cli, work, {REPO: sorted(pushed.iterdir())}) as endpoint:
        # in a subprocess: huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and HF_HUB_CACHE at import
        env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(work / "cache")}
        env.pop("HF_TOKEN", None)
        out = work / "result.pt"
        cmd = [sys.executable, str(ROOT / "tests" / "load_from_hub.py"), REPO, PROMPT, "20", str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:] + (work / "olah.log").read_text(errors="replace")[-2000:]
    return torch.load(out, weights_only=True), work / "cache"


@pytest.mark.slow
def test_model_downloaded_from_hub_server_matches_local(hub_download, trained_out):
    result, cache = hub_download
    local = load_model(trained_out)
    idx = torch.arange(local.config.block_size).unsqueeze(0) % local.config.vocab_size
    with torch.no_grad():
        assert torch.equal(result["logits"], local(idx)[0])
    assert result["text"] == local.generate_text(PROMPT, 20, temperature=0)
    (snapshot,) = (cache / "models--testorg--tiny-gpt" / "snapshots").iterdir()
    assert (snapshot / "model.safetensors").read_bytes() == (trained_out / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_transformers_loads_the_pushed_repo_from_the_hub_server(hub_download, trained_out):
    """AutoModelForCausalLM + AutoTokenizer on "ORG/NAME" give our greedy text, character for character."""
    result, _ = hub_download
    assert result["transformers_class"] == "GPT2LMHeadModel"
    assert result["transformers_text"] == load_model(trained_out).generate_text(PROMPT, 20, temperature=0)


@pytest.mark.slow
def test_missing_hub_repo_is_a_clear_error_naming_it(hub_download):
    missing = hub_download[0]["missing"]
    assert missing is not None, "loading a repo the server does not have succeeded"
    assert "testorg/no-such-model" in missing
    assert missing.split(":")[0] in ("OSError", "ValueError", "FileNotFoundError")  # what sample_gpt2 and the app catch


# ---------------------------------------------------------------------------- push (recording stand-in)


def test_push_sends_exactly_the_model_files_and_a_fresh_card(trained_out, online):
    before = files_of(trained_out)
    api = RecordingApi()
    url = push_model(trained_out, REPO, token="hf_test", api=api)
    assert url.endswith("/" + REPO)
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1] == (REPO,) and api.calls[0][2] == {"repo_type": "model", "exist_ok": True, "private": False}
    assert api.calls[1][2]["repo_id"] == REPO and api.calls[1][2]["repo_type"] == "model"
    sent_files = {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "metrics.jsonl",
        "loss.png",
        "timeline.jsonl",
    }
    assert set(api.sent) == sent_files | {"README.md", "onnx/model.onnx", "onnx/step.onnx", "onnx/explain.onnx"}
    for name in sent_files:
        assert api.sent[name] == before[name], name
    assert_onnx_is_the_model(api.sent["onnx/model.onnx"], load_model(trained_out))
    card = api.sent["README.md"].decode()
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert f'pipeline("text-generation", model="{REPO}")' in card
    info = json.loads(before["config.json"])["train_info"]
    assert f"| validation loss (whole validation split) | {info['val_loss_full']:.4f} |" in card
    assert (
        f'load_model("{REPO}")' in card
        and f"sample_gpt2.py --model {REPO}" in card
        and f"app.py --model {REPO}" in card
    )
    assert "![loss curve](loss.png)" in card
    assert load_model(trained_out).generate_text("\n", 300, temperature=0.8, seed=0) in card
    # "How it learned": the timeline's first (step 0) and last rows, with their val loss, in the card's table
    rows = [json.loads(line) for line in before["timeline.jsonl"].decode().splitlines()]
    assert [r["step"] for r in rows] == [0, 10, 20]  # train_tiny: step 0 and its two evaluations
    for r in (rows[0], rows[-1]):
        assert f"| {r['step']:,} | {r['tokens']:,} | {r['val_loss']:.4f} | {table_cell(r['text'])} |" in card
    assert files_of(trained_out) == before  # resume.safetensors and the local README untouched


def assert_onnx_is_the_model(onnx_bytes: bytes, model):
    """The ONNX file computes the model's logits (onnxruntime), for a whole context at once."""
    import onnxruntime

    sess = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    idx = torch.arange(model.config.block_size).unsqueeze(0) % model.config.vocab_size
    c = model.config
    empty = torch.zeros(1, c.n_head, 0, c.n_embd // c.n_head).numpy()  # no past positions
    feed = {"input_ids": idx.numpy(), "attention_mask": torch.ones_like(idx).numpy()}
    feed["position_ids"] = torch.arange(c.block_size).unsqueeze(0).numpy()
    feed |= {f"past_key_values.{i}.{kv}": empty for i in range(c.n_layer) for kv in ("key", "value")}
    logits = sess.run(["logits"], feed)[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(logits), model(idx)[0], atol=1e-4, rtol=0)


def test_push_without_token_fails_before_sending(trained_out, online, monkeypatch, tmp_path):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # as if never logged in
    api = RecordingApi()
    with pytest.raises(HubError, match=r"hf auth login.*HF_TOKEN"):
        push_model(trained_out, REPO, api=api)
    with pytest.raises(HubError, match=r"hf auth login"):
        deploy_space(SPACE, REPO, api=api)
    assert api.calls == []


def test_push_in_offline_mode_fails_before_sending(trained_out, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    api = RecordingApi()
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        push_model(trained_out, REPO, token="hf_test", api=api)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        deploy_space(SPACE, REPO, token="hf_test", api=api)
    assert api.calls == []


def test_push_forbidden_is_a_clear_error_naming_the_repo(trained_out, online):
    before = files_of(trained_out)
    with pytest.raises(HubError, match=rf"refused to write to {REPO} \(HTTP 403\).*write access"):
        push_model(trained_out, REPO, token="hf_test", api=RecordingApi(http_error(403)))
    assert files_of(trained_out) == before


def test_push_refuses_a_folder_that_does_not_load(tmp_path, online):
    (tmp_path / "config.json").write_text("{}")
    api = RecordingApi()
    with pytest.raises(HubError, match="model.safetensors missing"):
        push_model(tmp_path, REPO, token="hf_test", api=api)
    assert api.calls == []


# ---------------------------------------------------------------------------- deploy (recording stand-in)


@pytest.fixture
def space_root(monkeypatch, tmp_path) -> Path:
    """The folder deploy_space reads app.py from: the repo once app.py exists, else a copy with a stand-in
    app.py (so this test runs before app.py lands; the assertions read whatever file is used)."""
    if (ROOT / "app.py").is_file():
        return ROOT
    for name in ("model_gpt2.py", "model_files.py", "requirements.txt"):
        shutil.copy2(ROOT / name, tmp_path / name)
    (tmp_path / "app.py").write_text("# stand-in until app.py exists\n")
    monkeypatch.setattr(hub, "ROOT", tmp_path)
    return tmp_path


def test_deploy_sends_the_app_cpu_requirements_and_space_card(space_root, online):
    api = RecordingApi()
    url = deploy_space(SPACE, REPO, token="hf_test", api=api)
    assert url.endswith("/spaces/" + SPACE)
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder", "add_space_variable"]
    assert api.calls[0][1] == (SPACE,)
    assert api.calls[0][2] == {
        "repo_type": "space",
        "space_sdk": "gradio",
        "exist_ok": True,
        "private": False,
        "space_variables": [{"key": "GPT_MODEL", "value": REPO}],
    }
    assert api.calls[1][2]["repo_id"] == SPACE and api.calls[1][2]["repo_type"] == "space"
    assert api.calls[2][1] == (SPACE, "GPT_MODEL", REPO)  # updates an existing Space too
    assert set(api.sent) == {
        "app.py",
        "engine.py",
        "decoders.py",
        "export_onnx.py",
        "machine.py",
        "model_gpt2.py",
        "model_files.py",
        "timeline_view.py",
        "timeline.py",
        "explain_view.py",
        "explain.py",
        "requirements.txt",
        "README.md",
    }
    assert api.sent["app.py"] == (space_root / "app.py").read_bytes()
    for name in hub.SPACE_FILES[1:]:
        assert api.sent[name] == (ROOT / name).read_bytes()

    repo_reqs = (ROOT / "requirements.txt").read_text()
    reqs = api.sent["requirements.txt"].decode().splitlines()
    assert reqs[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert any(line.startswith("torch==") for line in reqs) and not any("matplotlib" in line for line in reqs)
    assert not any(line.startswith(("onnx==", "onnxscript==")) for line in reqs)  # exporting happens at push
    runtime = [
        line
        for line in repo_reqs.splitlines()
        if line and not line.startswith("#") and re.split(r"[=<>]", line)[0] not in hub.TRAINING_ONLY
    ]
    assert reqs[1:] == runtime

    pinned = re.search(r"^gradio==(\S+)$", repo_reqs, re.MULTILINE).group(1)
    assert pinned == importlib.metadata.version("gradio")  # the Space runs the Gradio the app was tested with
    meta = front_matter(api.sent["README.md"].decode())
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == pinned and meta["app_file"] == "app.py"
    assert meta["models"] == [REPO] and meta["python_version"] == "3.11" and meta["license"] == "mit"
    assert meta["title"] and meta["emoji"] and len(meta["short_description"]) <= 60


def test_deploy_static_sends_the_page_pointed_at_the_model(online):
    api = RecordingApi()
    url = hub.deploy_static_space(SPACE, REPO, token="hf_test", api=api)
    assert url.endswith("/spaces/" + SPACE)
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]  # no Space variable: nothing runs there
    assert api.calls[0][1] == (SPACE,)
    assert api.calls[0][2] == {"repo_type": "space", "space_sdk": "static", "exist_ok": True, "private": False}
    assert api.calls[1][2]["repo_id"] == SPACE and api.calls[1][2]["repo_type"] == "space"
    assert set(api.sent) == {"index.html", "app.js", "timeline.js", "explain.js", "README.md"}
    for name in ("app.js", "timeline.js", "explain.js"):
        assert api.sent[name] == (ROOT / "static" / name).read_bytes()
    page = api.sent["index.html"].decode()
    model_url = f"{constants.ENDPOINT}/{REPO}/resolve/main/"
    assert f'<meta name="model-url" content="{model_url}">' in page  # the page loads the pushed model's files
    assert page == (ROOT / "static" / "index.html").read_text().replace('content="model/"', f'content="{model_url}"')
    meta = front_matter(api.sent["README.md"].decode())
    assert meta["sdk"] == "static" and meta["app_file"] == "index.html" and meta["models"] == [REPO]
    assert meta["custom_headers"] == {
        "cross-origin-embedder-policy": "require-corp",
        "cross-origin-opener-policy": "same-origin",
        "cross-origin-resource-policy": "cross-origin",
    }  # cross-origin isolation: WebAssembly threads
    assert meta["license"] == "mit" and meta["title"] and len(meta["short_description"]) <= 60


def test_deploy_static_checks_ids_and_token_before_sending(online, monkeypatch, tmp_path):
    api = RecordingApi()
    with pytest.raises(HubError, match="model repo id must look like ORG/NAME"):
        hub.deploy_static_space(SPACE, "no-slash", token="hf_test", api=api)
    with pytest.raises(HubError, match=rf"refused to write to {SPACE} \(HTTP 403\)"):
        hub.deploy_static_space(SPACE, REPO, token="hf_test", api=RecordingApi(http_error(403)))
    monkeypatch.setattr(hub, "STATIC_DIR", tmp_path)  # a checkout without the page
    with pytest.raises(HubError, match="index.html and app.js and timeline.js and explain.js not found"):
        hub.deploy_static_space(SPACE, REPO, token="hf_test", api=api)
    assert api.calls == []


@pytest.mark.parametrize(
    "error, fail_on, message",
    [
        (http_error(403), "create_repo", rf"refused to write to {SPACE} \(HTTP 403\).*write access"),
        (http_error(401), "upload_folder", rf"refused to write to {SPACE} \(HTTP 401\)"),
        (http_error(500), "upload_folder", rf"the Hub answered HTTP 500 for {SPACE}"),
        (httpx2.ConnectError("connection refused"), "add_space_variable", rf"could not reach the Hub .* for {SPACE}"),
    ],
)
def test_deploy_refused_or_unreachable_is_a_clear_error(space_root, online, error, fail_on, message):
    with pytest.raises(HubError, match=message):
        deploy_space(SPACE, REPO, token="hf_test", api=RecordingApi(error, fail_on))


@pytest.mark.slow
def test_the_files_deploy_sends_run_the_app_on_their_own(tmp_path, online, shakespeare_vocab):
    """The Space has only what deploy sent: in a folder holding just those files, app.py imports, its
    decode loop's process starts from there, and a request gets its text."""
    api = RecordingApi()
    deploy_space(SPACE, REPO, token="hf_test", api=api)
    space = tmp_path / "space"
    space.mkdir()
    for name, data in api.sent.items():
        (space / name).write_bytes(data)
    make_tiny_model(shakespeare_vocab).save_pretrained(tmp_path / "model")
    (space / "check.py").write_text(
        "import sys\n"
        "import app\n"
        "from engine import Engine\n"
        "from model_gpt2 import load_model\n"
        "model = load_model(sys.argv[1])\n"
        "app.build_demo(model, 'model')\n"
        "ids = Engine(model, slots=1).submit(model.tokenizer.encode('ROMEO:'), 20, temperature=0).result(60)\n"
        "print('ok', len(ids), flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of the repo on the path
    proc = subprocess.run(
        [sys.executable, "check.py", str(tmp_path / "model")], cwd=space, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok 20")


def test_deploy_without_app_py_says_so(monkeypatch, tmp_path, online):
    for name in ("requirements.txt", *(name for name in hub.SPACE_FILES if name != "app.py")):
        shutil.copy2(ROOT / name, tmp_path / name)
    monkeypatch.setattr(hub, "ROOT", tmp_path)
    api = RecordingApi()
    with pytest.raises(HubError, match=r"^app.py not found in .*: the Space is built from these files"):
        deploy_space(SPACE, REPO, token="hf_test", api=api)
    assert api.calls == []


# ---------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["push", "{out}", REPO], {"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_test"}, "offline mode is on"),
        (["deploy", SPACE, "--model", REPO], {"HF_HUB_OFFLINE": "0"}, "no Hugging Face token: run `hf auth login`"),
        (["deploy", SPACE, "--model", REPO, "--static"], {"HF_HUB_OFFLINE": "0"}, "no Hugging Face token"),
        (["preview-static", "no-such-dir"], {}, "does not hold a model that loads"),
        (["push", "no-such-dir", REPO], {}, "does not hold a model that loads"),
        (["push", "{out}", "not-a-repo-id"], {}, "must look like ORG/NAME"),
        (["push", "{out}", "org/name.git"], {}, "'org/name.git' is not a name the Hub accepts"),
    ],
)
@pytest.mark.slow
def test_cli_errors_exit_2_with_a_message(trained_out, tmp_path, args, env, message):
    hf_vars = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE")
    base = {k: v for k, v in os.environ.items() if k not in hf_vars}
    env = {**base, "HF_HOME": str(tmp_path), **env}  # an empty HF home: no saved token
    args = [a.format(out=trained_out) for a in args]
    proc = subprocess.run(
        [sys.executable, "hub.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
