"""The `swaa` command: help that teaches, JSON runs on a tiny model saved to a folder, eval/sweep/recipes, and a
smoke run on the embedded model."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from swaa_core.cli import main
from swaa_core.engine.config import load_upstream_settings


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_the_command_and_the_package_import_without_the_model_stack():
    """`swaa --help` and argument errors answer at once: building the parser imports neither torch nor transformers
    (they load with the command that needs them), and neither does `import swaa_core`."""
    code = (
        "import sys, swaa_core, swaa_core.cli; swaa_core.cli.build_parser(); "
        "print(sorted({'torch', 'transformers', 'peft'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("command", [[], ["run"], ["eval"], ["sweep"], ["advise"], ["recipes"], ["recipes", "show"]])
def test_help_teaches_with_examples(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: swaa" in text
    if command and command != ["recipes", "show"]:
        assert "examples:" in text and "swaa " + command[0] in text


def test_run_prints_one_json_object_per_run(tiny_folder, capsys):
    code = main(
        ["run", "--model", tiny_folder, "--prompt", "The grass is green. " * 30 + "What colour is the grass?",
         "--recipe", "swa", "--recipe", "recommended", "--max-new-tokens", "4", "--window", "16", "--json"]
    )  # fmt: skip
    out = capsys.readouterr().out
    runs = json_lines(out)
    assert code == 0
    assert [r["label"] for r in runs] == [
        "Full attention",
        "SWA only (W=16)",
        "Recommended: 1/2 FA layers + FA decode + sinks (W=16, 10 sinks)",
    ]
    assert runs[0]["config"] is None
    assert runs[1]["config"] == {
        "sliding_window_size": 16,
        "keep_first": 0,
        "force_fa_decode": False,
        "non_sliding_layers": [],
    }
    assert runs[2]["config"]["non_sliding_layers"] == [1, 3] and runs[2]["config"]["force_fa_decode"] is True
    for r in runs:
        assert r["error"] is None and r["generated_tokens"] == 4 and r["prompt_tokens"] > 150
        assert r["ttft_s"] > 0 and r["kv_cache_bytes"] > 0 and r["backend"]
    assert runs[1]["kv_cache_bytes"] < runs[0]["kv_cache_bytes"]


def test_decode_path_is_forced_from_the_command_line_and_reported(tiny_folder, capsys, monkeypatch):
    """--decode-path fixed / eager and --static-cache (fixed) only change how decode steps run (fixed buffers; a CUDA
    graph on a GPU), not what they give; every run (full attention included) reports the path and why, in JSON and in
    the table."""
    monkeypatch.setenv("COLUMNS", "400")  # rich folds cells to the terminal's width
    args = ["run", "--model", tiny_folder, "--prompt", "The grass is green. " * 30 + "What colour is the grass?",
            "--recipe", "swa", "--max-new-tokens", "5", "--window", "16"]  # fmt: skip
    fixed = ("fixed buffers", "fixed-buffer: asked for (cpu, batch 1, greedy)")
    expected = {
        "--decode-path fixed": fixed,
        "--static-cache": fixed,
        "--decode-path eager": ("dynamic cache", "eager: asked for"),
    }
    runs = {}
    for flag, (path, reason) in expected.items():
        assert main(args + flag.split() + ["--json"]) == 0
        runs[flag] = json_lines(capsys.readouterr().out)
        assert [(r["decode_path"], r["decode_reason"]) for r in runs[flag]] == [(path, reason)] * 2
        assert all(("static cache" in r["backend"]) == (path == "fixed buffers") for r in runs[flag])
        assert main(args + flag.split()) == 0
        table = capsys.readouterr().out
        assert f"decode path: {path} ({reason})" in " ".join(table.split()) and "┃ path " in table
    assert len({tuple(r["output_text"] for r in rows) for rows in runs.values()}) == 1
    with pytest.raises(SystemExit):
        main(args + ["--decode-path", "graph"])
    assert "invalid choice: 'graph' (choose from 'auto', 'fixed', 'eager')" in capsys.readouterr().err


@pytest.mark.parametrize(("timing", "expected"), [("20", "to token 20"), ("4", "too few tokens (3)")])
def test_run_table_times_every_run_over_the_same_tokens(tiny_folder, capsys, monkeypatch, timing, expected):
    monkeypatch.setenv("COLUMNS", "400")  # rich folds cells to the terminal's width
    code = main(
        ["run", "--model", tiny_folder, "--prompt", "The grass is green. " * 30, "--recipe", "swa", "-n", "3",
         "--window", "16", "--timing-tokens", timing]
    )  # fmt: skip
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0 and expected in out
    assert f"every run timed over its first {timing} generated tokens" in out
    assert ("tok/s" in out) == (timing == "20")


def test_python_dash_m_entry_point_runs(tiny_folder):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "swaa_core",
            "run",
            "Hello there",
            "--model",
            tiny_folder,
            "-r",
            "swa",
            "-n",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(json_lines(result.stdout)) == 2


def test_run_explains_bad_input(tiny_folder, capsys):
    assert main(["run", "--model", tiny_folder, "--prompt", "Hi", "--recipe", "swa-everything"]) == 1
    assert "Unknown recipe 'swa-everything'" in capsys.readouterr().err
    assert main(["run", "--model", tiny_folder]) == 1
    assert "Give exactly one prompt" in capsys.readouterr().err


def test_eval_scores_a_task_under_recipes(tiny_folder, tmp_path, capsys):
    out = tmp_path / "runs.jsonl"
    code = main(
        ["eval", "--model", tiny_folder, "--task", "needle", "--length", "300", "--depth", "0.2", "--depth", "0.8",
         "--samples", "2", "-r", "swa-fa-decode", "-w", "32", "-n", "3", "--json", "--out", str(out), "-q"]
    )  # fmt: skip
    runs = json_lines(capsys.readouterr().out)
    assert code == 0 and len(runs) == 2 * 2 * 2
    assert all(r["reference"] and r["answer_logprob"] < 0 and r["correct"] in (True, False) for r in runs)
    assert {(r["meta"]["depth"], r["meta"]["seed"]) for r in runs} == {(0.2, 0), (0.8, 0), (0.2, 1), (0.8, 1)}
    assert len(json_lines(out.read_text())) == 8


def test_sweep_is_resumable_from_the_command_line(tiny_folder, tmp_path, capsys):
    out, csv = tmp_path / "sweep.jsonl", tmp_path / "sweep.csv"
    argv = ["sweep", "--model", tiny_folder, "--task", "passkey", "--lengths", "250", "--depths", "0.5", "--samples",
            "2", "-r", "swa", "-w", "32", "-n", "2", "--no-logprob", "--out", str(out), "--csv", str(csv), "--json", "-q"]  # fmt: skip
    assert main(argv) == 0
    summary = json_lines(capsys.readouterr().out)
    assert {row["label"] for row in summary} == {"Full attention", "SWA only (W=32)"}
    assert all(row["runs"] == 2 for row in summary)
    first = out.read_text()
    assert len(json_lines(first)) == 4 and csv.exists()
    assert main(argv) == 0
    assert out.read_text() == first  # every cell was already there


def test_recipes_list_show_and_save(tmp_path, capsys):
    assert main(["recipes", "list", "--json"]) == 0
    names = [r["name"] for r in json_lines(capsys.readouterr().out)]
    assert names[0] == "full" and "recommended" in names
    assert main(["recipes", "show", "swa-half-fa", "--layers", "6", "--window", "64", "--json"]) == 0
    shown = json_lines(capsys.readouterr().out)[0]
    assert shown == {
        "sliding_window_size": 64,
        "keep_first": 0,
        "force_fa_decode": False,
        "non_sliding_layers": [1, 3, 5],
    }
    assert main(["recipes", "show", "recommended", "--json"]) == 0  # the embedded model's 30 layers, paper window
    shown = json_lines(capsys.readouterr().out)[0]
    assert shown["sliding_window_size"] == 2048 and shown["non_sliding_layers"] == list(range(1, 30, 2))
    file = tmp_path / "mine.json"
    assert (
        main(
            [
                "recipes",
                "save",
                "narrow",
                "--from",
                "swa-fa-decode",
                "--window",
                "96",
                "--layers",
                "8",
                "--file",
                str(file),
            ]
        )
        == 0
    )
    ((cfg, _),) = load_upstream_settings(file)
    assert (cfg.sliding_window_size, cfg.force_fa_decode) == (96, True)
    assert main(["recipes", "show", "narrow", "--recipes-file", str(file), "--layers", "8", "--json"]) == 0
    assert json_lines(capsys.readouterr().out)[0]["sliding_window_size"] == 96


@pytest.mark.embedded
def test_embedded_model_smoke(capsys):
    code = main(
        ["run", "--prompt", "What is the capital of France?", "--recipe", "swa-fa-decode", "--window", "16",
         "--max-new-tokens", "12", "--json"]
    )  # fmt: skip
    runs = json_lines(capsys.readouterr().out)
    assert code == 0 and [r["label"] for r in runs] == ["Full attention", "SWA + FA decode (W=16)"]
    assert "Paris" in runs[0]["output_text"]
    assert runs[0]["model"] == "smollm2-135m" and runs[1]["backend"] == "blocked"
    assert runs[1]["prompt_tokens"] > 16  # the window really slides over this prompt


# ---------------------------------------------------------------------- bad input, table-driven

PARSE_ERRORS = [  # (argv, the specific message argparse prints); every one exits with code 2 before loading a model
    (["run", "Hi", "-n", "0"], "argument --max-new-tokens/-n: must be a whole number from 1 to 16,777,216, got 0"),
    (["run", "Hi", "-n", "-3"], "argument --max-new-tokens/-n: must be a whole number from 1 to 16,777,216, got -3"),
    (["run", "Hi", "-n", "99999999999"], "--max-new-tokens/-n: must be a whole number from 1 to 16,777,216"),
    (["run", "Hi", "-w", "0"], "argument --window/-w: must be a whole number from 1 to 16,777,216, got 0"),
    (["run", "Hi", "-w", "abc"], "argument --window/-w: expected a whole number, got 'abc'"),
    (["run", "Hi", "--keep-first", "-1"], "argument --keep-first: must be a whole number from 0 to 16,777,216, got -1"),
    (
        ["run", "Hi", "--config", '{"sliding_window_size": 0}'],
        "argument --config: sliding_window_size must be at least",
    ),
    (["run", "Hi", "--config", '{"window": 64}'], "argument --config: Unknown SWAA config field(s) ['window']"),
    (["eval", "--samples", "0"], "argument --samples/-s: must be a whole number from 1 to 100,000, got 0"),
    (["eval", "--length", "-5"], "argument --length/-l: must be a whole number from 1 to 16,777,216, got -5"),
    (["eval", "--depth", "1.5"], "argument --depth/-d: must be a number >= 0 and <= 1, got 1.5"),
    (["eval", "--depth", "nan"], "argument --depth/-d: must be a number >= 0 and <= 1, got nan"),
    (["eval", "--seed", "-1"], "argument --seed: must be a whole number from 0 to 4,294,967,295, got -1"),
    (["eval", "--limit", "0"], "argument --limit: must be a whole number >= 1, got 0"),
    (["sweep", "--out", "x.jsonl", "--lengths", "256", "0"], "argument --lengths/-l: must be a whole number from 1"),
    (["sweep", "--out", "x.jsonl", "--depths", "-0.1"], "argument --depths/-d: must be a number >= 0 and <= 1"),
    (["recipes", "show", "swa", "--layers", "0"], "argument --layers: must be a whole number from 1 to 10,000, got 0"),
    (["recipes", "show", "swa", "--context", "1e9"], "argument --context: expected a whole number, got '1e9'"),
    (["finetune", "--out", "a", "--lr", "0"], "argument --lr: must be a number > 0 and <= 1, got 0"),
    (["finetune", "--out", "a", "--epochs", "inf"], "argument --epochs: must be a number > 0 and <= 1000, got inf"),
    (["finetune", "--out", "a", "--dropout", "1"], "argument --dropout: must be a number >= 0 and < 1, got 1"),
    (["finetune", "--out", "a", "--rank", "0"], "argument --rank: must be a whole number from 1 to 65,536, got 0"),
    (["finetune", "--out", "a", "--batch-size", "-2"], "argument --batch-size: must be a whole number from 1"),
    (["finetune", "--out", "a", "--eval-samples", "-1"], "argument --eval-samples: must be a whole number from 0"),
    (["distill", "--out", "a", "--samples", "0"], "argument --samples: must be a whole number from 1 to 100,000"),
    (["distill", "--out", "a", "--task", "neddle"], "argument --task: invalid choice: 'neddle'"),
    (["finetune", "--out", "a", "--task", "neddle"], "argument --task: invalid choice: 'neddle'"),
]


@pytest.mark.parametrize(("argv", "message"), PARSE_ERRORS, ids=[" ".join(a) for a, _ in PARSE_ERRORS])
def test_bad_numbers_and_configs_stop_at_parse_time_with_a_specific_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert f"swaa {argv[0]}" in err and message in err
    assert "Traceback" not in err


def test_every_numeric_option_of_every_subcommand_has_a_range():
    """Walks the real parser (plug-in subcommands included): each int/float option rejects a value below its
    range and, where it has one, above it, naming the option; a new option without a range fails here."""
    from swaa_core.cli import build_parser
    from swaa_core.cli.bounds import NUMERIC_OPTIONS, Bound, numeric_actions

    seen = 0
    for prog, action in numeric_actions(build_parser()):
        assert isinstance(action.type, Bound), f"{prog} {action.option_strings}: add {action.dest!r} to NUMERIC_OPTIONS"
        bound = NUMERIC_OPTIONS[action.dest]
        bad = [bound.low - 1, "nan"] + ([bound.high * 10 + 1] if bound.high is not None else [])
        for value in bad:
            with pytest.raises(argparse.ArgumentTypeError, match=r"must be|expected"):
                action.type(str(value))
        assert action.type(str(bound.low if not bound.open_low else bound.low + 1e-3)) >= bound.low
        seen += 1
    assert seen >= 25  # run/eval/sweep/recipes/distill/finetune together


def bad_files(tmp_path):
    files = {
        "elf.txt": b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)),
        "latin1.txt": "café au lait".encode("latin-1"),
        "empty.txt": b"   \n",
        "big.txt": None,  # sparse, 9 MiB
        "folder": None,
    }
    for name, data in files.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    with open(tmp_path / "big.txt", "wb") as f:
        f.truncate(9 << 20)
    (tmp_path / "folder").mkdir()
    (tmp_path / "settings-list.json").write_text('[{"swaa_config": {"sliding_window_size": 8}}]', encoding="utf-8")
    return tmp_path


FILE_ERRORS = [  # (argv with {d} for the folder of bad files, message); exit code 1, nothing loaded or run
    (["run", "--prompt-file", "{d}/elf.txt"], "Prompt file {d}/elf.txt is not a text file: it holds NUL bytes (the "
     "first at byte 7); it looks like an executable"),
    (["run", "--prompt-file", "{d}/latin1.txt"], "Prompt file {d}/latin1.txt is not valid UTF-8 text: byte 0xe9 at "
     "offset 3 cannot be decoded. Save the file as UTF-8"),
    (["run", "--prompt-file", "{d}/empty.txt"], "Prompt file {d}/empty.txt is empty."),
    (["run", "--prompt-file", "{d}/big.txt"], "Prompt file {d}/big.txt is 9.0 MiB; the limit is 8.0 MiB"),
    (["run", "--prompt-file", "{d}/folder"], "Prompt file {d}/folder is a folder; give a text file."),
    (["run", "--prompt-file", "{d}/missing.txt"], "Prompt file not found: {d}/missing.txt"),
    (["run", "Hi", "--config", "{d}/missing.json"], "Config file not found: {d}/missing.json"),
    (["run", "Hi", "--config", "{d}/elf.txt"], "Config file {d}/elf.txt is not a text file"),
    (["run", "Hi", "--config", "{d}/settings-list.json"], "Config file {d}/settings-list.json holds a list of configs "
     "(an upstream settings file); run them all with --recipes-file {d}/settings-list.json"),
    (["run", "Hi", "--prompt", "Hi again"], "Give exactly one prompt"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), FILE_ERRORS, ids=[" ".join(a[1:]) for a, _ in FILE_ERRORS])
def test_unusable_files_are_refused_naming_the_file_and_why(argv, message, tmp_path, capsys, monkeypatch):
    import swaa_core

    monkeypatch.setattr(swaa_core, "load_model", lambda *a, **k: pytest.fail("no model may load for bad input"))
    d = str(bad_files(tmp_path))
    assert main([a.format(d=d) for a in argv]) == 1
    err = capsys.readouterr().err
    assert f"swaa: error: {message.format(d=d)}" in err
    assert "Traceback" not in err and "UnicodeDecodeError" not in err


def test_doc_qa_document_is_read_strictly(tiny_folder, tmp_path, capsys):
    d = bad_files(tmp_path)
    argv = ["eval", "--model", tiny_folder, "--task", "doc_qa", "--document", str(d / "latin1.txt"), "--question", "Q?"]
    assert main(argv) == 1
    assert f"swaa: error: Document {d / 'latin1.txt'} is not valid UTF-8 text" in capsys.readouterr().err


def test_task_longer_than_the_model_context_is_refused_once(tiny_folder, capsys):
    assert main(["eval", "--model", tiny_folder, "--length", "5000", "-q"]) == 1  # the tiny model reads 4096
    err = capsys.readouterr().err
    assert "--length 5000 plus --max-new-tokens 16 is more than" in err and "its context is 4096 tokens" in err


def test_an_error_of_the_prompt_is_printed_once_not_once_per_config(tiny_folder, capsys):
    code = main(["run", "--model", tiny_folder, "Hello", "-n", "4095", "-r", "swa", "-r", "swa-fa-decode", "-w", "8"])
    out, err = capsys.readouterr()
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("swaa: error")]
    assert len(errors) == 1 and "(every run)" in errors[0] and "the model's context is 4096 tokens" in errors[0]
    assert "Full attention" not in out  # no table of failed rows


def test_bad_config_in_a_recipes_file_names_the_recipe(tiny_folder, tmp_path, capsys):
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps([{"swaa_config": {"sliding_window_size": 8, "non_sliding_layers": [1, 9]}}]))
    assert main(["run", "--model", tiny_folder, "Hi", "--recipes-file", str(settings)]) == 1
    err = capsys.readouterr().err
    assert "Recipe 'SWA 8 + FA layers 1,9': non_sliding_layers names layer(s) [9], but this model has 4 layers" in err


# ---------------------------------------------------------------------- upstream settings, --config, output


def test_recipes_file_alone_runs_every_config_of_an_upstream_settings_file(tiny_folder, tmp_path, capsys):
    # Upstream format (docs/paper.md): a list of {"swaa_config": ..., "model_list": [...]}, full attention first.
    configs = [
        {"sliding_window_size": None, "keep_first": 0, "force_fa_decode": False, "non_sliding_layers": []},
        {"sliding_window_size": 8, "keep_first": 0, "force_fa_decode": True, "non_sliding_layers": []},
        {"sliding_window_size": 8, "keep_first": 2, "force_fa_decode": False, "non_sliding_layers": [0, 1, 2]},
        {"sliding_window_size": 8, "keep_first": 2, "force_fa_decode": False, "non_sliding_layers": [0, 1, 2, 3]},
        {"sliding_window_size": 8, "keep_first": 0, "force_fa_decode": [1, 3], "non_sliding_layers": [1, 3]},
    ]
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps([{"swaa_config": c, "model_list": ["Qwen3-4B"]} for c in configs]))
    argv = ["run", "--model", tiny_folder, "--recipes-file", str(settings), "-n", "2", "--json", "Some text " * 8]
    assert main(argv) == 0
    runs = json_lines(capsys.readouterr().out)
    assert [r["config"] for r in runs] == [None, *configs[1:]]  # each config once, in file order
    labels = [r["label"] for r in runs]
    assert len(set(labels)) == len(labels) == 5
    assert labels[2] == "SWA 8 + 2 sinks + FA layers 0,1,2" and labels[3] == "SWA 8 + 2 sinks + FA layers 0,1,...,3"


def test_config_takes_the_apps_export_inline_or_as_a_file(tiny_folder, tmp_path, capsys):
    fields = {"sliding_window_size": 8, "keep_first": 1, "force_fa_decode": True, "non_sliding_layers": [1]}
    path = tmp_path / "swaa_config.json"
    path.write_text(json.dumps({"swaa_config": fields}, indent=2), encoding="utf-8")  # as the app exports it
    other = {**fields, "non_sliding_layers": [0, 2]}
    argv = ["run", "--model", tiny_folder, "Hi there", "-n", "2", "--json", "--config", str(path), "-r", "swa",
            "-w", "8", "--config", json.dumps(other), "--config", json.dumps(fields)]  # fmt: skip
    assert main(argv) == 0
    runs = json_lines(capsys.readouterr().out)
    assert [r["config"] for r in runs[1:]] == [fields, {**fields, "keep_first": 0, "force_fa_decode": False,
                                                        "non_sliding_layers": []}, other]  # fmt: skip
    assert [r["label"] for r in runs[1:]] == [
        "SWA 8 + 1 sinks + FA layers 1 + FA decode",
        "SWA only (W=8)",
        "SWA 8 + 1 sinks + FA layers 0,2 + FA decode",
    ]  # the inline copy of the file's config is the same run: not repeated


def test_table_title_counts_the_prompt_tokens_the_json_reports(tiny_folder, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    argv = ["run", "--model", tiny_folder, "What colour is the grass?", "-n", "2", "-r", "swa", "-w", "8"]
    assert main([*argv, "--json"]) == 0
    read = {r["prompt_tokens"] for r in json_lines(capsys.readouterr().out)}
    assert main(argv) == 0
    table = capsys.readouterr().out
    (count,) = read
    assert f": {count} prompt tokens (chat template included)" in table
    # Piped (not a terminal): wide enough that no cell is folded; every row is whole on one line.
    rows = [line for line in table.splitlines() if "tok/s" in line]
    assert len(rows) == 2 and rows[0].lstrip("│ ").startswith("Full attention") and "SWA only (W=8)" in rows[1]
    assert max(len(line) for line in table.splitlines()) <= 200


def test_non_ascii_text_round_trips_through_files_json_and_tables(tiny_folder, tmp_path, capsys, monkeypatch):
    text = "Tokyo 東京 🗼 is big. مرحبا بالعالم. What city? "
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(text, encoding="utf-8")
    for encoding in ("utf-8-sig", "utf-16", "utf-32"):  # a byte-order mark names the encoding
        marked = tmp_path / f"prompt-{encoding}.txt"
        marked.write_text(text, encoding=encoding)
        from swaa_core.runtime.textfile import read_text_file

        assert read_text_file(marked) == text
    recipes = tmp_path / "mine.json"
    recipes.write_text(json.dumps({"窗口 🪟 نافذة": {"sliding_window_size": 8}}, ensure_ascii=False), encoding="utf-8")
    common = ["run", "--model", tiny_folder, "-n", "2", "--recipes-file", str(recipes), "--answer", "東京 🗼"]
    assert main([*common, "--prompt-file", str(prompt), "--json"]) == 0
    from_file = json_lines(capsys.readouterr().out)
    assert main([*common, "--prompt", text, "--json"]) == 0
    from_arg = json_lines(capsys.readouterr().out)
    assert [r["prompt_tokens"] for r in from_file] == [r["prompt_tokens"] for r in from_arg]
    assert [r["label"] for r in from_file] == ["Full attention", "窗口 🪟 نافذة"]
    assert all(r["reference"] == "東京 🗼" for r in from_file)
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main([*common, "--prompt-file", str(prompt)]) == 0
    assert "窗口 🪟 نافذة" in capsys.readouterr().out


def test_output_on_a_non_utf8_stdout_stays_lossless_json(tmp_path):
    recipes = tmp_path / "mine.json"
    recipes.write_text(json.dumps({"窗口 🪟": {"sliding_window_size": 8}}, ensure_ascii=False), encoding="utf-8")
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    argv = [sys.executable, "-m", "swaa_core", "recipes", "list", "--recipes-file", str(recipes)]
    table = subprocess.run(argv, capture_output=True, env=env, timeout=300)
    assert table.returncode == 0 and b"Traceback" not in table.stderr, table.stderr[-2000:]
    assert b"\\u7a97\\u53e3" in table.stdout  # escaped, not dropped
    as_json = subprocess.run([*argv, "--json"], capture_output=True, env=env, timeout=300)
    assert as_json.returncode == 0, as_json.stderr[-2000:]
    assert json.loads(as_json.stdout.decode("ascii").splitlines()[-1])["name"] == "窗口 🪟"


def test_unreachable_hub_gives_one_message_quickly(monkeypatch, tmp_path, capsys):
    import time

    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.perf_counter()
    assert main(["run", "--model", "someone/some-model", "Hi"]) == 1
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("loading ")]
    assert lines == [
        f"swaa: error: The Hugging Face Hub (http://127.0.0.1:9) cannot be reached ([Errno 111] Connection refused), "
        f"and someone/some-model is not in the local Hugging Face cache ({tmp_path / 'hub'}). Check the network "
        "connection (or the proxy settings and HF_ENDPOINT), or pass a local folder."
    ]
    assert elapsed < 10  # huggingface_hub's own retries took 30 s


# --------------------------------------------------------------------------- one set of shared options
def subcommands() -> dict[str, argparse.ArgumentParser]:
    from swaa_core.cli import build_parser

    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def model_options(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    shown = ("model", "device", "dtype", "backend")
    return {a.dest: (tuple(a.option_strings), a.help, a.default, a.choices) for a in parser._actions if a.dest in shown}


def test_every_command_that_loads_a_model_takes_the_same_model_options():
    """Same flags, help, defaults and choices everywhere; distill runs full attention only, so it has no --backend."""
    subs = subcommands()
    reference = model_options(subs["run"])
    assert set(reference) == {"model", "device", "dtype", "backend"}
    for name in ("eval", "sweep", "finetune"):
        assert model_options(subs[name]) == reference, name
    assert model_options(subs["distill"]) == {k: v for k, v in reference.items() if k != "backend"}


SINK_COMMANDS = [["run", "Hi"], ["eval"], ["sweep", "--out", "x.jsonl"], ["finetune", "--out", "x"],
                 ["recipes", "show", "swa"], ["recipes", "save", "n", "--from", "swa", "--file", "f.json"]]  # fmt: skip


@pytest.mark.parametrize("argv", SINK_COMMANDS, ids=[" ".join(a[:2]) for a in SINK_COMMANDS])
def test_sinks_and_keep_first_are_one_option_in_every_command(argv):
    from swaa_core.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(argv).keep_first is None
    assert parser.parse_args([*argv, "--keep-first", "3"]).keep_first == 3
    assert parser.parse_args([*argv, "--sinks", "4"]).keep_first == 4


def test_recipes_show_names_a_missing_model_folder_as_run_does(capsys):
    assert main(["recipes", "show", "swa", "--model", "./nope"]) == 1
    assert "Folder not found: ./nope" in capsys.readouterr().err


def test_recipes_show_says_when_a_recipe_ignores_the_sinks_asked_for(capsys):
    assert main(["recipes", "show", "swa-fa-decode", "--layers", "8", "--sinks", "4", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json_lines(out)[0]["keep_first"] == 0  # the recipe has no sinks: they are not added...
    assert "'swa-fa-decode' keeps no sink tokens, so 4 sinks are not used" in err  # ...and the user is told
    assert main(["recipes", "show", "swa-sinks", "--layers", "8", "--sinks", "4", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json_lines(out)[0]["keep_first"] == 4 and "not used" not in err


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--recipes-file", "BAD"], "Unknown SWAA config field(s) ['keep_frist']"),
        (["--recipes-file", "MISSING"], "Recipe file not found"),
        (["-r", "no-such-recipe"], "Unknown recipe 'no-such-recipe'"),  # as fast as `swaa recipes show` says it
        (["-r", "swa", "--recipes-file", "BAD"], "Unknown SWAA config field(s) ['keep_frist']"),
    ],
)
def test_a_broken_file_is_reported_before_the_model_loads(tmp_path, capsys, extra, says):
    """The model folder does not exist: had the command loaded it first, the error would be about the folder."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "mix", "swaa_config": {"sliding_window_size": 64, "keep_frist": 4}}]))
    files = {"BAD": str(bad), "MISSING": str(tmp_path / "missing.json")}
    assert main(["run", "Hi", "--model", str(tmp_path / "no-model"), *[files.get(a, a) for a in extra]]) == 1
    err = capsys.readouterr().err
    assert says in err and "loading" not in err and "Folder not found" not in err


