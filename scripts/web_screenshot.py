"""Screenshot of `ditkit serve`'s page after a grid, for the README (docs/web-screenshot.png).

Serves the model on a free local port, drives Debian's headless Chromium (chromium + chromium-driver; nothing is
downloaded) through the page's own controls, and saves the whole page as a PNG:

    python scripts/web_screenshot.py --ckpt runs/demo --out docs/web-screenshot.png

Needs the `web` extra and selenium (`pip install -e '.[dev,web]'`).
"""

from __future__ import annotations

import argparse
import base64
import shutil
import socket
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from ditkit.apps.page_sampler import PageSampler
from ditkit.apps.serve import build_app, launch
from ditkit.training.run import open_for_sampling


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium(profile: str) -> webdriver.Chrome:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        raise SystemExit("needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)  # a driver path: no Selenium Manager


def set_number(page: webdriver.Chrome, selector: str, value: object) -> None:
    box = page.find_element("css selector", selector)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)  # Gradio takes the value when the box loses focus


def screenshot(url: str, out: Path, per_class: int, steps: int, timeout: float, profile: str) -> None:
    page = chromium(profile)
    try:
        page.get(url)
        wait = WebDriverWait(page, timeout, poll_frequency=0.2)
        wait.until(lambda d: d.find_elements("css selector", "#generate"))
        set_number(page, "#per_class input[data-testid=number-input]", per_class)
        set_number(page, "#steps input", steps)
        page.find_element("css selector", "#generate").click()
        wait.until(lambda d: d.find_elements("css selector", "#grid img"))
        wait.until(lambda d: d.execute_script("return document.querySelector('#grid img').complete"))
        size = page.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = page.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        out.write_bytes(base64.b64decode(shot["data"]))
    finally:
        page.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="weights file or run folder (e.g. runs/demo)")
    parser.add_argument("--out", default="docs/web-screenshot.png")
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the grid")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ditkit-serve-") as work_dir, tempfile.TemporaryDirectory() as profile:
        sampler = PageSampler(open_for_sampling(args.ckpt, device="cpu"), work_dir)
        app = build_app(sampler, title=f"ditkit: {Path(args.ckpt).name}")
        try:
            url = launch(app, "127.0.0.1", free_port())
            screenshot(url, Path(args.out), args.per_class, args.steps, args.timeout, profile)
        finally:
            app.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
