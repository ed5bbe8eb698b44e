"""GET /status, the live status page: served whole (nothing from another origin), then in a
real headless Chromium against a running cluster: the workers shown, one started later shown
without a reload, and the page's polls under API keys.

``HERD_STATUS_SCREENSHOT=docs/status-page.png`` makes the first browser test save its view
there, with answers streaming (docs/operations.md shows it); without it nothing is written.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.conftest import ApiFactory, WorkerFactory

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium (/usr/bin/chromium) is not installed"
)
#: No network of its own: the page must work on a cluster with no way out.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = os.environ.get("HERD_STATUS_SCREENSHOT")
KEY = secrets.token_urlsafe(24)
#: Long enough for a worker's advert and a poll or two.
SEEN_S = 15


@pytest.fixture
async def browser_page(tmp_path: Path) -> AsyncIterator[Page]:
    """A page of a fresh headless Chromium (its own profile directory)."""
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,  # Playwright passes --headless
            args=ARGS,
            viewport={"width": 1280, "height": 860},
        )
        try:
            yield context.pages[0] if context.pages else await context.new_page()
        finally:
            await context.close()


async def test_the_page_is_served_whole_and_root_stays_ollamas(api: ApiFactory) -> None:
    client = await api()
    page = await client.get("/status")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/api/cluster" in page.text
    # no CDN, no font or script from elsewhere: every URL in it is a path of this server
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)
    assert not re.search(r"""fetch\(\s*["'](https?:)?//""", page.text)
    assert (await client.get("/")).text == "Ollama is running"


@needs_chromium
async def test_the_page_shows_the_workers_and_one_that_joins_later(
    api: ApiFactory, worker: WorkerFactory, browser_page: Page
) -> None:
    delay = 0.15 if SCREENSHOT else 0.005  # answers that last while the screenshot is taken
    await worker(
        worker_id="gpu-a", fake_models=["team/tiny:1=2GiB", "gemma3:270m=1GiB"],
        fake_memory="24GiB", fake_token_delay_s=delay,
    )  # fmt: skip
    await worker(
        worker_id="gpu-b", fake_models=["team/tiny:1=2GiB"], fake_memory="16GiB",
        fake_token_delay_s=delay,
    )  # fmt: skip
    client = await api()
    page = browser_page
    await page.goto(f"{client.base_url.join('/status')}")
    a, b = page.locator('[data-worker="gpu-a"]'), page.locator('[data-worker="gpu-b"]')
    await expect(a).to_be_visible(timeout=SEEN_S * 1000)
    await expect(b).to_be_visible()
    await expect(a.locator('[data-model="team/tiny:1"]')).to_be_visible()
    await expect(a).to_contain_text("/ 25.8 GB")  # 24 GiB of device memory, in decimal units
    await expect(page.locator("#n-workers")).to_have_text("2")
    await expect(page.locator('#models tr[data-model="team/tiny:1"]')).to_contain_text("gpu-a")

    # a worker started now appears on the same page: polled, not reloaded
    await page.evaluate("window.sameDocument = true")
    await worker(
        worker_id="cpu-c", fake_models=["gemma3:270m=1GiB"], fake_memory="8GiB",
        fake_token_delay_s=delay,
    )  # fmt: skip
    c = page.locator('[data-worker="cpu-c"]')
    await expect(c).to_be_visible(timeout=SEEN_S * 1000)
    await expect(c.locator('[data-model="gemma3:270m"]')).to_be_visible()
    await expect(page.locator("#n-workers")).to_have_text("3")
    assert await page.evaluate("window.sameDocument") is True
    await expect(page.locator("#banner")).to_be_hidden()

    # answers streaming: busy slots, and tokens/s from two successive polls
    chats = [
        asyncio.create_task(client.post("/api/chat", json=_chat(model, n)))
        for n, model in enumerate(["team/tiny:1"] * 12 + ["gemma3:270m"] * 3)
    ]
    await expect(page.locator("#n-tps")).to_have_text(re.compile(r"^(?!0\.0$)\d+\.\d$"))
    if SCREENSHOT:
        await page.screenshot(path=SCREENSHOT, full_page=True)
    for answer in await asyncio.gather(*chats):
        assert answer.status_code == 200


def _chat(model: str, n: int) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": f"hi {n}"}], "stream": True}


@needs_chromium
async def test_with_api_keys_the_page_polls_with_the_key_it_was_given(
    api: ApiFactory, worker: WorkerFactory, browser_page: Page
) -> None:
    await worker(worker_id="keyed", fake_models=["tiny:1"])
    client = await api(api_keys=KEY)
    base = str(client.base_url.join("/"))
    # the page is open; its polls are refused without a key, and it says what to do
    await browser_page.goto(f"{base}status")
    await expect(browser_page.locator("#banner")).to_contain_text("/status?key=")
    await expect(browser_page.locator("[data-worker]")).to_have_count(0)
    # given once, kept (and taken out of the address bar)
    await browser_page.goto(f"{base}status?key={KEY}")
    await expect(browser_page.locator('[data-worker="keyed"]')).to_be_visible(timeout=SEEN_S * 1000)
    assert KEY not in browser_page.url
    await browser_page.goto(f"{base}status")
    await expect(browser_page.locator('[data-worker="keyed"]')).to_be_visible()
    async with httpx.AsyncClient(base_url=base) as anonymous:
        assert (await anonymous.get("/api/cluster")).status_code == 401
