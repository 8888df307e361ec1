"""The notebooks' first cell calls setup() once it has the project: on Colab it installs the packages
the notebook uses that Colab lacks, at requirements.txt's versions (Colab has torch, numpy and matplotlib).

    from colab_setup import setup; setup()         # every package in requirements.txt
    from colab_setup import setup; setup("torch")  # only torch: on Colab that installs nothing
"""

import re
import subprocess
import sys
from pathlib import Path

COLAB_HAS = {"torch", "numpy", "matplotlib"}  # a pinned torch would replace Colab's CUDA build with a download
REQUIREMENTS = Path(__file__).with_name("requirements.txt")


def package_name(line: str) -> str:
    """`gradio==6.31.0  # comment` -> "gradio"."""
    return re.split(r"[<>=!~\[;\s]", line, maxsplit=1)[0].lower()


def colab_requirements(*packages: str, path=REQUIREMENTS) -> list[str]:
    """requirements.txt's lines for `packages` (none named: all of them), less what Colab already has."""
    lines = [line.split("#", 1)[0].strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    known = {package_name(line) for line in lines}
    wanted = {p.lower() for p in packages} or known
    if unknown := sorted(wanted - known):
        raise ValueError(f"not in {Path(path).name}: {', '.join(unknown)} (it lists {', '.join(sorted(known))})")
    return [line for line in lines if package_name(line) in wanted - COLAB_HAS]


def setup(*packages: str) -> None:
    """On Colab, pip-install what this notebook uses (`packages`, default every one) that Colab lacks."""
    missing = colab_requirements(*packages)
    if "google.colab" in sys.modules and missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
    print("project:", Path(__file__).resolve().parent)
