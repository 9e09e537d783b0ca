"""The Jobs Management page in real headless Chromium against a real scheduler.

One walk through the page, as an operator would: a wrong token, signing in,
watching a job fire, disabling and enabling it, starting and stopping a run,
its history and explain, a viewer refused (403), and a revoked token sent back
to the login. Each step is checked in the page and, where it changes
something, through the API too.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import BrowserContext, ConsoleMessage, Locator, Page, expect
from web_harness import Served

pytestmark = pytest.mark.integration

BROWSER_ZONE = ZoneInfo("Asia/Kolkata")  # the browser fixture's time zone
WAIT_MS = 10_000

HEARTBEAT = {
    "name": "heartbeat",
    "type": "start-workflow",
    "description": "Starts the heartbeat workflow every second",
    "schedule": {"kind": "cron", "expression": "* * * * * *", "timezone": "UTC"},
    "params": {"workflow": "heartbeat"},
}
NIGHTLY = {
    "name": "nightly-report",
    "type": "start-workflow",
    "description": "Builds the sales report on weekday nights",
    "group": "reports",
    "schedule": {"kind": "cron", "expression": "0 30 2 * * MON-FRI", "timezone": "Europe/Berlin"},
    "params": {"workflow": "sales-report"},
}
# A worker job without a schedule: no worker serves "test-work" here, so a run
# it is started with stays active until it is stopped.
LONG_WORK = {
    "name": "long-work",
    "type": "test-work",
    "description": "A worker job; its runs stay active (no worker in this test)",
    "params": {"seconds": 60},
}


def cell(row: Locator, column: str) -> Locator:
    return row.locator(f'[data-col="{column}"]')


async def sign_in(page: Page, token: str) -> None:
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()


async def test_operate_jobs_from_the_page(
    served: Served, browser: BrowserContext, tmp_path: Path
) -> None:
    admin = await served.token("web-admin", "admin")
    viewer = await served.token("web-viewer", "viewer")
    async with served.client(admin) as api:
        for job in (HEARTBEAT, NIGHTLY, LONG_WORK):
            created = await api.post("/api/v1/jobs", json=job)
            assert created.status_code == 201, created.text

        page = await browser.new_page()
        # JS exceptions and console errors (a CSP violation is one), except the
        # browser's own line for each refused request (401, 403) the test provokes.
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error" and "Failed to load resource" not in message.text:
                errors.append(message.text)

        page.on("console", on_console)
        response = await page.goto(f"{served.url}/")
        assert response is not None
        assert response.status == 200
        assert "script-src 'self'" in response.headers["content-security-policy"]

        # A wrong token: back at the login, saying why; nothing kept.
        await sign_in(page, "jw_not-a-real-token")
        await expect(page.locator("#login-error")).to_contain_text("unknown or revoked")
        await expect(page.get_by_label("API token")).to_be_visible()
        assert await page.evaluate("sessionStorage.length") == 0

        # Signed in: the job is in the table and the page follows it as it fires.
        await sign_in(page, admin)
        row = page.locator('tr[data-job="heartbeat"]')
        await expect(cell(row, "type")).to_have_text("start-workflow")
        await expect(cell(row, "last-result")).to_have_text("succeeded", timeout=WAIT_MS)
        first = await cell(row, "last-run").inner_text()
        await expect(cell(row, "last-run")).not_to_have_text(first, timeout=WAIT_MS)
        await expect(cell(row, "next-run").locator("time")).to_be_visible()
        assert await page.evaluate("sessionStorage.length") == 1  # the token, in this tab only

        # Times read in the browser's zone; the UTC instant is in the title (hover).
        iso, title, text = (
            await cell(row, "last-run")
            .locator("time")
            .evaluate("t => [t.dateTime, t.title, t.textContent]")
        )
        instant = datetime.fromisoformat(iso.replace("Z", "+00:00"))
        assert title == instant.strftime("%Y-%m-%d %H:%M:%S UTC")
        assert text == instant.astimezone(BROWSER_ZONE).strftime("%Y-%m-%d %H:%M:%S")

        # Disable: the status changes, the API agrees, Start is off; then enable.
        await page.get_by_role("button", name="Disable heartbeat").click()
        await expect(cell(row, "status")).to_have_text("Disabled")
        await expect(page.locator("#notice")).to_have_text("Disabled heartbeat.")
        assert (await api.get("/api/v1/jobs/heartbeat")).json()["enabled"] is False
        await expect(row.get_by_role("button", name="Start heartbeat now")).to_be_disabled()
        await expect(cell(row, "next-run")).to_have_text("—")
        await page.get_by_role("button", name="Enable heartbeat").click()
        await expect(cell(row, "status")).to_have_text(re.compile("^(Ready|Running)$"))
        assert (await api.get("/api/v1/jobs/heartbeat")).json()["enabled"] is True
        await expect(cell(row, "next-run").locator("time")).to_be_visible(timeout=WAIT_MS)

        # Start a run, see it active, stop it: the API has the cancel request.
        work = page.locator('tr[data-job="long-work"]')
        await expect(
            work.get_by_role("button", name="Stop the active run of long-work")
        ).to_be_disabled()
        await work.get_by_role("button", name="Start long-work now").click()
        await expect(page.locator("#notice")).to_contain_text("Started long-work: run")
        await expect(cell(work, "status")).to_have_text("Running", timeout=WAIT_MS)
        await work.get_by_role("button", name="Stop the active run of long-work").click()
        await expect(page.locator("#notice")).to_have_text("Asked 1 run of long-work to stop.")
        [run] = (await api.get("/api/v1/jobs/long-work/runs")).json()["items"]
        assert run["trigger"] == "manual"
        assert run["requested_by"] == "web-admin"
        detail_of_run = (await api.get(f"/api/v1/runs/{run['id']}")).json()
        assert detail_of_run["cancel_requested_at"] is not None

        # The detail panel: facts, the latest runs, and explain for a slot that fired.
        await page.get_by_role("button", name="Details of heartbeat").click()
        detail = page.locator("#detail")
        await expect(detail.get_by_role("heading", name="heartbeat")).to_be_focused()
        await expect(detail.locator("#detail-facts")).to_contain_text("cron * * * * * * (UTC)")
        history = detail.locator("#runs-body tr")
        await expect(history.first).to_contain_text("succeeded", timeout=WAIT_MS)
        assert 1 <= await history.count() <= 20
        [fired] = (
            await api.get("/api/v1/jobs/heartbeat/runs", params={"status": "succeeded", "limit": 1})
        ).json()["items"]
        slot = datetime.fromisoformat(fired["scheduled_for"]).astimezone(BROWSER_ZONE)
        await detail.get_by_label("Why did it (not) run at").fill(
            slot.strftime("%Y-%m-%dT%H:%M:%S")
        )
        await detail.get_by_role("button", name="Explain").click()
        result = detail.locator("#explain-result")
        await expect(result).to_contain_text("Fired")
        await expect(result).to_contain_text(f"Run {fired['id']}")
        await page.screenshot(path=tmp_path / "jobs-page.png", full_page=True)

        # A viewer may look but not act: the 403 is shown in the page, nothing changes.
        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_label("API token")).to_be_visible()
        assert await page.evaluate("sessionStorage.length") == 0
        await sign_in(page, viewer)
        nightly = page.locator('tr[data-job="nightly-report"]')
        await expect(cell(nightly, "status")).to_have_text("Ready")
        await page.get_by_role("button", name="Disable nightly-report").click()
        problem = page.locator("#problem")
        await expect(problem).to_be_visible()
        await expect(problem).to_contain_text("Disable nightly-report refused (403 Forbidden)")
        await expect(problem).to_contain_text("needs the operator role")
        await expect(cell(nightly, "status")).to_have_text("Ready")
        assert (await api.get("/api/v1/jobs/nightly-report")).json()["enabled"] is True

        # The viewer's token is revoked: the next refresh returns to the login.
        assert (await api.delete("/api/v1/tokens/web-viewer")).status_code == 204
        await expect(page.locator("#login-error")).to_contain_text(
            "unknown or revoked", timeout=WAIT_MS
        )
        await expect(page.locator("#jobs")).to_be_hidden()
        assert await page.evaluate("sessionStorage.length") == 0

        assert errors == []


async def test_the_page_and_its_files_are_served_with_a_strict_policy(served: Served) -> None:
    async with served.client() as http:
        index = await http.get("/")
        assert index.status_code == 200
        assert index.headers["content-type"].startswith("text/html")
        for path in ("/static/app.js", "/static/app.css", "/static/favicon.svg"):
            response = await http.get(path)
            assert response.status_code == 200, path
            assert response.headers["x-content-type-options"] == "nosniff"
            assert "default-src 'none'" in response.headers["content-security-policy"]
        # The page references only its own files: no CDN, nothing inline.
        html = index.text
        assert not re.search(r"(src|href)=\"(https?:)?//", html)
        assert "<script>" not in html
        assert "style=" not in html
        assert (await http.get("/static/../main.py")).status_code == 404
        # The API is still behind the page's routes.
        assert (await http.get("/api/v1/health")).json()["ready"] is True
