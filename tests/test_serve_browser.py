"""The streaming page in a real headless browser: start a stream, switch the prompt, frames drawn.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make browser`` installs them; ``make test-full``
calls it); skipped with the reason where they are missing.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None, reason="no chromium/chromedriver: run `make browser`"
)
def test_the_page_streams_and_switches_in_a_browser(tmp_path: Path) -> None:
    import numpy as np
    import torch
    import uvicorn
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from sfpp.apps.streaming import StreamLimits, build_app
    from test_serve import OTHER, PROMPT, _generator

    clip = torch.rand(3, 4, 16, 16) * 2 - 1
    app = build_app(
        _generator,
        limits=StreamLimits(),
        save_dir=tmp_path,
        default_length=48,
        suggestions=[PROMPT, OTHER],
        clips={OTHER: clip},
    )
    image = tmp_path / "frame.png"
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(image)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,700"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "student" in d.find_element(By.ID, "model").text)
        prompt = driver.find_element(By.ID, "prompt")
        assert prompt.get_attribute("value") == PROMPT  # the first suggestion
        driver.find_element(By.ID, "start").click()
        wait.until(lambda d: d.execute_script("return window.sfppFramesDrawn()") >= 4)
        prompt.clear()
        prompt.send_keys(OTHER)
        driver.find_element(By.ID, "switch").click()
        wait.until(lambda d: "switched at frame" in d.find_element(By.ID, "events").text)
        assert driver.find_element(By.ID, "current").text == OTHER
        wait.until(lambda d: "done: 48 frames" in d.find_element(By.ID, "events").text)
        assert driver.execute_script("return window.sfppFramesDrawn()") == 48
        # The canvas shows the last frame: not a blank canvas.
        pixels = driver.execute_script(
            "const c = document.getElementById('video').getContext('2d');"
            "return Array.from(c.getImageData(0, 0, 384, 384).data.filter((_, i) => i % 4 === 0));"
        )
        assert max(pixels) > 0
        assert driver.find_element(By.ID, "error").text == ""

        # Start from the server's clip: its prompt fills the box, its 4 frames come first.
        from selenium.webdriver.support.ui import Select

        Select(driver.find_element(By.ID, "start_from")).select_by_value(f"clip:{OTHER}")
        assert prompt.get_attribute("value") == OTHER
        driver.find_element(By.ID, "length").clear()
        driver.find_element(By.ID, "length").send_keys("8")
        driver.find_element(By.ID, "start").click()
        wait.until(lambda d: "continuing clip: " in d.find_element(By.ID, "events").text)
        wait.until(lambda d: "done: 12 frames" in d.find_element(By.ID, "events").text)
        # Start from an uploaded image (twice the frame size: averaged back), held to a chunk.
        Select(driver.find_element(By.ID, "start_from")).select_by_value("upload")
        driver.find_element(By.ID, "start").click()  # no file chosen yet: said on the page
        wait.until(lambda d: "choose an image" in d.find_element(By.ID, "error").text)
        driver.find_element(By.ID, "upload").send_keys(str(image))
        driver.find_element(By.ID, "start").click()
        wait.until(lambda d: "continuing image: frame.png" in d.find_element(By.ID, "events").text)
        wait.until(lambda d: "done: 10 frames" in d.find_element(By.ID, "events").text)
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)
