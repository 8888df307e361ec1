"""Share a trained model: pushing it to the Hugging Face Hub (its model card: model_card.py), deploying the Space.

    hf auth login                                            # once: a token with write access
    python hub.py push out ORG/NAME [--private]              # the model in out/ -> huggingface.co/ORG/NAME
    python hub.py deploy ORG/SPACE --model ORG/NAME --static  # a free static Space: the model runs in the browser
    python hub.py deploy ORG/SPACE --model ORG/NAME [--private]   # a Gradio Space serving that model
    python hub.py convert out                                # a folder of an older layout -> transformers' layout
    python hub.py preview-static out [--port 8000]           # the static Space's page, locally, with out/
    python hub.py export-onnx out                            # writes out/onnx/model.onnx, step.onnx, explain.onnx

push uploads config.json, model.safetensors, the tokenizer files, onnx/model.onnx, step.onnx and explain.onnx
(exported on the way), metrics.jsonl, loss.png, timeline.jsonl and a fresh model card (README.md, with a sample); never
resume.safetensors (the optimizer state is for training only). deploy --static uploads static/index.html (pointed at the
model repo), static/app.js, static/timeline.js and a README.md with `sdk: static`: static Spaces are free for everyone.
deploy (Gradio) uploads app.py and the modules it imports (engine.py, machine.py, model_gpt2.py...), a
requirements.txt that installs the CPU build of
torch, and the Space's README.md, and sets the Space variable GPT_MODEL=ORG/NAME that app.py reads.

The Gradio app needs about 1 GB of RAM and 2 vCPUs, which the Space's default `cpu-basic` hardware
has. The Hub's documentation says Gradio and Docker Spaces need a paid plan to create (PRO for
users, Team or Enterprise for organizations); static Spaces are free for everyone. Only
export-onnx writes into the local model folder (out/onnx/); push, deploy and preview never do.
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, HTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id

from model_card import render_model_card
from model_files import REPO_ID, SAVED_FILES, WRITE_FAILURES, cannot_write
from model_gpt2 import GPT, load_model
from timeline import TIMELINE

ROOT = Path(__file__).resolve().parent
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "metrics.jsonl",
    "loss.png",
    TIMELINE,
)
# + README.md, rendered
# app.py and every module of ours it imports (tests/test_hub.py starts the app from these files alone);
# + requirements.txt and README.md, generated
SPACE_FILES = (
    "app.py",
    "engine.py",
    "decoders.py",  # the decode loop's backends (engine.py imports it)
    "export_onnx.py",  # the standard graph's layout (decoders.py), and the app's export when the repo has none
    "machine.py",
    "model_gpt2.py",
    "model_files.py",
    "timeline_view.py",
    "timeline.py",
    "explain_view.py",
    "explain.py",
)
# training and exporting only: left out of the Space's requirements
TRAINING_ONLY = ("matplotlib", "onnx")
STATIC_DIR = ROOT / "static"
# the static Space's page; index.html gets the model's URL
STATIC_FILES = ("index.html", "app.js", "timeline.js", "explain.js")
MODEL_URL_TAG = '<meta name="model-url" content="model/">'
# a static Space sends these when its README asks (custom_headers): the page is then cross-origin
# isolated, which WebAssembly threads need (SharedArrayBuffer)
ISOLATION_HEADERS = {
    "cross-origin-embedder-policy": "require-corp",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "cross-origin",
}
CPU_TORCH_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"


class HubError(RuntimeError):
    """Pushing or deploying cannot go ahead; the message says what to do."""


# ---------------------------------------------------------------------------- Hub access


def check_repo_id(repo_id: str, what: str = "repo id") -> None:
    """ORG/NAME by the Hub's own rules (huggingface_hub's validate_repo_id), checked before anything runs."""
    if not REPO_ID.match(repo_id or ""):
        raise HubError(
            f"{what} must look like ORG/NAME (your user or organization name, a slash, a name), got {repo_id!r}"
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(
            f"{what} {repo_id!r} is not a name the Hub accepts ({e}). Use ORG/NAME made of letters, digits, '-', "
            "'_' and '.', each part not starting or ending with '-' or '.', no '--' or '..', not ending in .git, "
            "96 characters at most"
        ) from None


def ready_to_upload(token: str | None) -> str:
    """Offline mode or no token: fail before anything is sent."""
    if constants.is_offline_mode():
        raise HubError("offline mode is on (HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE to upload to the Hub")
    token = token or get_token()
    if not token:
        raise HubError(
            "no Hugging Face token: run `hf auth login` (with a token that has write access) or set HF_TOKEN"
        )
    return token


@contextmanager
def hub_errors(repo_id: str):
    """Turn what the Hub (or the network) answers into a HubError naming the repo and what to do."""
    try:
        yield
    except OfflineModeIsEnabled as e:
        raise HubError(f"offline mode is on, so {repo_id} cannot be reached: unset HF_HUB_OFFLINE") from e
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise HubError(
                f"the Hub refused to write to {repo_id} (HTTP {status}): your token cannot write there. Log in with a "
                f"token that has write access (`hf auth login`, or HF_TOKEN), and check that {repo_id.split('/')[0]} "
                "is your user name or an organization where you may create repos."
            ) from e
        raise HubError(f"the Hub answered HTTP {status} for {repo_id}: {e.server_message or e}") from e
    except (HTTPError, OSError) as e:  # connection refused, DNS, timeout
        raise HubError(
            f"could not reach the Hub at {constants.ENDPOINT} for {repo_id} ({type(e).__name__}: {e}). "
            "Check your connection (and HF_ENDPOINT) and run the command again."
        ) from e


def push_model(out_dir, repo_id: str, token: str | None = None, private: bool = False, api=None) -> str:
    """Upload the model in out_dir to the Hub model repo repo_id; return its URL.

    `api` is an HfApi (tests pass a recording stand-in). The files are staged in a temporary
    folder, so out_dir is never modified.
    """
    out_dir = Path(out_dir)
    check_repo_id(repo_id)
    try:
        model = load_model(out_dir)  # upload only what loads
    except (ValueError, OSError) as e:
        raise HubError(f"{out_dir} does not hold a model that loads, so nothing was pushed: {e}") from e
    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    if "model_type" not in config:
        raise HubError(
            f"{out_dir} is in an older layout that transformers cannot read: first run `python hub.py convert {out_dir}`"
        )
    token = ready_to_upload(token)
    sample = model.generate_text(model.tokenizer.start_text, 300, temperature=0.8, seed=0)
    api = api or HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        names = [name for name in MODEL_FILES if (out_dir / name).is_file()]
        for name in names:
            shutil.copy2(out_dir / name, staging / name)
        graph = export_onnx_checked(model, staging)  # model.onnx, step.onnx, explain.onnx: the static Space, the app
        graphs = (graph, graph.with_name("step.onnx"), graph.with_name("explain.onnx"))
        names += [p.relative_to(staging).as_posix() for p in graphs if p.is_file()]
        card = render_model_card(config, out_dir, sample=sample, repo_id=repo_id)
        (staging / "README.md").write_text(card, encoding="utf-8")
        val = (config.get("train_info") or {}).get("val_loss_full")
        with hub_errors(repo_id):
            api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
            api.upload_folder(
                repo_id=repo_id,
                folder_path=staging,
                repo_type="model",
                commit_message=f"Upload model (step {model.train_info.get('step')}, val loss {val})",
            )
    url = f"{constants.ENDPOINT}/{repo_id}"
    print(f"pushed {', '.join(names + ['README.md'])} from {out_dir} to {url}")
    return url


# ---------------------------------------------------------------------------- ONNX and the static page


def export_onnx_checked(model: GPT, out_dir) -> Path:
    """export_onnx.export_onnx, with a HubError when the exporter's packages are missing."""
    from export_onnx import export_onnx

    try:
        return export_onnx(model, out_dir)
    except ImportError as e:  # PyTorch's exporter writes the file with the onnx package
        raise HubError(f"exporting to ONNX needs the onnx package ({e}): pip install -r requirements.txt") from e


