"""The `swaa` command's results files shared between commands, stops, output paths and saved recipe files, as a new
user meets them. A probe of 2026-12-06 found the faults the first tests describe (each failed then); the guards after
them held already.

Everything runs on the tiny Llama of tests/conftest.py (``tiny_folder``): prompts of 250 tokens, two-token answers,
no log-likelihood, a handful of cells."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swaa_core.cli import main

ROOT = Path(__file__).resolve().parents[3]


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def sweep_argv(model: str, out: Path, *extra: str) -> list[str]:
    return ["sweep", "--model", model, "--task", "passkey", "--lengths", "250", "--depths", "0.5", "--samples", "2",
            "-r", "swa", "-w", "32", "-n", "2", "--no-logprob", "--out", str(out), "--json", "-q", *extra]  # fmt: skip


def eval_argv(model: str, *extra: str) -> list[str]:
    return ["eval", "--model", model, "--task", "passkey", "--length", "250", "--samples", "1", "-r", "swa", "-w",
            "32", "-n", "2", "--no-logprob", "-q", *extra]  # fmt: skip


# ----------------------------------------------------------------------------------------------- faults


def test_eval_out_does_not_replace_a_sweeps_results_file(tiny_folder, tmp_path, capsys):
    """`swaa sweep --out runs.jsonl` then `swaa eval --out runs.jsonl`: eval replaces the whole file without a word,
    so the sweep's rows (its resumable results) are gone. distill refuses an existing --out for this reason; eval
    should too (or append), never drop the earlier rows."""
    out = tmp_path / "runs.jsonl"
    assert main(sweep_argv(tiny_folder, out)) == 0
    sweep_rows = json_lines(out.read_text(encoding="utf-8"))
    assert len(sweep_rows) == 4  # 2 configs x 2 seeds
    capsys.readouterr()
    main(eval_argv(tiny_folder, "--out", str(out)))
    kept = {r.get("cell_id") for r in json_lines(out.read_text(encoding="utf-8"))}
    assert {r["cell_id"] for r in sweep_rows} <= kept, "the sweep's results were replaced by eval --out"


def test_eval_out_does_not_replace_an_earlier_eval_csv(tiny_folder, tmp_path, capsys):
    """Two evals to one --out: the second replaces the first's rows without a word (hand count: 2 + 2 runs)."""
    out = tmp_path / "runs.csv"
    assert main(eval_argv(tiny_folder, "--out", str(out))) == 0
    first = out.read_text(encoding="utf-8").splitlines()
    assert len(first) == 1 + 2  # header + full attention + SWA
    capsys.readouterr()
    code = main(eval_argv(tiny_folder, "--seed", "7", "--out", str(out)))
    rows = out.read_text(encoding="utf-8").splitlines()
    err = capsys.readouterr().err
    assert (code == 1 and "already exists" in err and rows == first) or len(rows) == 1 + 4


def test_eval_out_under_a_file_is_an_error_message_not_a_traceback(tiny_folder, tmp_path, capsys, monkeypatch):
    """`--out notes.txt/runs.jsonl` (a file given where a folder is expected): eval loads the model, runs every
    sample, then dies with FileExistsError from pathlib (a traceback, every result lost). It should be refused by
    name before the model loads, as `--out some_folder` is."""
    import swaa_core

    (tmp_path / "notes.txt").write_text("my notes\n", encoding="utf-8")
    monkeypatch.setattr(swaa_core, "load_model", lambda *a, **k: pytest.fail("no model may load for a bad --out"))
    try:
        code = main(eval_argv(tiny_folder, "--out", str(tmp_path / "notes.txt" / "runs.jsonl")))
    except OSError as e:  # the fault: the exception escapes main
        pytest.fail(f"main raised {type(e).__name__}: {e}")
    err = capsys.readouterr().err
    assert code == 1 and "swaa: error:" in err and "notes.txt" in err
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "my notes\n"


@pytest.mark.parametrize("which", ["out", "csv"])
def test_sweep_output_under_a_file_is_an_error_message_not_a_traceback(which, tiny_folder, tmp_path, capsys):
    """Same for sweep: `--out notes.txt/s.jsonl` or `--csv notes.txt/t.csv` ends in FileExistsError (for --csv after
    every cell has run)."""
    (tmp_path / "notes.txt").write_text("my notes\n", encoding="utf-8")
    bad = tmp_path / "notes.txt" / ("s.jsonl" if which == "out" else "t.csv")
    if which == "out":
        argv = sweep_argv(tiny_folder, bad)
    else:
        argv = sweep_argv(tiny_folder, tmp_path / "s.jsonl", "--csv", str(bad))
    try:
        code = main(argv)
    except OSError as e:
        pytest.fail(f"main raised {type(e).__name__}: {e}")
    err = capsys.readouterr().err
    assert code == 1 and "swaa: error:" in err and "notes.txt" in err


