"""`ditkit serve`'s page end to end: a tiny model served on a free local port, driven in headless Chromium.

Needs the `web` extra (Gradio), selenium and Debian's `chromium` + `chromium-driver` (no browser or driver is
ever downloaded: selenium gets the driver's path); skipped with the reason when one is missing. Slow set
(~30 s: importing Gradio alone takes 5-9 s). Selectors are Gradio 6.31's (pinned in the `web` extra).
The README's screenshot: scripts/web_screenshot.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ditkit.config import get_preset
from ditkit.model.dit import DiT
from ditkit.model.weights import save_weights

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CHROME_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1100",
]
WAIT_S = 60  # a shared CI machine: sampling 100 tiny steps takes ~1 s, but the machine may be busy


def _missing() -> str | None:
    """Why the page cannot be served and driven here, or None (find_spec, not import: collection stays fast)."""
    if importlib.util.find_spec("gradio") is None:
        return "the web extra is not installed: pip install 'ditkit[web]'"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed: pip install 'ditkit[dev]'"
    if not (CHROMIUM and CHROMEDRIVER):
        return "no browser: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    return None


MISSING = _missing()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(MISSING is not None, reason=MISSING or ""),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.queueing"),  # Gradio 6.31 with pandas 3
]


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_tiny(folder: Path, num_classes: int = 10) -> Iterator[str]:
    """The page over a saved DiT-T/2 (8x8 pixels, 1 channel) on 127.0.0.1:<free port>; yields its URL."""
    from ditkit.apps.page_sampler import PageSampler
    from ditkit.apps.serve import build_app, launch
    from ditkit.training.run import open_for_sampling

    config = get_preset("DiT-T/2", in_channels=1, num_classes=num_classes)
    torch.manual_seed(0)
    model = DiT(config)
    for p in model.parameters():
        p.data.normal_(0, 0.05)  # the official init predicts exactly zero
    weights = save_weights(model.state_dict(), config, folder / f"tiny{num_classes}.safetensors")
    app = build_app(PageSampler(open_for_sampling(weights, device="cpu"), folder), title="ditkit: tiny")
    try:
        yield launch(app, "127.0.0.1", free_port())
    finally:
        app.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_tiny(tmp_path_factory.mktemp("serve")) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="ditkit-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # a path: never Selenium Manager
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = WAIT_S) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message=f"waited for {what}")


def css(driver: Any, selector: str) -> Any:
    return driver.find_element("css selector", selector)


def type_into(driver: Any, selector: str, value: object) -> None:
    """Replace a number box's text; Gradio takes the value when the box loses focus."""
    from selenium.webdriver.common.keys import Keys

    box = css(driver, selector)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value))
    box.send_keys(Keys.TAB)


def choose_classes(driver: Any, labels: list[str], typed: str | None = None) -> None:
    """Clear the class box, then type each label (or `typed`: the list filters as one types) and pick it."""
    css(driver, "#classes [title=Clear]").click()
    box = css(driver, "#classes input[role=combobox]")
    for label in labels:
        box.click()
        box.send_keys(typed or label)
        wait(driver, lambda d, label=label: find_option(d, label), f"option {label}")[0].click()
    tokens = [t.text for t in driver.find_elements("css selector", "#classes .token span")]
    assert tokens == labels, tokens


def find_option(driver: Any, label: str) -> list[Any]:
    return [o for o in driver.find_elements("css selector", "[role=option]") if o.get_attribute("aria-label") == label]


def image_src(driver: Any, selector: str) -> str | None:
    found = driver.find_elements("css selector", f"{selector} img")
    return found[0].get_attribute("src") if found else None


def toast_with(driver: Any, text: str) -> Any:
    """The error message in the page that contains `text` (toasts fade in: wait for the text itself)."""
    toasts = "[data-testid=toast-text]"
    return wait(driver, lambda d: [t for t in d.find_elements("css selector", toasts) if text in t.text], repr(text))[0]


def test_the_page_in_a_browser(server: str, browser: Any, tmp_path: Path) -> None:
    """One test, so one server and one browser: under pytest-xdist each test module's tests may go to several
    workers (and xdist_group has no effect with pytest 9.2 + xdist 3.8), each starting its own."""
    for check in (check_grid, check_bad_input, check_unknown_class, check_walk, check_nothing_from_outside):
        load(browser, server)
        check(browser, server)
    check_queue_keeps_users_apart(server, tmp_path)
    with serve_tiny(tmp_path, num_classes=1000) as imagenet:
        load(browser, imagenet)
        check_imagenet_search(browser, imagenet)


