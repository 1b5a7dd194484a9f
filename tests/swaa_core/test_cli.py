"""The `swaa` command: help that teaches, JSON runs on a tiny model saved to a folder, eval/sweep/recipes, and a
smoke run on the embedded model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import build_tiny_model, build_tiny_tokenizer

from swaa_core.cli import main
from swaa_core.config import load_upstream_settings


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = build_tiny_tokenizer()
    build_tiny_model("llama", layers=4, vocab_size=len(tok), seed=5).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("command", [[], ["run"], ["eval"], ["sweep"], ["recipes"], ["recipes", "show"]])
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
