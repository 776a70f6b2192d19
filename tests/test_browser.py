"""The course as a learner meets it: JupyterLab started the README's way (`make lab`), lesson
01 opened and run in a real browser (headless Chromium), its allocation-stepper slider moved,
and the widget's output seen to change; no cell may show an error.

Needs Python's playwright and a Chromium (`make test` installs both where it can: Debian's
chromium as root with apt). Without them the test is skipped and says what is missing.
"""
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.lab_server import start_lab, stop_lab

ROOT = Path(__file__).resolve().parents[1]
# Flags that let Chromium start here: as root (no sandbox), without a GPU, and without its
# background connections (the machine's closed network refuses them, one by one, slowly).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
STARTUP_S, RUN_S = 90, 150


def _lesson_01() -> Path:
    found = sorted(ROOT.glob("notebooks/01_*.ipynb"))
    assert found, "no lesson 01 notebook in notebooks/"
    return found[0]


def _chromium() -> str:
    for name in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser",
                 "google-chrome"):
        path = name and shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium found (set $CHROMIUM, or install one: `apt-get install "
                "chromium`; `make test` does it when run as root)")


@pytest.fixture(scope="module")
def playwright_api():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (`pip install '.[browser]'`; `make test` "
                    "installs it)")
    with sync_playwright() as api:
        yield api


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """`make lab` with a port, a token and no browser; yields (base URL, token)."""
    if not (Path(sys.prefix) / "bin" / "jupyter").exists():
        pytest.skip("JupyterLab is not installed in this environment (run `make test`)")
    if not shutil.which("make"):
        pytest.skip("no `make`: the test starts JupyterLab the README's way, `make lab`")
    tmp = tmp_path_factory.mktemp("lab")
    # Autosave off: running the lesson must not rewrite the committed notebook. Settings,
    # workspaces and runtime files go to a temporary folder, not the user's home.
    settings = tmp / "settings" / "@jupyterlab" / "docmanager-extension"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
    args = ("--no-browser --LabApp.news_url=None "
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate")
    env = dict(JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
               JUPYTER_RUNTIME_DIR=str(tmp / "runtime"))
    server = start_lab(args, env, tmp / "lab.log", STARTUP_S)
    try:
        yield server.base, server.token
    finally:
        stop_lab(server.process)


def _menu(page, menu: str, command: str) -> None:
    """Click a menu of the menu bar, then one of its items (named by its command id)."""
    page.click(f".lm-MenuBar-item:has-text('{menu}')")
    page.click(f".lm-Menu-item[data-command='{command}']")


def _prompts(page) -> list[str]:
    return page.eval_on_selector_all(".jp-Notebook .jp-CodeCell .jp-InputArea-prompt",
                                     "els => els.map(e => e.textContent.trim())")


def _wait_until_run(page, timeout_s: float) -> int:
    """Wait until every code cell has run: a number in each prompt, none waiting ("[ ]:",
    cleared) or busy ("[*]:"). Returns how many code cells ran; raises on a cell's error."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        prompts = _prompts(page)
        if prompts and all(p not in ("[ ]:", "[*]:", "") for p in prompts):
            return len(prompts)
        if "[*]:" not in prompts and _errors(page):   # Run All stops at a failing cell
            raise AssertionError(f"a cell failed: {_errors(page)}")
        page.wait_for_timeout(500)
    raise AssertionError(f"the lesson did not finish running within {timeout_s} s; prompts: "
                         f"{prompts}")


def _errors(page) -> list[str]:
    """Text of every error output (a traceback) and of any stderr output naming an error."""
    errors = page.eval_on_selector_all(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]',
        "els => els.map(e => e.innerText)")
    stderr = page.eval_on_selector_all(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]',
        "els => els.map(e => e.innerText)")
    return errors + [s for s in stderr if "Error" in s or "Traceback" in s]


def test_lesson_01_runs_in_jupyterlab_and_its_stepper_responds(lab, playwright_api, tmp_path):
    base, token = lab
    lesson = _lesson_01()
    committed = lesson.read_bytes()
    browser = playwright_api.chromium.launch(executable_path=_chromium(), headless=True,
                                             args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(STARTUP_S * 1000)
    try:
        page.goto(f"{base}/lab/tree/{lesson.relative_to(ROOT).as_posix()}?token={token}")
        code_cells = sum(c["cell_type"] == "code" for c in json.loads(committed)["cells"])
        page.wait_for_function("n => document.querySelectorAll('.jp-Notebook .jp-CodeCell')"
                               ".length >= n", arg=code_cells)
        # Clear the committed outputs, so that every output checked below is this run's.
        _menu(page, "Edit", "editmenu:clear-all")
        assert set(_prompts(page)) == {"[ ]:"}
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
        _menu(page, "Run", "runmenu:run-all")
        assert _wait_until_run(page, RUN_S) == code_cells
        assert _errors(page) == []

        slider = page.locator(".jp-OutputArea-output .widget-slider").last
        slider.scroll_into_view_if_needed()
        box = slider.locator("xpath=ancestor::div[contains(@class, 'jp-OutputArea-output')][1]")
        text_before, image_before = _view(box)
        assert image_before, "the stepper shows no picture"
        handle, readout = slider.locator(".noUi-handle"), slider.locator(".widget-readout")
        start, top = int(readout.inner_text()), int(float(handle.get_attribute("aria-valuemax")))
        step = 1 if start + 3 <= top else -1     # three events on (or back, near the end)
        handle.focus()
        for _ in range(3):
            handle.press("ArrowRight" if step > 0 else "ArrowLeft")
        page.wait_for_function("([box, before]) => box.innerText !== before",
                               arg=[box.element_handle(), text_before], timeout=30_000)
        page.wait_for_function("([box, before]) => { const img = box.querySelectorAll('img'); "
                               "return img.length && img[img.length - 1].src !== before; }",
                               arg=[box.element_handle(), image_before], timeout=30_000)
        text_after, _ = _view(box)
        assert int(readout.inner_text()) == start + 3 * step
        assert text_after != text_before
        assert _errors(page) == []
    except Exception:
        page.screenshot(path=str(tmp_path / "browser.png"))
        print(f"screenshot of the failure: {tmp_path / 'browser.png'}")
        raise
    finally:
        browser.close()
    assert lesson.read_bytes() == committed, "running the lesson in the browser changed the file"


def _view(box):
    """What the learner sees of a widget's output: its text and the source of its picture."""
    image = box.locator("img")
    return box.inner_text(), image.last.get_attribute("src") if image.count() else None