def test_a_sweep_of_two_recipes_that_resolve_alike_names_them_instead_of_dropping_one(tiny_folder, tmp_path, capsys):
    """`-r swa -r swa-sinks --keep-first 0`: both recipes resolve to the same config (W=32, no sinks). A cell is its
    config, so the sweep once ran every cell twice and its summary (and --csv) kept one label: 'SWA only (W=32)'
    vanished from the table asked for. It now names both before anything runs, and writes nothing."""
    out = tmp_path / "dup.jsonl"
    assert main(sweep_argv(tiny_folder, out, "-r", "swa-sinks", "--keep-first", "0")) == 1
    err = capsys.readouterr().err
    assert "swaa: error:" in err and "same config" in err and "SWA only" in err
    assert not out.exists() or not out.read_text(encoding="utf-8").strip()


def test_recipes_save_keeps_the_model_list_of_an_upstream_settings_file(tmp_path, capsys):
    """`swaa recipes save mine --file settings.json` on an upstream settings file: every existing entry's
    model_list (which models the config is for: the user's data) is rewritten as []."""
    path = tmp_path / "settings.json"
    entries = [{"swaa_config": {"sliding_window_size": 64}, "model_list": ["Qwen/Qwen3-4B", "my/model"]}]
    path.write_text(json.dumps(entries), encoding="utf-8")
    assert (
        main(["recipes", "save", "mine", "--from", "swa", "--window", "32", "--layers", "4", "--file", str(path)]) == 0
    )
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert len(saved) == 2
    assert saved[0]["swaa_config"]["sliding_window_size"] == 64
    assert saved[0]["model_list"] == ["Qwen/Qwen3-4B", "my/model"]


def no_model(monkeypatch):
    import swaa_core

    monkeypatch.setattr(swaa_core, "load_model", lambda *a, **k: pytest.fail("no model may load for this input"))


def test_a_task_arg_given_twice_is_refused_not_half_dropped(tiny_folder, capsys, monkeypatch):
    """`--task-arg digits=4 --task-arg digits=5`: the run silently uses digits=5 (reference '60494') and the 4 the
    user typed is dropped without a word. One key given twice should be refused by name, before the model loads."""
    no_model(monkeypatch)
    code = main(eval_argv(tiny_folder, "--task-arg", "digits=4", "--task-arg", "digits=5", "--json"))
    err = capsys.readouterr().err
    assert code == 1 and "digits" in err and "--task-arg" in err


@pytest.mark.parametrize("command", ["distill", "advise"])
def test_output_under_a_file_is_refused_before_the_model_loads(command, tiny_folder, tmp_path, capsys, monkeypatch):
    """`distill --out notes.txt/d.jsonl` (seen: FileExistsError traceback after every answer was generated) and
    `advise --out notes.txt/a.json` (after the whole measurement): a file where a folder is expected should be
    refused by name up front, as an --out that is a folder or has the wrong suffix is."""
    (tmp_path / "notes.txt").write_text("my notes\n", encoding="utf-8")
    no_model(monkeypatch)
    if command == "distill":
        argv = ["distill", "--model", tiny_folder, "--task", "passkey", "--length", "250", "--samples", "2",
                "--out", str(tmp_path / "notes.txt" / "d.jsonl"), "-q"]  # fmt: skip
    else:
        argv = ["advise", "--model", tiny_folder, "--length", "250", "--window", "32", "--full-layers", "1",
                "--samples", "1", "--held-out", "1", "--out", str(tmp_path / "notes.txt" / "a.json"), "-q"]  # fmt: skip
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1 and "swaa: error:" in err and "notes.txt" in err


def test_advise_out_does_not_replace_an_earlier_recommendation(tiny_folder, tmp_path, capsys, monkeypatch):
    """`swaa advise --out advice.json` over an earlier advice.json (seen: a W=999 recommendation replaced by the
    new one without a word). Like distill's --out, a file written whole should not replace an earlier run's result:
    refused up front."""
    path = tmp_path / "advice.json"
    path.write_text('{"swaa_config": {"sliding_window_size": 999}}\n', encoding="utf-8")
    no_model(monkeypatch)
    code = main(["advise", "--model", tiny_folder, "--length", "250", "--window", "32", "--full-layers", "1",
                 "--samples", "1", "--held-out", "1", "--out", str(path), "-q"])  # fmt: skip
    assert code == 1 and "already exists" in capsys.readouterr().err
    assert json.loads(path.read_text(encoding="utf-8"))["swaa_config"]["sliding_window_size"] == 999


