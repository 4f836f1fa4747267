"""The live status page, loaded in headless Chromium against a running coordinator.

The browser runs the page's own JavaScript against the coordinator's JSON
endpoints, so the test sees what a person would: the totals, the shards with
work, the executors, the latest failures, and the staircase drawn on the canvas
(read back pixel by pixel). Skipped only where Chromium or its driver is missing
(``apt-get install chromium chromium-driver``; ``.ci/run`` installs them).
"""

from __future__ import annotations

import asyncio
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conveyor import WorkflowContext, workflow
from support import eventually, registry_of
from toolkit import MakeStack, task_rows, wait_finished

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
BLUE, GREEN = (31, 119, 180), (44, 160, 44)

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="headless Chromium is not installed (apt-get install chromium chromium-driver)",
)


@workflow
async def two_calls(ctx: WorkflowContext, item: int) -> str:
    first = await ctx.llm(
        model="sim", max_tokens=8, name="first", messages=[{"role": "user", "content": f"{item}"}]
    )
    second = await ctx.llm(
        model="sim", max_tokens=8, name="second", messages=[{"role": "user", "content": first.text}]
    )
    return second.text


@workflow
async def broken(ctx: WorkflowContext, item: int) -> None:
    raise ValueError(f"broken #{item}")


@workflow
async def parked(ctx: WorkflowContext, item: int) -> Any:
    return await ctx.task("unserved", item)


WORKFLOWS = registry_of(two_calls, broken, parked)

#: The colours (r, g, b, alpha) of the pixels of one staircase row.
ROW_COLOURS = """
const canvas = document.getElementById("staircase");
const rowHeight = Number(canvas.dataset.rowHeight);
const data = canvas.getContext("2d").getImageData(0, arguments[0] * rowHeight, canvas.width, 1).data;
const colours = new Set();
for (let i = 0; i < data.length; i += 4) {
  if (data[i + 3] > 0) colours.add([data[i], data[i + 1], data[i + 2], data[i + 3]].join(","));
}
return Array.from(colours);
"""


def _browser(profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,1800",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def _read_page(url: str, profile: Path, screenshot: Path) -> dict[str, Any]:
    """Load the page and wait until it shows the expected totals; return what it shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser(profile)
    try:
        browser.get(url)
        text = lambda element_id: browser.find_element(By.ID, element_id).text  # noqa: E731
        WebDriverWait(browser, 30, poll_frequency=0.2).until(
            lambda _: (
                text("total-completed") == "3"
                and text("total-queued") == "2"
                and browser.find_element(By.ID, "staircase").get_attribute("data-rows") == "6"
            )
        )

        def rows(table: str) -> list[list[str]]:
            return [
                [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
                for row in browser.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")
            ]

        browser.save_screenshot(str(screenshot))
        return {
            "totals": {
                name: text(f"total-{name}")
                for name in ("running", "completed", "failed", "cancelled", "queued", "claimed", "executors")
            },
            "cluster": text("cluster"),
            "shards": rows("shards"),
            "executors": rows("executors"),
            "failures": rows("failures"),
            "row colours": [browser.execute_script(ROW_COLOURS, row) for row in range(6)],
            "error banner shown": browser.find_element(By.ID, "error").is_displayed(),
        }
    finally:
        browser.quit()


def _near(colour: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    return all(abs(a - b) <= 3 for a, b in zip(colour, expected, strict=True))


def _colours(row: list[str]) -> set[tuple[int, ...]]:
    return {tuple(int(part) for part in colour.split(",")) for colour in row}


async def test_the_status_page_shows_totals_shards_executors_failures_and_the_staircase(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = await make_stack(WORKFLOWS, shards=4, http_port=0)
    await stack.start_simulator()
    executor = stack.start_executor(concurrency=4, executor_id="exec-page")
    started = await stack.client.start_workflows([("two_calls", {"item": i}) for i in range(3)])
    failed = await stack.client.start_workflow("broken", {"item": 7})
    for workflow_id in [s.workflow_id for s in started] + [failed.workflow_id]:
        await wait_finished(stack.client, workflow_id)
    parked_ids = [
        s.workflow_id for s in await stack.client.start_workflows([("parked", [i]) for i in range(2)])
    ]

    async def parked_queued() -> bool:
        return len(await task_rows(stack.database_url)) == 2

    await eventually(parked_queued)
    assert stack.server is not None and stack.server.http_port
    url = f"http://127.0.0.1:{stack.server.http_port}/"

    page = await asyncio.to_thread(_read_page, url, tmp_path / "profile", tmp_path / "status.png")

    assert page["totals"] == {
        "running": "2",
        "completed": "3",
        "failed": "1",
        "cancelled": "0",
        "queued": "2",
        "claimed": "0",
        "executors": "1",
    }
    assert page["cluster"].startswith("epoch 1 · 4 shards · updated ")
    assert not page["error banner shown"]
    parked_shards = {str((await stack.client.get_workflow(wid)).shard) for wid in parked_ids}
    assert {row[0] for row in page["shards"]} == parked_shards
    assert sum(int(row[1]) for row in page["shards"]) == 2
    assert [row[:3] for row in page["executors"]] == [[executor.config.executor_id, "live", "1"]]
    (failure,) = page["failures"]
    assert (failure[0], failure[1]) == (failed.workflow_id, "broken")
    assert failure[3].startswith("ValueError: broken #7")
    # Staircase: rows in start order. A finished two_calls row shows both steps bright (blue, then
    # green); the broken workflow took no step; a parked row is its first step, dim while queued.
    for row in page["row colours"][:3]:
        bright = {colour[:3] for colour in _colours(row) if colour[3] == 255}
        assert {BLUE, GREEN} <= bright
    assert page["row colours"][3] == []
    for row in page["row colours"][4:]:
        colours = _colours(row)
        # Translucent pixels come back rounded (the canvas stores them premultiplied).
        assert colours and all(_near(colour[:3], BLUE) and colour[3] < 128 for colour in colours)


async def test_the_json_endpoints_refuse_bad_parameters_and_the_page_has_no_write_routes(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(WORKFLOWS, http_port=0)
    assert stack.server is not None and stack.server.http_port
    base = f"http://127.0.0.1:{stack.server.http_port}"

    def status_of(path: str, method: str = "GET") -> int:
        request = urllib.request.Request(base + path, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    answers = await asyncio.to_thread(
        lambda: {
            "page": status_of("/"),
            "script": status_of("/static/status.js"),
            "overview": status_of("/api/overview"),
            "rows=abc": status_of("/api/staircase?rows=abc"),
            "rows=0": status_of("/api/staircase?rows=0"),
            "POST": status_of("/api/overview", "POST"),
        }
    )
    assert answers == {
        "page": 200,
        "script": 200,
        "overview": 200,
        "rows=abc": 400,
        "rows=0": 400,
        "POST": 405,
    }
