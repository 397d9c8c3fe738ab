"""JupyterLab in a real browser: pick a Docker kernel, switch Python 2 -> 3, interrupt from the toolbar.

Chromium is Debian's (/usr/bin/chromium), driven by Playwright. Screenshots go
to $DOCKERKERNEL_TEST_ARTIFACTS (default: the checkout's test-artifacts/). Every wait is on a
condition in the page, with a timeout.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import docker
import nbformat
import psutil
import pytest
from playwright.async_api import Browser, Locator, Page, async_playwright, expect

from conftest import WIDGETS, remove_images

pytestmark = pytest.mark.docker

CHROMIUM = os.environ.get("DOCKERKERNEL_TEST_CHROMIUM", "/usr/bin/chromium")
# No background connections: this machine's network is closed, and the tests need none.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
KERNEL_START = 60_000  # ms: a kernel start, image already present
# The checkout's test-artifacts/, whatever folder a test runs its client in.
ARTIFACTS = Path(os.environ.get("DOCKERKERNEL_TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts"))


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"these tests need Chromium at {CHROMIUM}; tests/run.sh installs Debian's chromium")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
def lab_settings(jupyter_dirs: Path) -> None:
    """JupyterLab user settings: no news toast over the notebook."""
    settings = jupyter_dirs / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))


async def pick_kernel(page: Page, display_name: str) -> None:
    """Choose a kernel in the open "Select Kernel" dialog and wait until it is idle."""
    dialog = page.locator(".jp-Dialog")
    await dialog.locator("select").select_option(label=display_name)
    await dialog.get_by_role("button", name="Select").click()
    await expect(status_bar(page, f"{display_name} | Idle")).to_be_visible(timeout=KERNEL_START)


def status_bar(page: Page, text: str) -> Locator:
    """The kernel's status in JupyterLab's status bar, e.g. "Docker py3 | Idle"."""
    return page.locator(".jp-StatusBar-Widget").filter(has_text=text)


async def run_cell(page: Page, index: int, code: str | None = None) -> None:
    """Put ``code`` (if given) in cell ``index`` and run it with Shift+Enter."""
    editor = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".cm-content")
    await editor.click()
    if code is not None:
        await page.keyboard.press("ControlOrMeta+a")
        await page.keyboard.type(code)
    await page.keyboard.press("Shift+Enter")


async def open_notebook(
    jupyter_server: Any,
    browser: Browser,
    path: Path,
    cells: list[str],
    kernel: tuple[str, str] | None = None,
    height: int = 720,
) -> tuple[Any, Page]:
    """Write a notebook of code ``cells`` at ``path``, for ``kernel`` (name, display name) where given,
    and open it in JupyterLab, served from its folder's parent; the server and the page."""
    metadata = {}
    if kernel is not None:
        metadata["kernelspec"] = {"name": kernel[0], "display_name": kernel[1], "language": "python"}
    notebook = nbformat.v4.new_notebook(metadata=metadata)
    notebook.cells = [nbformat.v4.new_code_cell(code) for code in cells]
    nbformat.write(notebook, path)
    server = await jupyter_server(path.parent.parent, app="jupyterlab")
    page = await browser.new_page(viewport={"width": 1280, "height": height})
    await page.goto(server.lab_url(f"{path.parent.name}/{path.name}"))
    return server, page


@asynccontextmanager
async def failure_shown(page: Page, server: Any) -> AsyncIterator[None]:
    """On a failure in its block: a screenshot of the page, and the server's log, then the failure."""
    try:
        yield
    except Exception:
        await screenshot(page, "lab-failure.png")
        print(server.log())
        raise


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=ARTIFACTS / name)


async def test_switch_kernels_and_interrupt_in_jupyterlab(
    kernels: dict[str, str],
    notebook_dir: Path,
    jupyter_server: Any,
    lab_settings: None,
    browser: Browser,
    docker_client: docker.DockerClient,
) -> None:
    # No kernel recorded: JupyterLab asks for one.
    server, page = await open_notebook(jupyter_server, browser, notebook_dir / "switch.ipynb", [""])
    first_output = page.locator(".jp-Notebook .jp-Cell").nth(0).locator(".jp-OutputArea-output")
    async with failure_shown(page, server):
        await pick_kernel(page, "Docker py2")
        await run_cell(page, 0, "import sys; print(sys.version)")
        await expect(first_output).to_contain_text("2.7.", timeout=KERNEL_START)
        await screenshot(page, "lab-python2.png")
        # Python 2 has no debugpy: its kernelspec says so, and JupyterLab's bug switch is off.
        bug = page.locator(".jp-NotebookPanel-toolbar .jp-DebuggerBugButton")
        await expect(bug).to_have_attribute("aria-disabled", "true")
        [py2_container] = docker_client.containers.list(
            filters={"label": f"org.dockerkernel.kernelspec={kernels['py2']}"}
        )

        # Switch from the kernel name in the notebook's toolbar.
        await page.locator(".jp-NotebookPanel-toolbar").get_by_role("button", name="Docker py2").click()
        await pick_kernel(page, "Docker py3")
        await run_cell(page, 0)
        await expect(first_output).to_contain_text("3.11.", timeout=KERNEL_START)
        await expect(bug).not_to_have_attribute("aria-disabled", "true")  # py3 can be debugged
        await screenshot(page, "lab-python3.png")
        # The Python 2 kernel's container went with it.
        with pytest.raises(docker.errors.NotFound):
            py2_container.reload()

        # Interrupt a long cell with the toolbar's button.
        await run_cell(page, 1, "import time; time.sleep(60)")
        await expect(status_bar(page, "Docker py3 | Busy")).to_be_visible()
        await page.get_by_role("button", name="Interrupt the kernel").click()
        second_output = page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".jp-OutputArea-output")
        await expect(second_output).to_contain_text("KeyboardInterrupt", timeout=10_000)
        await expect(status_bar(page, "Docker py3 | Idle")).to_be_visible()
        await screenshot(page, "lab-interrupt.png")


