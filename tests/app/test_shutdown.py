"""Ctrl-C stops `python app.py` cleanly at any moment: exit status 130, no child process, the port free again.

Runs the real entry point in a subprocess (the in-process test app cannot receive a signal of its own).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from .conftest import ROOT, free_port

pytestmark = pytest.mark.embedded

START_S = 120  # until the server answers
EXIT_S = 60  # from Ctrl-C to exit: a cancelled column stops at its next layer


def _launch(port: int, **env) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1", "PYTHONPATH": str(ROOT),
           **env}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _start_app(port: int, **env) -> subprocess.Popen:
    proc = _launch(port, **env)
    deadline = time.monotonic() + START_S
    while not _port_open(port):
        assert proc.poll() is None, f"app.py exited early:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "app.py did not start serving"
        time.sleep(0.5)
    return proc


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _interrupt_and_wait(proc: subprocess.Popen, port: int) -> str:
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=EXIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"app.py was still running {EXIT_S} s after Ctrl-C")
    assert proc.returncode == 130, f"exit status {proc.returncode}:\n{output[-3000:]}"
    assert "terminate called" not in output and "Traceback" not in output, output[-3000:]
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not _port_open(port)
    return output


def test_ctrl_c_while_the_model_loads():
    port = free_port()
    proc = _start_app(port)  # the default model loads in the background while the page is already up
    output = _interrupt_and_wait(proc, port)
    assert "Stopping" in output


def test_ctrl_c_while_a_comparison_streams():
    from gradio_client import Client

    port = free_port()
    proc = _start_app(port)
    try:
        client = Client(f"http://127.0.0.1:{port}", verbose=False)
        job = client.submit(length=1024, max_new_tokens=300, api_name="/compare")
        deadline = time.monotonic() + 300
        while not (job.outputs() and "generating…" in job.outputs()[-1][0]):
            assert time.monotonic() < deadline and not job.done(), "the run never started streaming"
            time.sleep(0.5)
    except BaseException:
        proc.kill()
        raise
    _interrupt_and_wait(proc, port)


def test_ctrl_c_during_the_start_up_imports_ends_without_a_traceback():
    proc = _launch(free_port())
    time.sleep(1.0)  # torch, transformers and Gradio take seconds to import
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=EXIT_S)
    assert proc.returncode == 130 and "Traceback" not in output and "KeyboardInterrupt" not in output, output


def test_a_port_asked_for_that_is_taken_is_refused_by_name():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _launch(port, SWAA_PRELOAD="0")
        output, _ = proc.communicate(timeout=START_S)
    assert proc.returncode == 1, output
    assert f"Port {port} (GRADIO_SERVER_PORT) is not free" in output


def test_the_apps_files_are_deleted_when_it_stops(tmp_path):
    """README: uploads and downloads are deleted when the app stops. Reference: the folders' contents."""
    from gradio_client import Client, handle_file

    temp = tmp_path / "temp"
    temp.mkdir()
    port = free_port()
    proc = _start_app(port, SWAA_PRELOAD="0", GRADIO_TEMP_DIR=str(temp / "gradio"), TMPDIR=str(temp))
    try:
        note = tmp_path / "note.txt"
        note.write_text("kept only while the app runs", encoding="utf-8")
        client = Client(f"http://127.0.0.1:{port}", verbose=False)
        assert client.predict(handle_file(str(note)), api_name="/read_upload") == note.read_text(encoding="utf-8")
        assert [p for p in temp.rglob("*") if p.is_file()]  # the upload sits in Gradio's cache
    except BaseException:
        proc.kill()
        raise
    _interrupt_and_wait(proc, port)
    assert not list(temp.rglob("note.txt")) and not list(temp.glob("swaa-app-*"))
