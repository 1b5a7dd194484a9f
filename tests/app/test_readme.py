"""The README's Python snippets run as written, from a folder outside the checkout (as a reader would run them after
the README's install commands; tests/run.sh installs the same)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.embedded

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _snippet(after_heading: str) -> str:
    section = README.split(after_heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _run(code: str, cwd) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed package, not the checkout
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_library_snippet_answers(tmp_path):
    out = _run(_snippet("## Using `swaa_core` from Python"), tmp_path)
    assert "Paris" in out


def test_the_api_snippet_prints_one_line_per_column(tmp_path, app_url):
    code = _snippet("## API")
    assert 'Client("http://127.0.0.1:7860/"' in code
    out = _run(code.replace("http://127.0.0.1:7860/", app_url + "/"), tmp_path)
    lines = out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "Full attention", "SWA only (W=256)", "Recommended",
    ]  # fmt: skip
    assert all(re.search(r"correct=(True|False) \d+\.\d s$", line) for line in lines), lines


def test_app_py_says_how_it_is_configured_and_refuses_options_it_does_not_have():
    """`python app.py --help` answers before Gradio loads (settings are environment variables); an option it does not
    have stops it with a usage error instead of starting the server without it."""
    shown = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "GRADIO_SERVER_PORT" in shown.stdout
    refused = subprocess.run([sys.executable, "app.py", "--port", "1"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    assert refused.returncode == 2 and "unrecognized arguments: --port 1" in refused.stderr