def _swaa_children(marker: str) -> list[int]:
    """PIDs of processes whose command line holds ``marker`` (this test's own output path)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and "swaa_core" in cmd and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_multi_process_sweep_stops_its_workers(tiny_folder, tmp_path, stop):
    """`swaa sweep --processes 2` stopped with SIGTERM (a scheduler's stop, `kill PID`): the command exits, but
    torchrun and both workers go on running and appending to OUT.part0/1 (seen: 150 rows, then 430 rows ten
    seconds after the command ended), and a rerun is refused because they hold OUT.lock. Stopping the command
    should stop its workers."""
    out = tmp_path / "stop-probe.jsonl"
    argv = sweep_argv(tiny_folder, out, "--processes", "2")
    argv[argv.index("--samples") + 1] = "400"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "swaa_core", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(tmp_path.glob("stop-probe.jsonl.part*")):
            time.sleep(0.2)
        assert any(tmp_path.glob("stop-probe.jsonl.part*")), "the workers never started writing"
        proc.send_signal(stop)
        proc.wait(timeout=30)
        time.sleep(5)
        left = _swaa_children(str(out))
        assert not left, f"{len(left)} process(es) of the stopped sweep still run"
    finally:
        for pid in _swaa_children(str(out)):  # only the processes this test started (its own output path)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


# ----------------------------------------------------------------------------------------------- guards


def test_guard_a_half_written_last_line_is_skipped_and_its_cell_run_again(tiny_folder, tmp_path, capsys):
    """A crash mid-write leaves half a line: the rerun ends it with a newline, skips it and runs that cell again;
    every cell is then in the file exactly once (hand count: 2 configs x 2 seeds)."""
    out = tmp_path / "s.jsonl"
    assert main(sweep_argv(tiny_folder, out)) == 0
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:60], encoding="utf-8")
    assert main(sweep_argv(tiny_folder, out)) == 0
    rows = []
    for line in out.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    assert sorted(r["cell_id"] for r in rows) == sorted({r["cell_id"] for r in rows}) and len(rows) == 4


def test_guard_sweeps_of_other_settings_share_a_file_without_mixing(tiny_folder, tmp_path, capsys):
    """Same --out, another window / seed / timing: each summary counts only its own cells, and full attention
    (which no window changes) is reused, not run again (hand count: 4 + 2 + 2 rows)."""
    out = tmp_path / "s.jsonl"
    assert main(sweep_argv(tiny_folder, out)) == 0
    capsys.readouterr()
    assert main(sweep_argv(tiny_folder, out, "-w", "48")) == 0
    summary = json_lines(capsys.readouterr().out)
    assert {r["label"] for r in summary} == {"Full attention", "SWA only (W=48)"}
    assert all(r["runs"] == 2 for r in summary)
    assert main(sweep_argv(tiny_folder, out, "--timing-tokens", "0", "--samples", "1")) == 0
    summary = json_lines(capsys.readouterr().out)
    assert all(r["runs"] == 1 for r in summary)
    assert len(json_lines(out.read_text(encoding="utf-8"))) == 4 + 2 + 2


def test_guard_unicode_spaces_and_glob_characters_in_output_paths(tiny_folder, tmp_path, capsys):
    folder = tmp_path / "ü dir [x]"
    out, csv = folder / "é r*[1].jsonl", folder / "t ä.csv"
    assert main(sweep_argv(tiny_folder, out, "--csv", str(csv))) == 0
    assert main(sweep_argv(tiny_folder, out)) == 0
    assert len(json_lines(out.read_text(encoding="utf-8"))) == 4
    assert len(csv.read_text(encoding="utf-8").splitlines()) == 1 + 4


def test_guard_recipes_save_refuses_a_broken_file_without_touching_it(tmp_path, capsys):
    path = tmp_path / "mine.json"
    path.write_text("{bad", encoding="utf-8")
    assert main(["recipes", "save", "x", "--from", "swa", "--layers", "4", "--file", str(path)]) == 1
    assert path.read_text(encoding="utf-8") == "{bad"
    assert "not valid JSON" in capsys.readouterr().err


def test_guard_bad_task_arg_values_are_refused_before_the_model_loads(tiny_folder, capsys, monkeypatch):
    no_model(monkeypatch)
    for bad in ("digits=4.5", "digits=0", "digits=-1", "digits=NaN", "digits"):
        assert main(eval_argv(tiny_folder, "--task-arg", bad)) == 1
        assert "--task-arg" in capsys.readouterr().err


def test_guard_a_second_sweep_on_one_file_is_refused_by_its_lock(tiny_folder, tmp_path, capsys):
    from swaa_core.eval.sweep import output_lock

    out = tmp_path / "s.jsonl"
    with output_lock(out):
        assert main(sweep_argv(tiny_folder, out)) == 1
    assert "Another sweep is writing" in capsys.readouterr().err and not out.exists()
