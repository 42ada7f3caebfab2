"""The web console in a real browser (Debian's Chromium driven by Playwright) against `cyan serve`'s service and
simulated devices: what an operator sees and does, waiting on what the page shows, never on time."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from console_support import ADMIN, ALICE, ARTIFACTS, BOB, CHROMIUM_ARGS, PASSWORD, LiveService, require_chromium
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from cyan.app import Actor
from cyan.protocol.binary import build_module
from cyan.sim import Fault, VirtualDeviceSpec
from cyan.testing import fixed_device_key

expect.set_options(timeout=20_000)

# One service and one Chromium for the module; a fresh page (a new sign-in) for each test.


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    require_chromium()
    service = LiveService(tmp_path_factory.mktemp("console") / "data")
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def browser_context() -> Iterator[BrowserContext]:
    chromium = require_chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cyan-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(chromium),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(15_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def artifacts() -> Path:
    return ARTIFACTS


KITCHEN = f"{0xC0FFEE:024x}"
AMNESIAC = f"{0xA11E5:024x}"
BROKEN = f"{0xBAD:024x}"


def _open(context: BrowserContext, live: LiveService, user: str, *, width: int = 1280) -> Page:
    page = context.new_page()
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(live.url + "/")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Fleet", level=1)).to_be_visible()
    return page


def _nav(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Console").get_by_role("link", name=name, exact=True).click()
    expect(page.get_by_role("heading", name=name, level=1)).to_be_visible()


def _shot(page: Page, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


def test_sign_in_and_the_fleet_count_follows_a_device_coming_online(
    live: LiveService, browser_context: BrowserContext, artifacts: Path
) -> None:
    spec = VirtualDeviceSpec(KITCHEN, fixed_device_key(1))
    live.register(spec, name="kitchen")
    page = _open(browser_context, live, ADMIN)
    expect(page.locator("#live-state")).to_have_text(re.compile("live"))
    online = int(page.locator("#count-online").inner_text())
    live.connect(spec)
    live.wait_connected(KITCHEN)
    # No reload: the count moves when the device's spark/status arrives on the stream.
    expect(page.locator("#count-online")).to_have_text(str(online + 1))
    _shot(page, artifacts, "fleet")
    page.close()


def test_device_page_reads_a_variable_calls_a_function_and_shows_live_events(
    live: LiveService, browser_context: BrowserContext, artifacts: Path
) -> None:
    if KITCHEN not in live.devices:
        spec = VirtualDeviceSpec(KITCHEN, fixed_device_key(1))
        live.register(spec, name="kitchen")
        live.connect(spec)
    live.wait_connected(KITCHEN)
    page = _open(browser_context, live, ADMIN)
    _nav(page, "Devices")
    page.get_by_label("Search").fill("kitchen")
    page.get_by_role("button", name="Apply").click()
    page.get_by_role("link", name=re.compile("^kitchen")).click()
    expect(page.get_by_role("heading", name="kitchen", level=1)).to_be_visible()
    expect(page.locator("#device-status")).to_have_text("online")
    page.get_by_label("Argument for setArg").fill("hello console")
    page.locator("[data-call=setArg]").click()
    expect(page.locator("[data-call=setArg] + output")).to_have_text("returned 13")
    page.locator("[data-variable=lastArg]").click()
    expect(page.locator("[data-variable=lastArg] + output")).to_have_text("hello console")
    # An event the device publishes appears while the page is open.
    expect(page.locator("#events .live")).to_have_text(re.compile("live"))
    assert live.devices[KITCHEN].publish("console/test", "from the device")
    expect(page.locator("#device-events")).to_contain_text("console/test")
    expect(page.locator("#device-events")).to_contain_text("from the device")
    page.locator("[data-variable=counter]").click()
    expect(page.locator("[data-variable=counter] + output")).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator("#vitals")).to_contain_text("3.1.0")  # the Device OS release it reported
    page.get_by_label("Notes about this device").fill("Behind the fridge")
    page.locator("[data-save=notes]").click()
    expect(page.locator("[data-save=notes] + output")).to_have_text("saved")
    assert live.device_notes(KITCHEN) == "Behind the fridge"
    _shot(page, artifacts, "device")
    page.close()


def test_a_failing_device_shows_each_attempt_step_and_diagnosis(
    live: LiveService, browser_context: BrowserContext, artifacts: Path
) -> None:
    spec = VirtualDeviceSpec(BROKEN, fixed_device_key(3), fault=Fault.CORRUPT_KEY)
    live.register(spec, name="porch")
    live.connect(spec)
    live.wait_failed_attempt(BROKEN)
    page = _open(browser_context, live, ADMIN)
    expect(page.locator("#count-failing")).not_to_have_text("0")
    expect(page.locator("section", has=page.locator("#failing-title"))).to_contain_text("porch")
    page.goto(f"{live.url}/#/device/{BROKEN}")
    failure = page.locator("#attempt-list li.failed").first
    expect(failure.locator(".step")).to_have_text(re.compile(r"\S"))
    expect(failure.locator(".reason")).to_have_text("session_key_rejected")
    expect(failure.locator(".cause")).to_contain_text("C6")
    expect(failure.locator(".fix")).to_have_text(re.compile(r"\S"))
    expect(page.locator("#doctor")).to_contain_text("C6")
    _shot(page, artifacts, "device-failing")
    page.close()


def test_a_changed_key_is_approved_by_the_fingerprint_shown_and_the_device_connects(
    live: LiveService, browser_context: BrowserContext, artifacts: Path
) -> None:
    spec = VirtualDeviceSpec(AMNESIAC, fixed_device_key(2), fault=Fault.AMNESIA)
    live.register(spec, name="garage")
    live.connect(spec)
    live.wait_failed_attempt(AMNESIAC)  # refused: its new key is pending from the first attempt on
    page = _open(browser_context, live, ADMIN)
    expect(page.locator("#count-pending")).not_to_have_text("0")
    _nav(page, "Keys")
    pending = live.run(_pending(live))
    assert len(pending) == 1
    fingerprint = pending[0]
    row = page.locator("tr", has=page.locator(f"a[href='#/device/{AMNESIAC}']"))
    expect(row).to_contain_text(fingerprint)
    _shot(page, artifacts, "keys")
    row.locator(f"[data-approve='{fingerprint}']").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.locator("#confirm-fingerprint")).to_have_text(fingerprint)
    dialog.get_by_role("button", name="Approve this fingerprint").click()
    expect(page.locator("#pending-title")).to_have_text("Pending keys (0)")
    live.wait_connected(AMNESIAC)
    page.goto(f"{live.url}/#/device/{AMNESIAC}")
    expect(page.locator("#device-status")).to_have_text("online")
    expect(page.locator("#registered-fingerprint")).to_have_text(fingerprint)
    expect(page.locator("#audit")).to_contain_text("approved")
    page.close()


async def _pending(live: LiveService) -> list[str]:
    return [p.fingerprint for p in await live.service.app.keys.pending(Actor.operator()) if p.device_id == AMNESIAC]


def test_a_rollout_shows_each_device_progress_to_the_end(
    live: LiveService, browser_context: BrowserContext, artifacts: Path, tmp_path: Path
) -> None:
    if KITCHEN not in live.devices:
        spec = VirtualDeviceSpec(KITCHEN, fixed_device_key(1))
        live.register(spec, name="kitchen")
        live.connect(spec)
    live.wait_connected(KITCHEN)
    image = tmp_path / "app.bin"
    image.write_bytes(build_module(b"\x5a" * 20_000, platform_id=6, product_id=77, product_version=3))
    page = _open(browser_context, live, ADMIN)
    _nav(page, "Updates")
    page.get_by_label("Firmware binary").set_input_files(str(image))
    page.locator("#upload").click()
    expect(page.locator("#firmware-info")).to_contain_text("Uploaded")
    page.get_by_label("Which").fill("kitchen")
    page.get_by_role("button", name="Start the update").click()
    expect(page.locator("#rollout-summary")).to_have_text("1 of 1 succeeded, 0 failed — finished")
    expect(page.locator("#rollout")).to_contain_text("100%")
    _shot(page, artifacts, "updates")
    page.close()


def test_events_are_published_and_streamed(live: LiveService, browser_context: BrowserContext, artifacts: Path) -> None:
    page = _open(browser_context, live, ALICE)
    _nav(page, "Events")
    expect(page.locator("#stream-title + p .live")).to_have_text(re.compile("live"))
    page.get_by_label("Name", exact=True).fill("console/hello")
    page.get_by_label("Data", exact=True).fill("published from the page")
    page.locator("#publish").click()
    expect(page.locator("#event-list")).to_contain_text("published from the page")
    _shot(page, artifacts, "events")
    _nav(page, "Admin")
    expect(page.locator("#server-fingerprint")).to_have_text(live.service.keys.fingerprint)
    _shot(page, artifacts, "admin")
    page.close()


def test_a_user_without_rights_sees_none_of_another_users_devices(
    live: LiveService, browser_context: BrowserContext, artifacts: Path
) -> None:
    if KITCHEN not in live.devices:
        spec = VirtualDeviceSpec(KITCHEN, fixed_device_key(1))
        live.register(spec, name="kitchen")
    page = _open(browser_context, live, BOB, width=390)  # a phone's width
    expect(page.locator("#count-devices")).to_have_text("0")
    _nav(page, "Devices")
    expect(page.locator("#device-results")).to_contain_text("No device matches.")
    expect(page.locator("#device-range")).to_have_text("0–0 of 0")
    _shot(page, artifacts, "devices-other-user-phone")
    page.goto(f"{live.url}/#/device/{KITCHEN}")
    expect(page.locator("main")).to_contain_text("no device")
    expect(page.locator("main")).not_to_contain_text("kitchen")
    page.goto(f"{live.url}/#/keys")
    expect(page.locator("#pending-title")).to_have_text("Pending keys (0)")
    page.close()
    # Alice, the owner, sees it in the list, sorted and paged by the server.
    page = _open(browser_context, live, ALICE)
    page.goto(f"{live.url}/#/devices?sort=name&order=asc")
    expect(page.locator("#device-results")).to_contain_text("kitchen")
    _shot(page, artifacts, "devices")
    page.close()
