"""`recipes save` (add_user_recipe) on the recipe file layouts load_user_recipes reads, `--processes` signal
forwarding (relaunch), and `eval --out` written while another run wrote the same file (a review of 2026-12-06 found
the faults whose tests are named "fault": each failed then).

References: load_user_recipes of the file before the save plus the one saved recipe (hand-built expectation),
subprocess.call's behaviour that relaunch replaced (exit code, any thread, the caller's signal dispositions kept),
and a file another run wrote. "guard" ones held."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from swaa_core.cli import main
from swaa_core.engine.config import SWAAConfig, SWAAConfigError
from swaa_core.eval.recipes import add_user_recipe, load_user_recipes

NEW = SWAAConfig(sliding_window_size=64, keep_first=4)


# ============================================================================ recipes save / add_user_recipe
def test_fault_add_user_recipe_drops_model_list_of_a_replaced_named_entry(tmp_path):
    """fault: a {name: entry} file whose entry is upstream-shaped ({"swaa_config": ..., "model_list": [...]}, which
    load_user_recipes reads): replacing it writes the bare config and the entry's model_list is gone. The
    docstring (and README) promise the other keys of each entry are kept, model_list included, as they are for
    the upstream list layout (test_outputs_and_stops)."""
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"b": {"swaa_config": {"sliding_window_size": 256}, "model_list": ["m1"]}}))
    assert add_user_recipe(path, "b", NEW) == SWAAConfig(sliding_window_size=256)
    assert load_user_recipes(path) == {"b": NEW}
    assert "m1" in path.read_text(encoding="utf-8"), "the replaced entry's model_list was dropped"


@pytest.mark.parametrize("name", ["swaa_config", "keep_first"])
def test_fault_add_user_recipe_name_that_changes_the_files_layout(tmp_path, name):
    """fault: {name: config} layout + a recipe named "swaa_config" (or a config field such as "keep_first"):
    data[name] = config makes the file read as one upstream entry (recipe "a" silently gone: load gives only
    "SWA 64 + 4 sinks") or as a bare config (the whole file unreadable). add_user_recipe says it raises "before
    writing anything" for a bad input: either refuse (file untouched) or write a file that loads as before + it."""
    path = tmp_path / "mine.json"
    original = json.dumps({"a": {"sliding_window_size": 128}})
    path.write_text(original, encoding="utf-8")
    try:
        add_user_recipe(path, name, NEW)
    except SWAAConfigError:
        assert path.read_text(encoding="utf-8") == original
        return
    assert load_user_recipes(path) == {"a": SWAAConfig(sliding_window_size=128), name: NEW}


LAYOUTS = {
    "bare object": {"sliding_window_size": 128},
    "bare list with names": [{"name": "a", "sliding_window_size": 128}, {"sliding_window_size": 256}],
    "name object": {"a": {"sliding_window_size": 128}, "b": {"swaa_config": {"sliding_window_size": 256}}},
    "upstream list, same config twice": [
        {"swaa_config": {"sliding_window_size": 128}, "model_list": ["m1"]},
        {"swaa_config": {"sliding_window_size": 128}, "model_list": ["m2"]},
    ],
    "single upstream entry": {"swaa_config": {"sliding_window_size": 128}, "model_list": ["m1"]},
    "empty list": [],
    "empty object": {},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_guard_add_user_recipe_round_trips_on_every_layout(tmp_path, layout):
    """guard: for each layout, adding a unicode name, then replacing each existing (generated) name, loads as
    the previous load with that one recipe set, in the same order; model_list entries of upstream lists stay."""
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(LAYOUTS[layout]), encoding="utf-8")
    before = load_user_recipes(path)
    for name in ["zé ✓ recipe", *list(before)]:
        want = {**before, name: NEW}
        add_user_recipe(path, name, NEW)
        after = load_user_recipes(path)
        assert after == want and list(after) == list(want)
        before = after
    if layout.startswith("upstream") or layout.startswith("single"):
        lists = [e.get("model_list") for e in json.loads(path.read_text(encoding="utf-8"))]
        assert ["m1"] in lists


# ============================================================================ --processes: relaunch's signals
@pytest.fixture
def fake_torchrun(monkeypatch):
    """relaunch with torchrun replaced by a short Python child (its code given per test)."""
    import os

    import swaa_core.runtime.distributed as dist

    def use(code: str):
        monkeypatch.setattr(dist, "launch_command", lambda n, argv: [sys.executable, "-c", code])
        monkeypatch.setattr(dist, "launch_env", lambda n: dict(os.environ))
        monkeypatch.setattr(dist, "launched_processes", lambda: 1)
        return SimpleNamespace(processes=2, argv=["eval"])

    return use


@pytest.fixture
def kept_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield saved
    for s, h in saved.items():
        signal.signal(s, h)


