"""SWAA Recipe Explorer: `python app.py` opens it locally; Hugging Face Spaces run this file too.

Environment: GRADIO_SERVER_NAME (0.0.0.0 on Spaces, which set it), GRADIO_SERVER_PORT, SWAA_CONCURRENCY (runs at once
per model group; default 1 on CPU), SWAA_PRELOAD=0 to skip loading the default model at start-up.
"""

from __future__ import annotations

import logging
import os
import sys

from app.common import HUB
from app.ui import build_demo, launch_kwargs
from swaa_core.registry import DEFAULT_MODEL

logging.basicConfig(level=os.environ.get("SWAA_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s")

if os.environ.get("SWAA_PRELOAD", "1") != "0":
    HUB.preload(DEFAULT_MODEL)  # in the background: the page is up at once, the first run waits for what is left

demo = build_demo()
# Model runs are serialised per model anyway (one lock each); the queue keeps waiting visitors in line.
demo.queue(default_concurrency_limit=int(os.environ.get("SWAA_CONCURRENCY", "1")), max_size=64)


def _can_open_browser() -> bool:
    """Open a tab only for a person at a desktop: not on a Space or in CI, and on Linux only with a display (without
    one, Python's webbrowser may start a text-mode browser that blocks the terminal)."""
    if os.environ.get("SPACE_ID") or os.environ.get("CI"):
        return False
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


if __name__ == "__main__":
    demo.launch(inbrowser=_can_open_browser(), **launch_kwargs())
