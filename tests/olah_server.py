"""A real Hugging Face Hub-compatible server on loopback, for download tests: olah.

olah serves plain git repos (mirrors/models/ORG/NAME, files committed on branch main) read-only,
with no upstream (`[accessibility] offline = true`). It lives in its own venv (.venv-olah) because
its pins clash with the app's; set OLAH_CLI to use another install.
"""

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import httpx
from helpers import free_port, server_process

ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = (
    "bash tests/install_test_tools.sh (it installs olah==0.5.4 into .venv-olah), or set OLAH_CLI to an olah-cli"
)

CONFIG = """[basic]
host = "127.0.0.1"
port = {port}
repos-path = "./repos"
mirror-scheme = "http"
mirror-netloc = "127.0.0.1:{port}"
mirror-lfs-netloc = "127.0.0.1:{port}"
mirrors-path = ["./mirrors"]

[accessibility]
offline = true
"""


def find_olah_cli() -> str | None:
    cli = os.environ.get("OLAH_CLI") or str(ROOT / ".venv-olah" / "bin" / "olah-cli")
    return cli if Path(cli).is_file() and os.access(cli, os.X_OK) else None


def add_model_repo(work_dir: Path, repo_id: str, files: list[Path]) -> None:
    """Commit `files` on branch main of a git repo where olah looks for the model repo_id."""
    repo = work_dir / "mirrors" / "models" / repo_id
    repo.mkdir(parents=True)
    for f in files:
        if f.is_dir():
            shutil.copytree(f, repo / f.name)
        else:
            shutil.copy2(f, repo / f.name)
    git = [
        "git",
        "-C",
        str(repo),
        "-c",
        "user.name=test",
        "-c",
        "user.email=test@example.com",
        "-c",
        "commit.gpgsign=false",
    ]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "model"], check=True)


@contextmanager
def olah_server(cli: str, work_dir: Path, models: dict[str, list[Path]], timeout: float = 30.0):
    """Serve each repo id -> files as a Hub model repo; yield the endpoint URL (for HF_ENDPOINT)."""
    for repo_id, files in models.items():
        add_model_repo(work_dir, repo_id, files)
    port = free_port()
    (work_dir / "olah.toml").write_text(CONFIG.format(port=port))
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:  # any HTTP answer, even an error status, means it is serving
        httpx.get(f"{url}/api/models/{next(iter(models))}/revision/main", timeout=2)
        return True

    with server_process([cli, "-c", "olah.toml"], answers, work_dir / "olah.log", timeout, cwd=work_dir):
        yield url