def test_guard_relaunch_returns_the_launchers_exit_code_and_restores_handlers(fake_torchrun, kept_handlers):
    from swaa_core.cli.common import relaunch

    args = fake_torchrun("import sys; sys.exit(3)")
    assert relaunch(args) == 3
    assert {s: signal.getsignal(s) for s in kept_handlers} == kept_handlers


def test_fault_relaunch_without_sighup_leaves_a_forwarding_sigterm_handler(fake_torchrun, kept_handlers, monkeypatch):
    """fault: on a platform without SIGHUP (Windows) stops = (SIGINT, SIGTERM, SIGTERM): the dict comprehension
    installs SIGTERM twice, so the "previous" handler kept for SIGTERM is relaunch's own lambda, and after torchrun
    ends SIGTERM stays bound to a forwarder to a dead process instead of the caller's handler."""
    from swaa_core.cli.common import relaunch

    monkeypatch.delattr(signal, "SIGHUP")
    args = fake_torchrun("import sys; sys.exit(3)")
    assert relaunch(args) == 3
    assert signal.getsignal(signal.SIGTERM) == kept_handlers[signal.SIGTERM]


def test_fault_relaunch_off_the_main_thread_raises_after_starting_torchrun(fake_torchrun, kept_handlers):
    """fault: subprocess.call (before 642eef9) ran from any thread; signal.signal raises "ValueError: signal only
    works in main thread of the main interpreter" there, after Popen: the command fails and the launcher it
    started runs on, in its own session, out of reach of Ctrl-C. torchrun's own agent registers its handlers only
    on the main thread (PContext.start). Expected: the exit code, as on the main thread."""
    from swaa_core.cli.common import relaunch

    args = fake_torchrun("import sys, time; time.sleep(0.5); sys.exit(3)")
    result: dict = {}

    def target():
        try:
            result["code"] = relaunch(args)
        except Exception as e:  # noqa: BLE001 - what the thread saw is the finding
            result["error"] = repr(e)

    t = threading.Thread(target=target)
    t.start()
    t.join(timeout=30)
    assert result == {"code": 3}


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX hangup")
def test_fault_relaunch_forwards_a_hangup_the_caller_ignores(fake_torchrun, kept_handlers, tmp_path):
    """fault: relaunch replaces a disposition the caller set to SIG_IGN with a forwarder. `nohup swaa sweep
    --processes 2 ... &`, then `kill -HUP <that pid>` (a supervisor's or logrotate's reload, aimed at the command
    alone): before 642eef9 the command ignored it and the run went on; now it is forwarded and torchrun's agent
    (which handles SIGHUP, torch.distributed.elastic) stops the workers. An ignored signal should stay ignored,
    as the nohup contract says. The child here stands in for torchrun: it sends the hangup to its parent only,
    and exits 7 if it is then signalled itself, 0 if not (its own SIGHUP handler, as torchrun's agent installs).
    """
    from swaa_core.cli.common import relaunch

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
    code = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGHUP, lambda *a: sys.exit(7))\n"
        "time.sleep(0.5)\n"
        "os.kill(os.getppid(), signal.SIGHUP)\n"
        "time.sleep(1.5)\n"
        "sys.exit(0)\n"
    )
    assert relaunch(fake_torchrun(code)) == 0, "the ignored hangup was forwarded to the launcher"


# ============================================================================ eval --out
def eval_argv(model: str, *extra: str) -> list[str]:
    return ["eval", "--model", model, "--task", "passkey", "--length", "250", "--samples", "1", "-r", "swa", "-w",
            "32", "-n", "2", "--no-logprob", "-q", *extra]  # fmt: skip


def test_fault_eval_out_written_by_another_run_meanwhile_is_replaced(tiny_folder, tmp_path, monkeypatch, capsys):
    """fault: the existing-file refusal is made when the arguments are read; the rows are written at the end with
    a plain overwrite (results.export). A second eval (or a sweep) to the same --out that finishes first, while
    this one runs, has its rows replaced without a word: the loss the refusal was added against. The write should
    create the file exclusively (or append / refuse then)."""
    import swaa_core.eval.runner as runner

    out = tmp_path / "runs.jsonl"
    other = {"model": "other run", "cell_id": "written-meanwhile"}
    real = runner.evaluate_shared

    def meanwhile(*a, **k):
        results = real(*a, **k)
        out.write_text(json.dumps(other) + "\n", encoding="utf-8")  # the other run finishes first
        return results

    monkeypatch.setattr(runner, "evaluate_shared", meanwhile)
    main(eval_argv(tiny_folder, "--out", str(out)))
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert other in rows, "the other run's rows were replaced"


def test_guard_eval_out_under_a_file_is_refused_before_the_model_loads(tiny_folder, tmp_path, monkeypatch, capsys):
    import swaa_core

    monkeypatch.setattr(swaa_core, "load_model", lambda *a, **k: pytest.fail("no model may load"))
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(eval_argv(tiny_folder, "--out", str(Path("notes.txt") / "runs.jsonl"))) == 1
    assert "is a file" in capsys.readouterr().err