def load_for_export(out_dir) -> GPT:
    try:
        return load_model(out_dir)
    except (ValueError, OSError) as e:
        raise HubError(f"{out_dir} does not hold a model that loads: {e}") from e


def static_page(model_url: str) -> str:
    """static/index.html with the page pointed at the folder (or Hub repo URL) that holds the model's files."""
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    if MODEL_URL_TAG not in page:
        raise HubError(
            f"{STATIC_DIR / 'index.html'} lost its line {MODEL_URL_TAG}: the page reads the model's URL there"
        )
    return page.replace(MODEL_URL_TAG, f'<meta name="model-url" content="{model_url}">')


def preview_server(out_dir, onnx_file, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """The static Space as a visitor gets it, served from here: the page, and the model's files under model/.

    Sends the same cross-origin isolation headers the Space sends. Call serve_forever() on it."""
    out_dir, files = Path(out_dir), {f"/{name}": STATIC_DIR / name for name in STATIC_FILES[1:]}
    files.update({"/model/config.json": out_dir / "config.json", "/model/onnx/model.onnx": Path(onnx_file)})
    files["/model/onnx/step.onnx"] = Path(onnx_file).with_name("step.onnx")  # the page's decode step
    files["/model/onnx/explain.onnx"] = Path(onnx_file).with_name("explain.onnx")  # the "Inside the model" view
    files[f"/model/{TIMELINE}"] = out_dir / TIMELINE  # 404 when the folder has none, as on the Hub
    page = static_page("model/").encode()

    class Handler(BaseHTTPRequestHandler):  # only these files: nothing else of this machine is served
        def do_GET(self, head: bool = False):
            path = self.path.split("?")[0]
            if path in ("/", "/index.html"):
                body, kind = page, "text/html; charset=utf-8"
            elif path in files and files[path].is_file():
                body = files[path].read_bytes()
                kind = "text/javascript" if path.endswith(".js") else "application/octet-stream"
            else:
                return self.send_error(404)
            self.send_response(200)
            for key, value in {**ISOLATION_HEADERS, "content-type": kind, "cache-control": "no-store"}.items():
                self.send_header(key, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def do_HEAD(self):  # exactly GET's answer, without the body
            self.do_GET(head=True)

        def log_message(self, *args):  # quiet: one line per file would bury the URL
            pass

    return ThreadingHTTPServer((host, port), Handler)


def onnx_for_preview(out_dir, tmp) -> Path:
    """out_dir/onnx/model.onnx when it is newer than the weights and has the page's step.onnx beside it; else a fresh
    export into tmp."""
    out_dir = Path(out_dir)
    model = load_for_export(out_dir)  # also checks that the folder holds a model
    onnx_file = out_dir / "onnx" / "model.onnx"
    fresh = onnx_file.is_file() and onnx_file.stat().st_mtime >= (out_dir / "model.safetensors").stat().st_mtime
    if fresh and onnx_file.with_name("step.onnx").is_file():
        return onnx_file
    print(f"exporting {out_dir} to ONNX for the preview (python hub.py export-onnx {out_dir} keeps it)")
    return export_onnx_checked(model, tmp)


def preview_static(out_dir, host: str = "127.0.0.1", port: int = 8000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = onnx_for_preview(out_dir, tmp)
        try:
            server = preview_server(out_dir, onnx_file, host, port)
        except OSError as e:  # address in use, or not an address of this machine
            raise HubError(f"cannot listen on {host}:{port} ({e.strerror}): pass another --port or --host") from e
        print(f"the static Space's page with {out_dir}: http://{host}:{server.server_port}/  (Ctrl+C stops it)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


def render_static_space_readme(space_id: str, model_repo: str) -> str:
    title = space_id.split("/")[1]
    headers = "\n".join(f"  {k}: {v}" for k, v in ISOLATION_HEADERS.items())
    return f"""---
title: {json.dumps(title)}
emoji: 🎭
colorFrom: indigo
colorTo: gray
sdk: static
app_file: index.html
models:
- {model_repo}
license: mit
short_description: A character-level GPT-2 running in your browser
custom_headers:
{headers}
---
# {title}

Streams text from [{model_repo}](https://huggingface.co/{model_repo}), a character-level GPT-2 trained from
scratch, computed in the visitor's own browser by ONNX Runtime Web (WebAssembly): the page downloads the model's
`config.json` and `onnx/model.onnx` once, then no server is involved. A static Space is free, and any number of
visitors can use it at once. The `custom_headers` above make the page cross-origin isolated, so ONNX Runtime
can use several threads.
"""


def deploy_static_space(space_id: str, model_repo: str, token: str | None = None, api=None, private=False) -> str:
    """Create or update the static Space space_id whose page runs model_repo in the browser; return its URL."""
    check_repo_id(space_id, "Space id")
    check_repo_id(model_repo, "model repo id")
    missing = [name for name in STATIC_FILES if not (STATIC_DIR / name).is_file()]
    if missing:
        raise HubError(f"{' and '.join(missing)} not found in {STATIC_DIR}: the static Space is built from these files")
    page = static_page(f"{constants.ENDPOINT}/{model_repo}/resolve/main/")
    token = ready_to_upload(token)
    api = api or HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        (staging / "index.html").write_text(page, encoding="utf-8")
        for name in STATIC_FILES[1:]:
            shutil.copy2(STATIC_DIR / name, staging / name)
        (staging / "README.md").write_text(render_static_space_readme(space_id, model_repo), encoding="utf-8")
        with hub_errors(space_id):
            api.create_repo(space_id, repo_type="space", space_sdk="static", exist_ok=True, private=private)
            api.upload_folder(
                repo_id=space_id,
                folder_path=staging,
                repo_type="space",
                commit_message=f"Deploy the in-browser page for {model_repo}",
            )
    url = f"{constants.ENDPOINT}/spaces/{space_id}"
    print(f"deployed the static page for {model_repo} to {url} (it needs {model_repo}/onnx/model.onnx: hub.py push)")
    return url


# ---------------------------------------------------------------------------- Space


def space_requirements(requirements: str) -> str:
    """The repo's requirements.txt for a CPU Space: the CPU torch index first, training-only packages out."""
    keep = []
    for line in requirements.splitlines():
        line = line.strip()
        name = re.split(r"[<>=!~\[;\s]", line, maxsplit=1)[0].lower()
        if line and not line.startswith("#") and name not in TRAINING_ONLY:
            keep.append(line)
    # with this index, pip resolves torch==X to X+cpu (~200 MB) instead of the CUDA build (several GB)
    return "\n".join([CPU_TORCH_INDEX, *keep]) + "\n"


def gradio_pin(requirements: str) -> str:
    m = re.search(r"^gradio==([\w.]+)\s*$", requirements, flags=re.MULTILINE)
    if not m:
        raise HubError("requirements.txt must pin gradio==X.Y.Z: the Space's sdk_version is read from that pin")
    return m.group(1)


def render_space_readme(space_id: str, model_repo: str, sdk_version: str) -> str:
    title = space_id.split("/")[1]
    return f"""---
title: {json.dumps(title)}
emoji: 🎭
colorFrom: indigo
colorTo: gray
sdk: gradio
sdk_version: "{sdk_version}"
python_version: "3.11"
app_file: app.py
models:
- {model_repo}
license: mit
short_description: Stream text from a character-level GPT-2
---
# {title}

Streams text from [{model_repo}](https://huggingface.co/{model_repo}), a character-level GPT-2 trained from
scratch. The app reads the model's repo id from the Space variable `GPT_MODEL` (set by `python hub.py deploy`),
so pointing the Space at another model is a change of that variable, not of the code.

Runs on CPU: it needs about 1 GB of RAM and 2 vCPUs (the default `cpu-basic` hardware). Per huggingface_hub's
documentation, Gradio Spaces on the free `cpu-basic` hardware may need a subscription (PRO, Team or Enterprise).
"""


def deploy_space(space_id: str, model_repo: str, token: str | None = None, api=None, private: bool = False) -> str:
    """Create or update the Gradio Space space_id serving model_repo; return the Space's URL."""
    check_repo_id(space_id, "Space id")
    check_repo_id(model_repo, "model repo id")
    missing = [name for name in (*SPACE_FILES, "requirements.txt") if not (ROOT / name).is_file()]
    if missing:
        raise HubError(f"{' and '.join(missing)} not found in {ROOT}: the Space is built from these files")
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    sdk_version = gradio_pin(requirements)
    token = ready_to_upload(token)
    api = api or HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        for name in SPACE_FILES:
            shutil.copy2(ROOT / name, staging / name)
        (staging / "requirements.txt").write_text(space_requirements(requirements), encoding="utf-8")
        (staging / "README.md").write_text(render_space_readme(space_id, model_repo, sdk_version), encoding="utf-8")
        with hub_errors(space_id):
            api.create_repo(
                space_id,
                repo_type="space",
                space_sdk="gradio",
                exist_ok=True,
                private=private,
                space_variables=[{"key": "GPT_MODEL", "value": model_repo}],
            )
            api.upload_folder(
                repo_id=space_id,
                folder_path=staging,
                repo_type="space",
                commit_message=f"Deploy the app for {model_repo}",
            )
            # create_repo ignores space_variables when the Space already exists: set it again
            api.add_space_variable(space_id, "GPT_MODEL", model_repo)
    url = f"{constants.ENDPOINT}/spaces/{space_id}"
    print(f"deployed the app for {model_repo} to {url} (it builds for a few minutes)")
    return url


# ---------------------------------------------------------------------------- older folders


def convert_folder(out_dir) -> None:
    """Rewrite a model folder saved by an older model_gpt2 (our weight orientation, no tokenizer files) in the
    transformers GPT-2 layout, in place: each file is replaced atomically; the weights compute the same."""
    out_dir = Path(out_dir)
    try:
        with warnings.catch_warnings():  # the "older layout, convert it" warning: that is what happens now
            warnings.simplefilter("ignore", UserWarning)
            model = load_model(out_dir)
    except (ValueError, OSError) as e:
        raise HubError(f"{out_dir} does not hold a model that loads, so nothing was converted: {e}") from e
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        model.save_pretrained(tmp)
        (Path(tmp) / "README.md").write_text(render_model_card(model.hub_config(), out_dir), encoding="utf-8")
        for name in (*SAVED_FILES, "README.md", "config.json"):
            os.replace(Path(tmp) / name, out_dir / name)  # config.json last: it says which layout the weights are in
    print(f"converted {out_dir}: transformers' GPT2LMHeadModel, pipeline() and AutoTokenizer now read it")


# ---------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="upload a model folder to a Hub model repo")
    push.add_argument("out_dir", help="folder written by train_gpt2.py --out-dir")
    push.add_argument("repo_id", help="ORG/NAME of the model repo (created if needed)")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    deploy = sub.add_parser("deploy", help="create or update a Gradio Space serving a Hub model")
    deploy.add_argument("space_id", help="ORG/NAME of the Space (created if needed)")
    deploy.add_argument("--model", required=True, help="ORG/NAME of the model repo the app loads")
    deploy.add_argument("--private", action="store_true", help="create the Space as private")
    convert = sub.add_parser("convert", help="rewrite a model folder of an older layout for transformers, in place")
    convert.add_argument("out_dir", help="folder written by an older train_gpt2.py")
    deploy.add_argument(
        "--static", action="store_true", help="a static Space (free): the model runs in the visitor's browser"
    )
    preview = sub.add_parser("preview-static", help="serve the static Space's page with a local model folder")
    preview.add_argument("out_dir", help="folder written by train_gpt2.py --out-dir")
    preview.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    preview.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    export = sub.add_parser(
        "export-onnx", help="write OUT_DIR/onnx/model.onnx, step.onnx and explain.onnx (the static page, the app)"
    )
    export.add_argument("out_dir", help="folder written by train_gpt2.py --out-dir")
    args = ap.parse_args(argv)
    try:
        if args.command == "push":
            push_model(args.out_dir, args.repo_id, private=args.private)
        elif args.command == "convert":
            convert_folder(args.out_dir)
        elif args.command == "deploy" and args.static:
            deploy_static_space(args.space_id, args.model, private=args.private)
        elif args.command == "deploy":
            deploy_space(args.space_id, args.model, private=args.private)
        elif args.command == "preview-static":
            preview_static(args.out_dir, args.host, args.port)
        else:
            path = export_onnx_checked(load_for_export(args.out_dir), args.out_dir)
            print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    except HubError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in WRITE_FAILURES:
            raise
        kept = f"; {args.out_dir} is as it was" if getattr(args, "out_dir", None) else ""
        print(f"error: {cannot_write(e)}{kept}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
