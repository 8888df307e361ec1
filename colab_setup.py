"""The notebooks' first cell calls setup() once it has the project: on Colab it installs the packages
Colab lacks (requirements.txt without torch, numpy and matplotlib, which Colab has already).

    from colab_setup import setup; setup()
"""

import re
import subprocess
import sys
from pathlib import Path

COLAB_HAS = {"torch", "numpy", "matplotlib"}  # a pinned torch would replace Colab's CUDA build with a download


def colab_requirements(path=Path(__file__).with_name("requirements.txt")) -> list[str]:
    keep = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and re.split(r"[<>=!~\[;\s]", line, maxsplit=1)[0].lower() not in COLAB_HAS:
            keep.append(line)
    return keep


def setup() -> None:
    if "google.colab" in sys.modules:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *colab_requirements()], check=True)
    print("project:", Path(__file__).resolve().parent)
