"""SWAA Recipe Explorer: `python app.py` opens it locally; Hugging Face Spaces run this file too.

Environment: GRADIO_SERVER_NAME (0.0.0.0 on Spaces, which set it), GRADIO_SERVER_PORT, SWAA_CONCURRENCY (runs at once
per model group; default 1 on CPU), SWAA_PRELOAD=0 to skip loading the default model at start-up.
"""

from __future__ import annotations

import logging
import os

from app.common import HUB
from app.ui import build_demo, launch_kwargs
from swaa_core.registry import DEFAULT_MODEL

logging.basicConfig(level=os.environ.get("SWAA_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s")

if os.environ.get("SWAA_PRELOAD", "1") != "0":
    HUB.preload(DEFAULT_MODEL)  # in the background: the page is up at once, the first run waits for what is left

demo = build_demo()
# Model runs are serialised per model anyway (one lock each); the queue keeps waiting visitors in line.
demo.queue(default_concurrency_limit=int(os.environ.get("SWAA_CONCURRENCY", "1")), max_size=64)

if __name__ == "__main__":
    demo.launch(**launch_kwargs())
