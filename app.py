"""SWAA Recipe Explorer: `python app.py` opens it locally; Hugging Face Spaces run this file too.

Environment: GRADIO_SERVER_NAME (0.0.0.0 on Spaces, which set it), GRADIO_SERVER_PORT, SWAA_CONCURRENCY (runs at once
per model group; default 1 on CPU), SWAA_PRELOAD=0 to skip loading the default model at start-up,
SWAA_ALLOWED_DIRS (on a Space: the only local folders models and adapters load from). Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

if __name__ == "__main__":  # Ctrl-C while torch and Gradio import (seconds): stop quietly, not with a traceback
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    import argparse

    # no options: settings come from the environment (above); --help says so, anything else is refused, not ignored
    argparse.ArgumentParser(
        prog="python app.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()

import logging
import threading

from gradio.route_utils import delete_files_created_by_app

from app.assets import launch_kwargs
from app.model_service import HUB
from app.page import build_demo
from app.runs import CANCELS
from app.temp_files import remove_temp_root
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


def _port() -> int | None:
    """The port to serve on. One asked for (GRADIO_SERVER_PORT) must be free, or the app stops and says so; else the
    first free one from Gradio's 7860, said out loud when it is not 7860 (a second app may be running)."""
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    asked = os.environ.get("GRADIO_SERVER_PORT", "").strip()
    if asked:
        if not asked.isdigit() or not _free(host, int(asked)):
            log.error(
                "Port %s (GRADIO_SERVER_PORT) is not free on %s: stop what uses it or choose another.", asked, host
            )
            os._exit(1)
        return int(asked)
    port = next((p for p in range(7860, 7960) if _free(host, p)), None)
    if port is not None and port != 7860:
        log.warning("Port 7860 is taken (another app?); serving on port %d instead. GRADIO_SERVER_PORT chooses.", port)
    return port


def _free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
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
        # Gradio empties its cache of this app's files (uploads, results downloads) in its server's shutdown,
        # which os._exit below does not wait for: the same function, called here
        delete_files_created_by_app(demo, age=None)
        remove_temp_root()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, _shutdown)
    signal.signal(signal.SIGTERM, _shutdown)
    demo.launch(inbrowser=_can_open_browser(), **{**launch_kwargs(), "server_port": _port()})
