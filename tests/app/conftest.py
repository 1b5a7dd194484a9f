"""The app launched once per test session on a free localhost port, with the real embedded model."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from helpers.browser import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def loaded():
    """The embedded SmolLM2 model, shared with the app (swaa_core keeps one copy per process)."""
    import swaa_core

    return swaa_core.load_model()


@pytest.fixture(scope="session")
def app_url(loaded):
    """URL of the app, launched in this process's background threads exactly as app.py configures it."""
    from app.assets import launch_kwargs
    from app.page import build_demo

    demo = build_demo()
    demo.queue(default_concurrency_limit=1)
    kwargs = launch_kwargs()
    kwargs.update(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    demo.launch(**kwargs)
    try:
        yield demo.local_url.rstrip("/")
    finally:
        demo.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where browser tests leave screenshots (SWAA_ARTIFACTS, default test-artifacts/, git-ignored)."""
    path = Path(os.environ.get("SWAA_ARTIFACTS", ROOT / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Playwright, one per test module."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium).")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
