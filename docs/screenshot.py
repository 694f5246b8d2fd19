"""Regenerate the README's pictures: ``.venv/bin/python docs/screenshot.py`` after ``make curate``.

Serves runs/demo/catalog on a free port and photographs the browser with Playwright and Debian's
chromium (``make browser`` installs it): the grid filtered to score_7+, the rate view and the
clusters page (after ``make taste-demo``, so the clusters are those of the taste-applied catalog);
copies the taste learning curve.
"""

import logging
import shutil
import threading
from pathlib import Path

from playwright.sync_api import sync_playwright

from zxl.catalog.browse import serve

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = serve(ROOT / "runs/demo/catalog", "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    with sync_playwright() as p:
        args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(f"{base}/?score_min=7&sort=aesthetic&per_page=24")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(ROOT / "docs/img/browse.png"))
        page.goto(f"{base}/rate")
        page.wait_for_selector("body[data-pair]")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(ROOT / "docs/img/rate.png"))
        page.goto(f"{base}/clusters")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(ROOT / "docs/img/clusters.png"), full_page=False)
        browser.close()
    curve = ROOT / "runs/demo/taste/learning-curve.png"
    if curve.exists():
        shutil.copyfile(curve, ROOT / "docs/img/taste-curve.png")
    server.shutdown()


if __name__ == "__main__":
    main()
