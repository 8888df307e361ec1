"""docs/timeline.png: the static page's "How it learned" view, in Chromium at desktop width, for a model folder that
has a timeline (the page is served as `python hub.py preview-static` serves it; nothing leaves the machine).

    python train_gpt2.py --preset cpu --max-seconds 60 --out-dir /tmp/tl-cpu
    python -m tests.screenshot_timeline /tmp/tl-cpu docs/timeline.png --step 1     # from the repo root
"""

import argparse
import re
import tempfile
import threading

import hub
from export_onnx import export_onnx
from model_gpt2 import load_model
from tests.helpers import CHROMIUM, CHROMIUM_FLAGS


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a folder written by train_gpt2.py (with timeline.jsonl)")
    ap.add_argument("png", help="where the screenshot goes")
    ap.add_argument("--step", type=int, default=1, help="the evaluation the slider shows (0 = step 0)")
    ap.add_argument("--width", type=int, default=1280, help="the window's width in pixels")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        server = hub.preview_server(args.model, export_onnx(load_model(args.model), tmp), port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": args.width, "height": 900})
                page.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/]).*"), lambda route: route.abort())
                page.goto(f"http://127.0.0.1:{server.server_port}/")
                page.wait_for_selector("#timeline[data-state=done]", timeout=60_000)
                page.locator("#timeline-step").focus()
                page.keyboard.press("Home")
                for _ in range(args.step):
                    page.keyboard.press("ArrowRight")
                page.locator("#timeline").screenshot(path=args.png)
                browser.close()
        finally:
            server.shutdown()
            server.server_close()
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