def test_ditkit_serve_command(tmp_path: Path) -> None:
    """`ditkit serve` as a user runs it: it says where it serves (127.0.0.1), answers there, and stops cleanly
    on SIGTERM (as on Ctrl+C)."""
    config = get_preset("DiT-T/2", in_channels=1)
    weights = save_weights(DiT(config).state_dict(), config, tmp_path / "tiny.safetensors")
    port = free_port()
    ditkit = shutil.which("ditkit") or str(Path(sys.executable).with_name("ditkit"))
    proc = subprocess.Popen(
        [ditkit, "serve", "--ckpt", str(weights), "--port", str(port), "--device", "cpu"],
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180  # imports torch and Gradio: 10-20 s on a busy machine
        while proc.poll() is None and time.monotonic() < deadline and not any(url in line for line in lines):
            time.sleep(0.2)
        assert any(f"ditkit serve: {url}" in line for line in lines), "".join(lines)
        assert urllib.request.urlopen(url, timeout=10).status == 200
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0 and lines[-1] == "ditkit serve: stopped\n", "".join(lines)


def load(driver: Any, url: str) -> None:
    driver.get(url)
    wait(driver, lambda d: d.find_elements("css selector", "#generate"), "the page")


def check_imagenet_search(driver: Any, server: str) -> None:
    """A 1000-class model: classes are ImageNet names, found by typing part of one."""
    tokens = [t.text for t in driver.find_elements("css selector", "#classes .token span")]
    assert tokens == ["207 golden retriever", "360 otter", "387 lesser panda", "974 geyser"], tokens
    choose_classes(driver, ["360 otter"], typed="otte")
    type_into(driver, "#per_class input[data-testid=number-input]", 1)
    type_into(driver, "#steps input", 5)
    css(driver, "#generate").click()
    wait(driver, lambda d: "360 otter" in css(d, "#rows").text, "the grid's caption")


def check_grid(driver: Any, server: str) -> None:
    """A grid appears with a progress bar; it is the right size, not blank, and downloads as the same PNG."""
    choose_classes(driver, ["3", "7"])
    type_into(driver, "#per_class input[data-testid=number-input]", 2)
    type_into(driver, "#steps input", 100)
    css(driver, "#guidance input[value='first 3 channels (official DiT)']").click()
    # Progress text may come and go within a second: record it as the page draws it.
    driver.execute_script("""window.ditkitProgress = [];
        new MutationObserver(() => document.querySelectorAll('#grid .progress-text').forEach(
            e => window.ditkitProgress.push(e.textContent))).observe(document.body, {subtree: true, childList: true,
            characterData: true});""")
    css(driver, "#generate").click()
    src = wait(driver, lambda d: image_src(d, "#grid"), "the grid")
    grid = Image.open(io.BytesIO(fetch(src)))
    assert grid.format == "PNG" and grid.size == (22 * 12, 22 * 12)  # 2 classes x 2 images of 8 px, enlarged x12
    assert np.asarray(grid).std() > 10, "the grid looks blank"
    shown = Image.open(io.BytesIO(css(driver, "#grid img").screenshot_as_png)).convert("L")
    assert shown.getextrema()[1] - shown.getextrema()[0] > 50, "the browser drew a blank picture"
    progress = driver.execute_script("return window.ditkitProgress")
    assert any("/100" in text for text in progress), progress  # "37/100 steps"
    assert "class 3, class 7" in css(driver, "#rows").text
    link = wait(driver, lambda d: d.find_elements("css selector", "#png a[data-testid=download-link]"), "the PNG link")
    assert link[0].get_attribute("download").endswith(".png")
    assert fetch(link[0].get_attribute("href")) == fetch(src)


def check_bad_input(driver: Any, server: str) -> None:
    """Bad values show their message in the page, the server goes on, and good values work again."""
    for field, bad, good, message in [
        ("#cfg input", -1, 4, "cfg_scale must be a finite number >= 0 (1 = no guidance); got -1.0"),
        ("#steps input", 5000, 10, "steps must be a whole number from 2 to 1000; got 5000"),
    ]:
        type_into(driver, field, bad)
        css(driver, "#generate").click()
        toast = toast_with(driver, message)
        assert "Traceback" not in toast.text and "Traceback" not in driver.page_source
        assert urllib.request.urlopen(server, timeout=10).status == 200
        css(driver, "[data-testid=toast-close]").click()
        type_into(driver, field, good)
        css(driver, "#generate").click()
        wait(driver, lambda d: image_src(d, "#grid"), f"a grid after the bad {field}")


def check_unknown_class(driver: Any, server: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box = css(driver, "#classes input[role=combobox]")
    box.click()
    box.send_keys("bogus", Keys.ENTER)  # typed values are allowed, and checked by the server
    css(driver, "#generate").click()
    toast_with(driver, "classes: unknown class 'bogus'")


def check_walk(driver: Any, server: str) -> None:
    """The walk tab makes an animated GIF."""
    css(driver, "button[role=tab][data-tab-id=walk]").click()
    wait(driver, lambda d: d.find_element("css selector", "#walk_button").is_displayed(), "the walk tab")
    type_into(driver, "#frames input[data-testid=number-input]", 6)
    type_into(driver, "#walk_steps input", 10)
    css(driver, "#walk_button").click()
    gif = Image.open(io.BytesIO(fetch(wait(driver, lambda d: image_src(d, "#walk_gif"), "the walk"))))
    assert gif.format == "GIF" and gif.size == (192, 192) and gif.n_frames >= 2


def check_nothing_from_outside(driver: Any, server: str) -> None:
    urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(server.rstrip("/")) for u in urls), urls


def check_queue_keeps_users_apart(server: str, downloads: Path) -> None:
    """Two users at once: each gets exactly what they would have got alone (one job at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client

    def grid(seed: int) -> bytes:
        client = Client(server, verbose=False, download_files=downloads, analytics_enabled=False)
        path, _, _ = client.predict(["1"], 1, 4.0, "all channels", "ddim", 20, seed, api_name="/grid")
        return Path(path).read_bytes()

    alone = [grid(0), grid(1)]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(grid, [0, 1]))
    assert together == alone and alone[0] != alone[1]
