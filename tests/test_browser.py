"""The explorers in a real browser: JupyterLab 4 driven by headless Chromium (Playwright for Python).

For each explorer (chapter 03's attention maps, chapter 04's schedule, chapter 07's sampling) the test
opens a small notebook in JupyterLab, runs it, checks that live controls (not a static view, not
widget repr text) appear, moves one control, checks that the drawing changed, then saves the notebook
and checks that what JupyterLab wrote passes the repository's hygiene check (tools/nbclean.py).

The notebooks are small and dedicated (written by this test into a temporary folder): each builds a
small random model in a second and shows the explorer the chapter shows, imported from the library
(`tinyllm_lib.explorer`, `tinyllm_lib.generate`), so the test stays well under a minute. The chapters'
own cells above their explorers train tokenizers and models and would take minutes on 2 cores.

Needs Chromium (the system's: /usr/bin/chromium, or CHROMIUM=path) and `playwright` (the Python package,
in the dev extras); it never downloads a browser. Skipped, with the reason, when either is missing.
Deselect it with `pytest -m "not browser"`. A failure leaves a screenshot in the pytest tmp folder
(named in the message); TINYLLM_SCREENSHOTS=<folder> also keeps one screenshot per explorer after its
control moved (docs/explorers/ holds the committed ones).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


SETUP = """\
import torch
from tinyllm_lib.model import GPT, GPTConfig
from tinyllm_lib.tokenizer import BPETokenizer

text = ("First Citizen:\\nBefore we proceed any further, hear me speak.\\n\\nAll:\\nSpeak, speak.\\n\\n"
        "First Citizen:\\nYou are all resolved rather to die than to famish?\\n\\nAll:\\nResolved. resolved.\\n") * 4
tok = BPETokenizer().train(text, 120)
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=64, d_model=48, n_layers=2, n_heads=4,
                      d_ff=96)).eval()
with torch.no_grad():  # large random weights: maps and distributions with some structure to see
    for name, p in model.named_parameters():
        if p.dim() == 2:
            p.normal_(0.0, 0.4)
