"""Browser tier: Chromium (Debian's, never downloaded) driving a running `vendhub serve`."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.conftest import MQTT_HOST, MQTT_PORT
from tests.e2e.conftest import Api, Server, Sim, machine_name, prepare, server_env

CHROMIUM = os.environ.get("VENDHUB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Set to a folder (e.g. docs/screens) to keep the screenshots the tests take.
SCREENS = os.environ.get("VENDHUB_UI_SCREENS")
WAIT_MS = 20_000  # bound for anything the server does (a vend, an expiry pass)

PORTRAIT = {"width": 1080, "height": 1920}
TABLET = {"width": 1280, "height": 800}
DESKTOP = {"width": 1440, "height": 960}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/ui/" in str(item.fspath):
            item.add_marker(pytest.mark.ui)


@dataclass
class Fleet:
    server: Server
    api: Api
    db: Path
    good: str  # simulated machine that vends
    jam: str  # simulated machine whose every dispense jams
    idle: str  # a machine no simulator speaks for: the tests set its presence
    prefix: str

    @property
    def url(self) -> str:
        return self.server.base_url

    def expire_now(self, order_id: str) -> None:
        """Stand-in for waiting ORDER_TTL_S: the order's deadline moves into the past."""
        with sqlite3.connect(self.db, timeout=10) as conn:
            conn.execute(
                "UPDATE orders SET expires_at = '2000-01-01 00:00:00.000000' WHERE id = ?",
                (order_id,),
            )

    def publish_status(self, machine_id: str, status: str) -> None:
        async def send() -> None:
            async with aiomqtt.Client(MQTT_HOST, MQTT_PORT) as client:
                await client.publish(
                    f"{self.prefix}/{machine_id}/status",
                    f'{{"status":"{status}"}}'.encode(),
                    qos=1,
                )

        # Playwright's sync API runs a loop in this thread; the publish gets its own.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, send()).result(timeout=20)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("ui-fleet")
    good, jam, idle = machine_name("VMUI"), machine_name("VMJAM"), machine_name("VMIDLE")
    db = workdir / "ui.db"
    env = server_env(f"sqlite:///{db}", good, PAYMENT_JOBS_TICK_S="0.5")
    prepare(env, workdir, good, jam, idle)
    server = Server(env, workdir)
    sims = [
        Sim(env["MQTT_TOPIC_PREFIX"], [good], workdir),
        Sim(env["MQTT_TOPIC_PREFIX"], [jam], workdir, faults=["jam=1.0"]),
    ]
    try:
        server.start()
        for sim in sims:
            sim.start()
        api = Api(server.base_url)
        api.login()
        # Generous bounds: simulators start slowly on a busy machine.
        api.wait_online(good, within=90)
        api.wait_online(jam, within=90)
        yield Fleet(server, api, db, good, jam, idle, env["MQTT_TOPIC_PREFIX"])
    finally:
        for sim in sims:
            sim.stop()
        server.stop()


# Package scope, not session: Playwright's sync API keeps an event loop running in the main
# thread while it is open, and asyncio tests that run after (in a shuffled order) cannot
# start theirs. Leaving tests/ui closes it.
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/services.sh (it apt-installs chromium)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def new_page(browser: Browser, viewport: dict[str, int]) -> tuple[BrowserContext, Page]:
    context = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    context.set_default_timeout(WAIT_MS)
    return context, context.new_page()


@pytest.fixture
def kiosk(browser: Browser) -> Iterator[Page]:
    context, page = new_page(browser, PORTRAIT)
    yield page
    context.close()


@pytest.fixture
def tablet(browser: Browser) -> Iterator[Page]:
    context, page = new_page(browser, TABLET)
    yield page
    context.close()


@pytest.fixture
def desktop(browser: Browser) -> Iterator[Page]:
    context, page = new_page(browser, DESKTOP)
    yield page
    context.close()


def shoot(page: Page, name: str, *, full_page: bool = False) -> None:
    if SCREENS:
        Path(SCREENS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENS) / f"{name}.png"), full_page=full_page)


def sign_in(
    page: Page, base_url: str, username: str, password: str, path: str = "/console"
) -> None:
    page.goto(base_url + path)
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/console/login" not in url)
