#!/usr/bin/env bash
# Tools the tests drive besides Python packages: Debian's Chromium (the browser test, through
# Playwright, which does not download a browser of its own) and olah (a real Hub-compatible server
# on loopback, in its own venv because it pins psutil<6 against ipython's >=7).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium >/dev/null
fi
if [ ! -x .venv-olah/bin/olah-cli ]; then
  python3 -m venv .venv-olah
  .venv-olah/bin/pip install -q olah==0.5.4
fi
echo "chromium: $(command -v chromium); olah: .venv-olah/bin/olah-cli"
