"""The console in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by
``selenium``) opens ``/console`` during a call and the caller's and the assistant's words are read from the DOM.
``.ci/run`` installs the browser; elsewhere the test is skipped when it is missing (never in CI)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import ROOT
from test_console import cut_in, start_console_call

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"):
    pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TOKEN = "console-" + "b" * 24
LONG_TEXT = "Paris began as a Celtic village on an island in the Seine, more than two thousand years ago."
SCREENSHOT = ROOT / "docs" / "console.png"


def _browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1200,760"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


async def _in_thread(function: Callable[..., Any], *args: Any) -> Any:
    """Selenium blocks: run it off the event loop, which serves the relay and the stand-in meanwhile."""
    return await asyncio.to_thread(function, *args)


def _texts(driver: webdriver.Chrome, css: str) -> list[str]:
    """The text of every element matching ``css``, read in one go (the page redraws on each event)."""
    texts: list[str] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(node => node.textContent)", css)
    return texts






async def test_the_console_shows_the_conversation_in_a_browser(stack: contextlib.AsyncExitStack,
                                                                http: aiohttp.ClientSession, tmp_path: Path) -> None:
    standin, base = await start_console_call(
        stack, TOKEN, LONG_TEXT, "Done: I have switched to the speakerphone setting.",
        ["Tell me about the history of Paris.", "Sorry, I'm on speakerphone."],
        database_url=f"sqlite:///{tmp_path / 'relay.db'}")
    driver = await _in_thread(_browser)
    stack.callback(driver.quit)
    credentials = base64.b64encode(f"operator:{TOKEN}".encode()).decode()
    await _in_thread(driver.execute_cdp_cmd, "Network.enable", {})
    await _in_thread(driver.execute_cdp_cmd, "Network.setExtraHTTPHeaders",
                     {"headers": {"Authorization": f"Basic {credentials}"}})
    await _in_thread(driver.get, base + "/console")
    wait = WebDriverWait(driver, 10)
    await _in_thread(wait.until, lambda d: d.find_element(By.ID, "feed-state").text == "live")

    leg = await cut_in(http, base, standin, LONG_TEXT)  # 1.2 s of the long answer heard, then the caller cuts in
    await _in_thread(wait.until, lambda d: "Done: I have switched" in " ".join(_texts(d, ".turn.assistant .text")))

    callers = await _in_thread(_texts, driver, ".turn.user .text")
    assistants = await _in_thread(_texts, driver, ".turn.assistant .text")
    unheard = await _in_thread(_texts, driver, ".turn.assistant del.unheard")
    assert callers[0] == "Tell me about the history of Paris."
    assert assistants[0] == "Hello Jordan, how can I help?"
    cut = assistants[1]
    assert cut.startswith("Paris") and cut.endswith("…") and len(unheard) == 1
    assert cut.removesuffix("…").split() + unheard[0].split() == LONG_TEXT.split()
    listed = await _in_thread(_texts, driver, "#live .call .who")
    assert listed == ["+*******0100 · primary"]
    await _in_thread(wait.until, lambda d: len(_texts(d, ".turn.user .text")) == 2)
    await _in_thread(driver.save_screenshot, str(tmp_path / "console.png"))
    if os.environ.get("UPDATE_SCREENSHOT"):  # the README's picture: UPDATE_SCREENSHOT=1 pytest -k browser
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(tmp_path / "console.png", SCREENSHOT)
    # At a phone's width (390 px) the call list sits above the conversation and the turns use the width.
    await _in_thread(driver.set_window_size, 390, 844)
    widths = await _in_thread(driver.execute_script, """
        const width = el => document.querySelector(el).getBoundingClientRect().width;
        return {page: document.documentElement.clientWidth, aside: width('aside'), turn: width('.turn.user')};""")
    assert widths["aside"] == widths["page"] and widths["turn"] > 300, widths
    await _in_thread(driver.save_screenshot, str(tmp_path / "console-narrow.png"))
    if os.environ.get("UPDATE_SCREENSHOT"):
        shutil.copy(tmp_path / "console-narrow.png", SCREENSHOT.with_name("console-narrow.png"))
    await leg.stop()
    await _in_thread(wait.until, lambda d: _texts(d, "#ended .call .who") == ["+*******0100 · primary"])
    await _in_thread(driver.set_window_size, 1200, 760)
    await _past_call_opens_from_the_history(driver, wait, cut)


async def _past_call_opens_from_the_history(driver: webdriver.Chrome, wait: WebDriverWait, cut: str) -> None:
    """The ended call is in the history (from the records); a search by another number finds nothing, by the
    caller's finds it; opened, its transcript shows the turn cut by the barge-in, with where it was cut."""
    await _in_thread(wait.until, lambda d: len(_texts(d, "#history .call.past")) == 1)

    def search(number: str) -> None:
        field = driver.find_element(By.ID, "search-caller")
        field.clear()
        field.send_keys(number)
        driver.find_element(By.CSS_SELECTOR, "#search button").click()

    await _in_thread(search, "+14155550111")
    await _in_thread(wait.until, lambda d: _texts(d, "#history .empty") == ["No call found."])
    await _in_thread(search, "+1 415 555 0100")
    await _in_thread(wait.until, lambda d: len(_texts(d, "#history .call.past")) == 1)
    await _in_thread(lambda: driver.find_element(By.CSS_SELECTOR, "#history .call.past").click())
    await _in_thread(wait.until, lambda d: "cost $" in d.find_element(By.ID, "subtitle").text)
    assistants = await _in_thread(_texts, driver, ".turn.assistant .text")
    assert assistants[:2] == ["Hello Jordan, how can I help?", cut]
    [where] = await _in_thread(_texts, driver, ".turn.assistant .note")
    assert where.startswith("cut by a barge-in at ") and where.endswith(" ms")
    subtitle = await _in_thread(lambda: driver.find_element(By.ID, "subtitle").text)
    assert "first word " in subtitle and "twilio" in subtitle
