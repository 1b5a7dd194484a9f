"""A config's mask kind on every command that takes a config, through ``swaa_core.cli.main``: ``swaa run`` / ``eval`` /
``sweep`` run a chunked config given by --config (a file or inline), an inline --recipe or --recipes-file as saved;
``swaa recipes show`` / ``save`` and ``swaa finetune`` keep it. (``swaa advise`` takes a window and sinks only: it has
no config to take a kind from, and writes a sliding window.)"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from helpers.tiny_models import build_tiny_model, build_word_tokenizer

from swaa_core.cli import main
from swaa_core.engine.config import SWAAConfig, load_upstream_settings

CHUNKED = {"sliding_window_size": 16, "keep_first": 1, "mask_kind": "chunked"}
WINDOW = {**CHUNKED, "mask_kind": "sink_window"}  # the same numbers as a sliding window
PROMPT = " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * 6)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


@pytest.mark.parametrize("way", ["config file", "inline config", "inline recipe", "recipes file"])
def test_swaa_run_runs_a_chunked_config_as_saved(way, tiny_folder, tmp_path, capsys):
    """Beside a sliding window of the same numbers on the same prompt: the chunked run carries its kind and its answer
    scores differently, so a command that dropped the kind would show."""
    file = tmp_path / "chunks.json"
    file.write_text(json.dumps({"swaa_config": CHUNKED}))
    recipes = tmp_path / "mine.json"
    recipes.write_text(json.dumps([{"name": "mine", "swaa_config": CHUNKED}]))
    given = {
        "config file": ["--config", str(file)],
        "inline config": ["--config", json.dumps({"swaa_config": CHUNKED})],
        "inline recipe": ["--recipe", json.dumps(CHUNKED)],
        "recipes file": ["--recipes-file", str(recipes), "--recipe", "mine"],
    }[way]
    argv = ["run", PROMPT, "--model", tiny_folder, "-n", "2", "--answer", "fox", "--json", *given]
    assert main([*argv, "--config", json.dumps(WINDOW)]) == 0
    runs = {run["label"]: run for run in json_lines(capsys.readouterr().out)}
    chunks = next(run for run in runs.values() if run["config"] and run["config"].get("mask_kind") == "chunked")
    window = runs["SWA 16 + 1 sinks"]
    assert chunks["config"] == SWAAConfig.from_dict(CHUNKED).to_dict() and not chunks["error"]
    assert chunks["label"] == ("mine" if way == "recipes file" else "chunked 16 + 1 sinks")
    assert chunks["answer_logprob"] != pytest.approx(window["answer_logprob"], abs=1e-4)


def test_swaa_eval_and_sweep_run_a_chunked_config_as_saved(tiny_folder, tmp_path, capsys):
    config = ["--config", json.dumps(CHUNKED)]
    argv = ["eval", "--model", tiny_folder, "--task", "needle", "--length", "300", "--samples", "1", "-n", "2", "--json",
            "-q", *config]  # fmt: skip
    assert main(argv) == 0
    runs = json_lines(capsys.readouterr().out)
    assert [run["config"] for run in runs if run["config"]] == [SWAAConfig.from_dict(CHUNKED).to_dict()]
    out = tmp_path / "sweep.jsonl"
    argv = ["sweep", "--model", tiny_folder, "--task", "passkey", "--lengths", "250", "--depths", "0.5", "--samples",
            "1", "-n", "2", "--no-logprob", "--out", str(out), "-q", *config]  # fmt: skip
    assert main(argv) == 0
    rows = {row["label"]: row for row in json_lines(out.read_text())}
    assert (rows["chunked 16 + 1 sinks"]["mask_kind"], rows["chunked 16 + 1 sinks"]["window"]) == ("chunked", 16)
    assert rows["chunked 16 + 1 sinks"]["config"]["mask_kind"] == "chunked"


def test_swaa_recipes_show_and_save_keep_the_kind_and_its_words(tmp_path, capsys):
    source = json.dumps({**CHUNKED, "keep_first": 20})
    assert main(["recipes", "show", source, "--layers", "4"]) == 0
    printed = capsys.readouterr().out
    assert "chunked 16 + 20 sinks" in printed
    assert "note: keep_first=20 >= chunk 16: sinks extend past the chunk, so early tokens dominate." in printed
    file = tmp_path / "mine.json"
    assert main(["recipes", "save", "chunks", "--from", source, "--layers", "4", "--file", str(file)]) == 0
    ((cfg, _),) = load_upstream_settings(file)
    assert cfg == SWAAConfig.from_dict({**CHUNKED, "keep_first": 20})


def test_swaa_finetune_trains_and_saves_under_a_chunked_recipe(tmp_path, monkeypatch):
    """The config the attention is installed with while training, and the one saved beside the adapter."""
    import swaa_core
    import swaa_core.train.lora as lora
    from swaa_core.train import read_adapter_info

    model = build_tiny_model("llama")
    loaded = SimpleNamespace(model=model, tokenizer=build_word_tokenizer(), info=SimpleNamespace(name="tiny/llama"))
    monkeypatch.setattr(swaa_core, "load_model", lambda *a, **k: loaded)
    installed = []
    real_swaa = lora.swaa
    monkeypatch.setattr(lora, "swaa", lambda m, config, **kw: installed.append(config) or real_swaa(m, config, **kw))
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "w1 w2 w3 w4 w5 w6", "response": "w7 w8"}) + "\n", encoding="utf-8")
    out = tmp_path / "adapter"
    argv = ["finetune", "--data", str(data), "--recipe", json.dumps(CHUNKED), "--steps", "1", "--keep", "all",
            "--out", str(out), "-q"]  # fmt: skip
    assert main(argv) == 0
    assert installed == [SWAAConfig.from_dict(CHUNKED)]
    assert read_adapter_info(out).swaa_config == SWAAConfig.from_dict(CHUNKED)
