"""What the browser tests share: the Chromium they drive and the moment the app is ready to use."""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = Path(os.environ.get("SWAA_CHROMIUM", "/usr/bin/chromium"))  # tests/run.sh exports it
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MODEL_READY_S = 240  # a cold start converts the embedded GGUF first


def wait_until_ready(page) -> None:
    """The embedded model is loaded and the strategy's config drawn: every control is usable."""
    from playwright.sync_api import expect

    expect(page.locator("#swaa-facts")).to_contain_text("30 layers", timeout=MODEL_READY_S * 1000)
    expect(page.locator("#swaa-config")).to_contain_text("sliding_window_size", timeout=60_000)