async def test_a_kernel_that_cannot_start_shows_why_in_the_notebook(
    dockerkernel: Any,
    notebook_dir: Path,
    jupyter_server: Any,
    lab_settings: None,
    browser: Browser,
    docker_client: docker.DockerClient,
) -> None:
    image = "127.0.0.1:9/no/such-image:1"
    install = ("install", "--image", image, "--name", "missing", "--display-name", "Broken", "--no-pull")
    assert dockerkernel(*install).code == 0
    notebook = notebook_dir / "broken.ipynb"
    server, page = await open_notebook(jupyter_server, browser, notebook, [""], ("missing", "missing"))
    async with failure_shown(page, server):
        await expect(status_bar(page, "Broken | Idle")).to_be_visible(timeout=KERNEL_START)
        await run_cell(page, 0, "print('hello')")
        output = page.locator(".jp-Notebook .jp-Cell").nth(0).locator(".jp-OutputArea-output")
        await expect(output).to_contain_text(f"Docker image '{image}' could not be pulled")
        await expect(output).to_contain_text("or build the image locally.")
        await screenshot(page, "lab-start-error.png")


async def test_the_debugger_stops_at_a_breakpoint_shows_the_variables_and_steps_over(
    kernels: dict[str, str],
    notebook_dir: Path,
    jupyter_server: Any,
    lab_settings: None,
    browser: Browser,
) -> None:
    """JupyterLab's debugger, over the kernel's own control channel: its kernelspec says it can (the probe
    found ipykernel 7 and debugpy in the image)."""
    server, page = await open_notebook(
        jupyter_server,
        browser,
        notebook_dir / "debug.ipynb",
        ["x = 6 * 7\ny = x + 1\nprint('y is', y)"],
        (kernels["py3"], "Docker py3"),
        height=800,
    )
    cell = page.locator(".jp-Notebook .jp-Cell").nth(0)
    variables = page.locator(".jp-DebuggerVariables-body:not(.lm-mod-hidden)")
    async with failure_shown(page, server):
        await expect(status_bar(page, "Docker py3 | Idle")).to_be_visible(timeout=KERNEL_START)
        bug = page.locator(".jp-NotebookPanel-toolbar .jp-DebuggerBugButton")
        await expect(bug).to_be_enabled(timeout=10_000)
        await bug.click()
        # A breakpoint on the second line: a click in the breakpoint gutter, level with it.
        gutter = await cell.locator(".cm-gutter.cm-breakpoint-gutter").bounding_box()
        line = await cell.locator(".cm-line").nth(1).bounding_box()
        assert gutter is not None and line is not None
        await page.mouse.click(gutter["x"] + gutter["width"] / 2, line["y"] + line["height"] / 2)
        await expect(page.locator(".jp-DebuggerBreakpoint-line")).to_have_text("2")
        await run_cell(page, 0)
        # Stopped there: the call stack shows the cell, and the variables panel x's value.
        await expect(page.locator(".jp-DebuggerCallstackFrame").first).to_be_visible(timeout=30_000)
        await expect(page.locator(".jp-DebuggerCallstackFrame-location").first).to_contain_text("Cell [*]:2")
        await expect(variables).to_contain_text("42")
        await expect(variables).not_to_contain_text("43")
        await screenshot(page, "lab-debugger-breakpoint.png")
        # Step over: y is made.
        await page.locator(".jp-DebuggerSidebar").get_by_title("Next").first.click()
        await expect(page.locator(".jp-DebuggerCallstackFrame-location").first).to_contain_text("Cell [*]:3")
        await expect(variables).to_contain_text("43")
        await page.locator(".jp-DebuggerSidebar").get_by_title("Continue").first.click()
        await expect(cell.locator(".jp-OutputArea-output")).to_contain_text("y is 43", timeout=30_000)
        await expect(status_bar(page, "Docker py3 | Idle")).to_be_visible()