"""

EXPLORERS = {
    # name: (cell that shows the explorer, the control to move: (widget class, its index), what to watch)
    "ch03_attention": ("from tinyllm_lib.explorer import AttentionExplorer\n"
                       "explorer = AttentionExplorer(model, tok, 'First Citizen:\\nBefore we proceed any further')\n"
                       "explorer.show()", 1),  # the second slider: head
    "ch04_schedule": ("from tinyllm_lib.explorer import ScheduleExplorer\n"
                      "explorer = ScheduleExplorer()\nexplorer.show()", 0),  # the first slider: warmup
    "ch07_sampling": ("from tinyllm_lib.generate import SamplingExplorer\n"
                      "explorer = SamplingExplorer(model, tok, prompt='All:\\n', max_new_tokens=30)\n"
                      "explorer.show()", 0),  # the first slider: temperature
}


def write_notebook(path: Path, sources: list[str]) -> None:
    cells = [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
              "source": s} for i, s in enumerate(sources)]
    nb = {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                       "name": "python3"}, "language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free port, on a temporary folder, with its own settings; yields its URL."""
    if importlib_missing("playwright"):
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    if chromium_path() is None:
        pytest.skip("no Chromium found (/usr/bin/chromium; Debian/Ubuntu: apt-get install chromium)")
    if importlib_missing("jupyterlab") or importlib_missing("ipywidgets"):
        pytest.skip("jupyterlab and ipywidgets are needed")
    base = tmp_path_factory.mktemp("lab")
    books = base / "notebooks"
    books.mkdir()
    for name, (cell, _) in EXPLORERS.items():
        write_notebook(books / f"{name}.ipynb", [SETUP, cell])
    news = base / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}), encoding="utf-8")
    port = free_port()
    env = dict(os.environ, TINYLLM_QUICK="1", JUPYTER_CONFIG_DIR=str(base / "config"),
               JUPYTER_RUNTIME_DIR=str(base / "runtime"), JUPYTERLAB_SETTINGS_DIR=str(base / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"), TINYLLM_NBCLEAN_ROOTS=str(books),
               OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("TINYLLM_WIDGETS", "TINYLLM_STRICT_CHECKS", "PYTEST_XDIST_WORKER", "PYTEST_CURRENT_TEST"):
        env.pop(key, None)
    log = open(base / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.root_dir={base}", "--IdentityProvider.token=", "--ServerApp.password=",
         "--ServerApp.disable_check_xsrf=True", "--expose-app-in-browser", "--allow-root",
         "--ContentsManager.pre_save_hook=tinyllm_lib.explorer.jupyter_pre_save_hook",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" + (base / "server.log").read_text()) from None
                time.sleep(0.3)
        yield url, base
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


@pytest.fixture(scope="module")
def browser(lab, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        chromium = p.chromium.launch_persistent_context(
            str(profile), executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1024, "height": 900})
        try:
            yield chromium
        finally:
            chromium.close()


def image_of(page, selector: str) -> str:
    return page.eval_on_selector(selector, "img => img.src")


@pytest.mark.parametrize("name", sorted(EXPLORERS))
def test_explorer_moves_in_jupyterlab(lab, browser, name, tmp_path):
    url, base = lab
    control = EXPLORERS[name][1]
    page = browser.new_page()
    page.set_default_timeout(30_000)
    shot = tmp_path / f"{name}-failure.png"
    try:
        # a workspace of its own, reset: only this notebook is open
        page.goto(f"{url}/lab/workspaces/{name}/tree/notebooks/{name}.ipynb?reset")
        page.wait_for_function("(path) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                               " return w && w.context && w.context.path === path && w.sessionContext"
                               " && w.sessionContext.isReady; }", arg=f"notebooks/{name}.ipynb")
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        # live controls, with the explorer's first drawing inside the widget
        output = ".jp-OutputArea-output .widget-output img"
        page.wait_for_selector(output, timeout=45_000)
        text = page.inner_text(".jp-Notebook")
        assert "children=" not in text and "static view" not in text, text[-2000:]
        before = image_of(page, output)
        handle = page.locator(".widget-slider .noUi-handle").nth(control)
        handle.focus()
        handle.press("ArrowRight")  # one step: head 0 -> 1, warmup 100 -> 110, temperature 0.80 -> 0.85
        page.wait_for_function("([sel, old]) => { const img = document.querySelector(sel);"
                               " return img && img.src !== old; }", arg=[output, before], timeout=20_000)
        idle = ("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'")
        page.wait_for_function(idle)
        if name == "ch07_sampling":
            page.get_by_role("button", name="Generate").click()
            page.wait_for_function("() => [...document.querySelectorAll('.widget-html pre')]"
                                   ".some(p => p.innerText.length > 'All:↵'.length + 2)", timeout=20_000)
            sample = page.inner_text(".widget-html pre")
            assert sample.startswith("All:↵"), sample
            page.wait_for_function(idle)
        keep = os.environ.get("TINYLLM_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            page.locator(".jp-Notebook .jp-Cell").nth(1).screenshot(path=str(Path(keep) / f"{name}.png"))
        # Save as a learner would (Ctrl+S): what JupyterLab writes passes the hygiene check
        path = base / "notebooks" / f"{name}.ipynb"
        saved_before = path.stat().st_mtime_ns
        page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
        deadline = time.time() + 15
        while path.stat().st_mtime_ns == saved_before and time.time() < deadline:
            time.sleep(0.2)
        assert path.stat().st_mtime_ns != saved_before, "the notebook was not saved"
        sys.path.insert(0, str(ROOT / "tools"))
        try:
            import nbclean
        finally:
            sys.path.pop(0)
        written = path.read_text(encoding="utf-8")
        assert nbclean.dumps(nbclean.clean(json.loads(written))) == written, "a JupyterLab save is not clean"
        assert "widget-view+json" not in written and '"widgets"' not in written
        assert "children=" not in written  # no widget repr text (the widget outputs are dropped)
    except Exception as exc:
        page.screenshot(path=str(shot), full_page=True)
        raise AssertionError(f"{name}: {exc}\nsee the screenshot {shot}; server log {base / 'server.log'}") from exc
    finally:
        page.close()
