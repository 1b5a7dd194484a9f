"""SWAA Recipe Explorer: `python app.py` opens it locally; Hugging Face Spaces run this file too.

Environment: GRADIO_SERVER_NAME (0.0.0.0 on Spaces, which set it), GRADIO_SERVER_PORT, SWAA_CONCURRENCY (runs at once
per model group; default 1 on CPU), SWAA_PRELOAD=0 to skip loading the default model at start-up,
SWAA_ALLOWED_DIRS (on a Space: the only local folders models and adapters load from). Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from app.common import CANCELS, HUB, remove_temp_root
from app.ui import build_demo, launch_kwargs
from swaa_core.models.registry import DEFAULT_MODEL

logging.basicConfig(level=os.environ.get("SWAA_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s")
log = logging.getLogger("swaa_app")
for chatty in ("httpx", "pypdf"):  # a line per HTTP request of Gradio's own client, a warning per odd PDF object
    logging.getLogger(chatty).setLevel(logging.ERROR if chatty == "pypdf" else logging.WARNING)
SHUTDOWN_WAIT_S = 20  # a cancelled column stops at its next layer; a model still loading is not waited for

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


_stopping = threading.Lock()


def _shutdown(signum, _frame) -> None:
    """Ctrl-C (SIGINT) or SIGTERM at any moment: cancel every run, wait for the model threads, close the server,
    remove this process's temp files, exit 130 (SIGINT) or 0 (SIGTERM).

    os._exit, not sys.exit: the interpreter's own shutdown would tear down PyTorch and tokenizer threads that may
    still be loading a model, which aborts the process ("terminate called without an active exception", exit 134).
    A second Ctrl-C during the wait exits at once."""
    code = 130 if signum == signal.SIGINT else 0
    if not _stopping.acquire(blocking=False):
        os._exit(code)
    log.info("Stopping: cancelling runs (up to %d s), then closing the server.", SHUTDOWN_WAIT_S)
    try:
        if not CANCELS.shutdown(SHUTDOWN_WAIT_S):
            log.warning("A model run did not stop within %d s; exiting anyway.", SHUTDOWN_WAIT_S)
        demo.close()
        remove_temp_root()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, _shutdown)
    signal.signal(signal.SIGTERM, _shutdown)
    demo.launch(inbrowser=_can_open_browser(), **launch_kwargs())