async def test_a_widget_shows_and_its_value_reaches_the_kernel(
    dockerkernel: Any,
    notebook_dir: Path,
    jupyter_server: Any,
    lab_settings: None,
    browser: Browser,
) -> None:
    """ipywidgets in the image, jupyterlab_widgets in the server: the widget's comm runs over the
    kernel's channels like any message."""
    name = "widgets"
    installed = dockerkernel(
        "install", "--image", WIDGETS, "--name", name, "--display-name", "Docker widgets"
    )
    assert installed.code == 0, installed.err
    code = (
        "import ipywidgets as widgets\nslider = widgets.IntSlider(value=3, max=10, description='n')\nslider"
    )
    notebook = notebook_dir / "widgets.ipynb"
    server, page = await open_notebook(
        jupyter_server, browser, notebook, [code, ""], (name, "Docker widgets")
    )
    async with failure_shown(page, server):
        await expect(status_bar(page, "Docker widgets | Idle")).to_be_visible(timeout=KERNEL_START)
        await run_cell(page, 0)
        slider = page.locator(".jp-Notebook .jp-Cell").nth(0).locator(".widget-slider")
        await expect(slider).to_be_visible(timeout=30_000)
        await expect(slider.locator(".widget-readout")).to_have_text("3")
        handle = slider.locator(".noUi-handle")
        await handle.focus()
        for _ in range(4):
            await page.keyboard.press("ArrowRight")
        await expect(slider.locator(".widget-readout")).to_have_text("7")
        await screenshot(page, "lab-widget.png")
        await run_cell(page, 1, "print('the kernel has', slider.value)")
        output = page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".jp-OutputArea-output")
        await expect(output).to_contain_text("the kernel has 7", timeout=30_000)


@pytest.mark.parametrize("limited", [True, False], ids=["with-limits", "without"])
async def test_the_kernel_usage_panel_shows_the_containers_limits(
    dockerkernel: Any, notebook_dir: Path, jupyter_server: Any, limited: bool
) -> None:
    """What jupyter-resource-usage's kernel usage panel shows, from the request it makes for it: the
    kernel's usage_request on its control channel, answered in the container."""
    limits = ("--mem-limit", "300m", "--cpus", "1.5") if limited else ()
    installed = dockerkernel("install", "--image", "dockerkernel-test/py3", "--name", "usage", *limits)
    assert installed.code == 0, installed.err
    server = await jupyter_server(notebook_dir.parent)
    kernel = await server.api("POST", "/api/kernels", {"name": "usage"})
    try:
        usage = await server.api("GET", f"/api/metrics/v1/kernel_usage/get_usage/{kernel['id']}")
        content = usage["content"]
        assert content["kernel_memory"] > 10_000_000  # the kernel's own processes
        if limited:
            assert content["host_virtual_memory"]["total"] == 300 * 1024 * 1024
            assert 0 < content["host_virtual_memory"]["used"] < 300 * 1024 * 1024
            assert content["cpu_count"] == 2  # 1.5 CPUs, rounded up
        else:
            assert content["host_virtual_memory"]["total"] == psutil.virtual_memory().total
            assert content["cpu_count"] == psutil.cpu_count()
    finally:
        await server.api("DELETE", f"/api/kernels/{kernel['id']}")


async def test_a_labelled_image_appears_in_the_launcher_with_no_restart(
    notebook_dir: Path,
    jupyter_dirs: Path,
    jupyter_server: Any,
    lab_settings: None,
    browser: Browser,
    docker_client: docker.DockerClient,
) -> None:
    """With DockerKernelDiscovery.sync, the server writes its kernelspec; JupyterLab's launcher shows it at
    its next refresh of the kernelspecs, which JupyterLab makes every 61 s."""
    (jupyter_dirs / "config" / "jupyter_server_config.json").write_text(
        json.dumps({"DockerKernelDiscovery": {"sync": True, "interval": 2}})
    )
    server = await jupyter_server(notebook_dir.parent, app="jupyterlab")
    page = await browser.new_page(viewport={"width": 1280, "height": 720})
    await page.goto(f"{server.url}/lab?token={server.token}")
    image = "dktest-launcher/fresh:1"
    card = page.locator(".jp-LauncherCard").filter(has_text="Fresh from a label")
    try:
        async with failure_shown(page, server):
            await expect(page.locator(".jp-LauncherCard").first).to_be_visible(timeout=30_000)
            await expect(card).to_have_count(0)
            label = json.dumps({"display_name": "Fresh from a label"})
            dockerfile = b"FROM dockerkernel-test/py3\n"
            docker_client.images.build(
                fileobj=io.BytesIO(dockerfile), tag=image, labels={"org.dockerkernel.kernel": label}, rm=True
            )
            await expect(card.first).to_be_visible(timeout=90_000)
            await screenshot(page, "lab-discovered-kernel.png")
    finally:
        remove_images(docker_client, image)
