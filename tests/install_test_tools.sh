#!/usr/bin/env bash
# Tools the tests drive besides Python packages: Debian's Chromium (the browser tests, through
# Playwright, which does not download a browser of its own), olah (a real Hub-compatible server
# on loopback, in its own venv because it pins psutil<6 against ipython's >=7), ONNX Runtime Web
# from npm (the static page's engine; the test answers the page's CDN URL from this copy) and
# transformers.js (tests/test_transformers.py runs its pipeline() in Node on our model folders).
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
ORT_WEB=onnxruntime-web@1.30.0  # the version static/index.html loads from jsDelivr
TRANSFORMERS_JS=@huggingface/transformers@3.8.1  # a new user's `npm install @huggingface/transformers@3`
if ! grep -qs '"version": "1.30.0"' .npm-test/node_modules/onnxruntime-web/package.json ||
  ! grep -qs '"version": "3.8.1"' .npm-test/node_modules/@huggingface/transformers/package.json; then
  if ! command -v npm >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq nodejs npm >/dev/null
  fi
  # both in one command: --no-save removes what an earlier install put there. Scripts ignored: transformers.js's
  # onnxruntime-node ships its CPU library in the package, and its install script only fetches GPU builds
  npm install --prefix .npm-test --no-save --no-audit --no-fund --ignore-scripts -q "$ORT_WEB" "$TRANSFORMERS_JS"
fi
echo "chromium: $(command -v chromium); olah: .venv-olah/bin/olah-cli; $ORT_WEB and $TRANSFORMERS_JS: .npm-test/"