def test_json_output_comes_without_loading_bars(tiny_folder, capsys):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    assert main(["run", "Hi", "--model", tiny_folder, "-n", "1", "--timing-tokens", "0", "--json"]) == 0
    assert "Loading weights" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # transformers' global setting is back for whoever runs next


def test_recipes_file_of_bare_configs_runs_each(tiny_folder, tmp_path, capsys):
    path = tmp_path / "mine.json"
    path.write_text(
        json.dumps([{"sliding_window_size": 16}, {"name": "fad", "sliding_window_size": 8, "force_fa_decode": True}])
    )
    args = [
        "run",
        "Hi",
        "--model",
        tiny_folder,
        "-n",
        "1",
        "--timing-tokens",
        "0",
        "--json",
        "--recipes-file",
        str(path),
    ]
    assert main(args) == 0
    configs = [row["config"] for row in json_lines(capsys.readouterr().out)]
    assert {"sliding_window_size": 16, "keep_first": 0, "force_fa_decode": False, "non_sliding_layers": []} in configs
    assert {"sliding_window_size": 8, "keep_first": 0, "force_fa_decode": True, "non_sliding_layers": []} in configs


def test_recipes_show_resolves_a_model_folder_as_run_does(tiny_folder, capsys):
    """The same recipe for the same --model gives the same config in `recipes show` (layer count read without the
    weights) and in `run` (the model loaded)."""
    recipe = ["--recipe", "recommended", "--window", "16", "--sinks", "2"]
    assert main(["run", "Hi", "--model", tiny_folder, "-n", "1", "--timing-tokens", "0", "--json", *recipe]) == 0
    ran = json_lines(capsys.readouterr().out)[-1]["config"]
    assert (
        main(["recipes", "show", "recommended", "--model", tiny_folder, "--window", "16", "--sinks", "2", "--json"])
        == 0
    )
    assert json_lines(capsys.readouterr().out)[0] == ran
    assert ran["keep_first"] == 2 and ran["non_sliding_layers"] == [1, 3]  # 4 layers, every other one full


@pytest.mark.parametrize("recipe, says", [("no-such-recipe", "Unknown recipe 'no-such-recipe'"), ("swa", "no-model")])
def test_finetune_checks_its_one_recipe_name_before_the_model_loads(tmp_path, capsys, recipe, says):
    """`finetune --recipe` takes one name, where the other commands take a list: the early check reads it whole (a
    valid name gets as far as the missing model folder; it was once read letter by letter, 's', 'w', 'a')."""
    args = ["finetune", "--model", str(tmp_path / "no-model"), "-r", recipe, "--out", str(tmp_path / "adapter")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert says in err and "Unknown recipe 's'" not in err
