"""Which options of a `swaa` subcommand go together (swaa_core/cli/rules.py): every option a command accepts is
applied, or refused by name (exit code 1, every broken rule in one go, before any file is read or model loads);
a note only where the combination has a documented meaning. Output paths, task args and summary columns are checked
up front too, JSON output is strict, and nothing ends in a traceback."""

from __future__ import annotations

import json

import pytest

from swaa_core.cli import main

PROMPT = "The grass is green. " * 12 + "What colour is the grass?"
# A sweep of one cell per recipe on the tiny model, with short untimed answers (the tests add --model, --out, ...).
TINY_SWEEP = ["sweep", "--lengths", "200", "--depths", "0.5", "--samples", "1", "-r", "swa", "-w", "16", "-n", "1",
              "--timing-tokens", "0", "--no-logprob"]  # fmt: skip


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


def names_option(err: str, *options: str) -> bool:
    return all(o in err for o in options)


# ------------------------------------------------------------------------------------------------ run


def test_run_refuses_stream_beside_json(tiny_folder, capsys):
    """`--stream` prints tokens as they come, `--json` one whole object per run: the pair is refused by name."""
    code = main(["run", PROMPT, "--model", tiny_folder, "-r", "swa", "-w", "8", "-n", "2", "--timing-tokens", "0",
                 "--json", "--stream"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "--stream is not used with --json" in err and "loading" not in err, err


def test_window_and_sinks_beside_a_recipes_file_without_recipe_get_a_note(tiny_folder, tmp_path, capsys):
    """Without --recipe every config of --recipes-file runs as saved (documented): the command runs and notes that
    --window and --keep-first are not used."""
    recipes = tmp_path / "mine.json"
    recipes.write_text(json.dumps({"mine": {"sliding_window_size": 16, "keep_first": 4}}), encoding="utf-8")
    code = main(["run", PROMPT, "--model", tiny_folder, "--recipes-file", str(recipes), "--window", "8",
                 "--keep-first", "2", "-n", "1", "--timing-tokens", "0", "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0 and json_lines(out)[1]["config"]["sliding_window_size"] == 16  # the file's window ran
    assert "note: --window and --keep-first are not used with --recipes-file without --recipe" in err, err


# ------------------------------------------------------------------------------------------------ eval


def test_eval_dataset_refuses_the_task_options_it_does_not_use(tiny_folder, tmp_path, capsys):
    """With --dataset the records are the prompts: --task, --task-arg, --samples, --seed, --length and --depth are
    refused, all named in one message."""
    data = tmp_path / "ds.jsonl"
    data.write_text(json.dumps({"prompt": "The code is 42. ", "question": "What is the code?", "answer": "42"}) + "\n")
    code = main(["eval", "--model", tiny_folder, "--dataset", str(data), "--task", "needle", "--task-arg", "digits=3",
                 "--samples", "5", "--seed", "3", "--length", "500", "--depth", "0.2", "-r", "swa", "-w", "8",
                 "-n", "1", "--timing-tokens", "0", "--no-logprob", "--json", "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and names_option(err, "--task,", "--task-arg", "--samples", "--seed", "--length", "--depth")
    assert "not used with --dataset" in err and "loading" not in err, err


def test_eval_refuses_doc_qa_options_without_doc_qa(tiny_folder, capsys):
    """`--question/--answer/--answer-prefix` are doc_qa's options: with --task passkey they are refused by name, as
    `swaa advise` refuses them."""
    code = main(["eval", "--model", tiny_folder, "--task", "passkey", "--length", "200", "--samples", "1",
                 "--question", "Who?", "--answer", "ZZZ", "--answer-prefix", "PP", "-r", "swa", "-w", "16", "-n", "1",
                 "--timing-tokens", "0", "--no-logprob", "--json", "-q"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code != 0 and "--answer" in err, f"exit {code}; references: {[r['reference'] for r in json_lines(out)]}"


def test_eval_refuses_limit_and_split_without_a_dataset(tiny_folder, capsys):
    """`--limit` and `--split` choose records of a --dataset: on a built-in task they are refused."""
    code = main(["eval", "--model", tiny_folder, "--length", "200", "--samples", "1", "--limit", "5",
                 "--split", "train", "-r", "swa", "-w", "16", "-n", "1", "--timing-tokens", "0", "--no-logprob",
                 "--json", "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "--limit and --split only apply with --dataset" in err, err


# ------------------------------------------------------------------------------------------------ task args


@pytest.mark.parametrize("command", ["eval", "sweep", "advise"])
def test_unknown_task_arg_is_refused_by_name_not_a_traceback(tiny_folder, tmp_path, capsys, command):
    """`--task-arg bogus=3` is refused before the model loads, naming the task args the task takes (it was a
    TypeError traceback from the task builder)."""
    argv = {
        "eval": ["eval", "--length", "200", "--samples", "1", "-r", "swa"],
        "sweep": [
            "sweep",
            "--lengths",
            "200",
            "--depths",
            "0.5",
            "--samples",
            "1",
            "-r",
            "swa",
            "--out",
            str(tmp_path / "s.jsonl"),
        ],  # fmt: skip
        "advise": [
            "advise",
            "--length",
            "200",
            "--full-layers",
            "1",
            "--samples",
            "1",
            "--held-out",
            "1",
            "--out",
            str(tmp_path / "a.json"),
        ],  # fmt: skip
    }[command]
    code = main([*argv, "--model", tiny_folder, "-w", "16", "--task-arg", "bogus=3", "-q"])
    err = capsys.readouterr().err
    assert code != 0 and "bogus" in err and "Traceback" not in err
    assert "its task args: digits, haystack" in err and "loading" not in err, err


BAD_TASK_ARGS = [  # (command's argv, --task, --task-arg, what its builder says of the value)
    (["eval"], "multi_key", "num_keys=1", "multi_key needs num_keys >= 2"),
    (["eval"], "common_words", "freq_rare=-1", "freq_rare (how often each other word appears) must be at least 1"),
    (["sweep", "--out", "s.jsonl"], "variable_tracking", "num_hops=-2", "num_hops must be at least 1, got -2"),
    (["advise", "--length", "200", "--full-layers", "1", "--out", "a.json"], "passkey", "digits=40",
     "digits must be between 1 and 32, got 40"),
    (["eval"], "needle", "digits=2.5", "option digits takes a whole number, got 2.5"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "task", "pair", "says"), BAD_TASK_ARGS, ids=[a[3] for a in BAD_TASK_ARGS])
def test_a_task_arg_value_its_builder_refuses_is_refused_before_the_model_loads(
    tmp_path, capsys, monkeypatch, argv, task, pair, says
):
    """A value the task's builder refuses (a count below its minimum, too many digits) was refused only once the model
    had loaded. Now it is refused up front, in the builder's words: the reference is the builder's own refusal."""
    import swaa_core
    from swaa_core.eval.tasks import TaskError, make_task

    key, _, value = pair.partition("=")
    with pytest.raises(TaskError) as built:
        make_task(task, None, length_tokens=200, depth=0.5, **{key: json.loads(value)})
    assert says in str(built.value)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(swaa_core, "load_model", lambda *a, **k: pytest.fail("no model may load for a bad task arg"))
    code = main([*argv, "--task", task, "--task-arg", pair, "--model", str(tmp_path / "no-model")])
    err = capsys.readouterr().err
    assert code == 1 and f"swaa: error: --task-arg: {built.value}" in err and "Traceback" not in err, err


def test_every_bad_task_arg_value_is_named_at_once(tmp_path, capsys):
    code = main(["eval", "--task", "multi_key", "--task-arg", "num_keys=0", "--task-arg", "digits=99", "--model",
                 str(tmp_path / "no-model")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "got 0" in err and "digits must be between 1 and 32, got 99" in err, err


# ------------------------------------------------------------------------------------------------ sweep


def test_sweep_group_by_an_unknown_column_is_refused(tiny_folder, tmp_path, capsys):
    """`--group-by label nosuch` is refused before the sweep runs (summarize dropped `nosuch` in silence, and
    `--group-by nosuch` alone ended in pandas' "No group keys passed!" after the whole sweep)."""
    argv = [*TINY_SWEEP, "--model", tiny_folder, "--out", str(tmp_path / "s.jsonl"), "-q", "--json", "--group-by",
            "label", "nosuch"]  # fmt: skip
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0 and "nosuch" in err and "--group-by" in err, f"exit {code}; unknown group column dropped"
    assert "loading" not in err and not (tmp_path / "s.jsonl").exists()


@pytest.mark.parametrize("command", ["sweep", "distill", "advise"])
def test_out_that_is_a_folder_is_refused_by_name_not_a_traceback(tiny_folder, tmp_path, capsys, command):
    """`--out FOLDER` where a file is meant is refused before the model loads (it was an IsADirectoryError
    traceback, for distill and advise after the whole run, whose results were then lost)."""
    folder = tmp_path / "a-folder"
    folder.mkdir()
    argv = {
        "sweep": TINY_SWEEP,
        "distill": ["distill", "--length", "200", "--samples", "1", "--max-new-tokens", "1"],
        "advise": ["advise", "--length", "200", "--full-layers", "1", "--samples", "1", "--held-out", "1", "-w", "16"],
    }[command]
    code = main([*argv, "--model", tiny_folder, "--out", str(folder), "-q"])
    err = capsys.readouterr().err
    assert code != 0 and f"--out {folder} is a folder" in err and "Traceback" not in err and "loading" not in err


@pytest.mark.parametrize("command", ["sweep", "distill"])
def test_doc_qa_is_not_a_task_of_commands_without_a_document_option(tiny_folder, tmp_path, capsys, command):
    """sweep (a grid of lengths and depths) and distill / finetune (prompts by the dozen from seeds) have no
    --document option, so doc_qa is not among their --task choices: argparse refuses it by name at parse time (exit
    2). It was offered, and sweep ran every cell into "pass document='...'", a Python keyword."""
    argv = {
        "sweep": [*TINY_SWEEP, "--out", str(tmp_path / "s.jsonl")],
        "distill": [
            "distill",
            "--length",
            "200",
            "--samples",
            "1",
            "--max-new-tokens",
            "1",
            "--out",
            str(tmp_path / "d.jsonl"),
        ],  # fmt: skip
    }[command]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--model", tiny_folder, "--task", "doc_qa", "-q"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --task/-t: invalid choice: 'doc_qa'" in err.replace(
        "--task:", "--task/-t:"
    )
    assert f"swaa {command}" in err and "document='" not in err, err[-300:]


# ------------------------------------------------------------------------------------------------ distill / finetune


def test_distill_dataset_names_the_task_options_it_does_not_use(tiny_folder, tmp_path, capsys):
    """distill --dataset: the records are the prompts, so --task, --length and --seed are refused by name."""
    data = tmp_path / "ds.jsonl"
    data.write_text(json.dumps({"prompt": "The code is 42. ", "question": "What is the code?", "answer": "42"}) + "\n")
    out = tmp_path / "d.jsonl"
    code = main(["distill", "--model", tiny_folder, "--dataset", str(data), "--task", "passkey", "--length", "5000",
                 "--seed", "9", "--samples", "1", "--max-new-tokens", "1", "--keep", "all", "--out", str(out), "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "--task, --length and --seed are not used with --dataset" in err and not out.exists(), err


def test_finetune_data_names_the_distillation_options_it_does_not_use(tiny_folder, tmp_path, capsys):
    """finetune --data FILE trains on FILE: --dataset and --samples beside it are refused, and --eval-length
    without --eval-samples too, before the model loads."""
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "The code is 42. What is the code?", "question": "", "answer": "42",
                                "response": " 42", "judge": 1}) + "\n")  # fmt: skip
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"prompt": "x", "question": "y", "answer": "z"}) + "\n")
    code = main(["finetune", "--model", tiny_folder, "--data", str(data), "--dataset", str(other), "--samples", "7",
                 "--eval-length", "300", "-r", "swa-fa-decode", "-w", "16", "--steps", "1", "--rank", "2",
                 "--keep", "all", "--out", str(tmp_path / "adapter"), "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and names_option(err, "--dataset", "--samples", "--eval-length"), err
    assert "loading" not in err and not (tmp_path / "adapter").exists()


# ------------------------------------------------------------------------------------------------ recipes


def test_recipes_save_json_prints_json(tmp_path, capsys):
    """`recipes save --json` prints what it saved: the name, the file and the config."""
    assert main(["recipes", "save", "mine", "--from", "swa", "--layers", "4", "--window", "64",
                 "--file", str(tmp_path / "r.json"), "--json"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    (saved,) = json_lines(out)
    assert saved["name"] == "mine" and saved["config"]["sliding_window_size"] == 64


def test_recipes_save_reads_its_recipes_file(tmp_path, capsys):
    """`recipes save --from NAME` finds NAME in --recipes-file (read, not written) as well as in --file."""
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"other": {"sliding_window_size": 32}}), encoding="utf-8")
    code = main(["recipes", "save", "copy", "--from", "other", "--layers", "4", "--file", str(tmp_path / "r.json"),
                 "--recipes-file", str(mine)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    from swaa_core.eval.recipes import load_user_recipes

    assert load_user_recipes(tmp_path / "r.json")["copy"].sliding_window_size == 32


def test_recipes_show_layers_and_model_do_not_conflict_silently(tiny_folder, capsys):
    """`--layers` is the layer count instead of --model: given both, the pair is refused (--layers won in silence,
    showing the 4-layer model with 8 layers' indices)."""
    code = main(["recipes", "show", "recommended", "--model", tiny_folder, "--layers", "8", "--json"])
    out, err = capsys.readouterr()
    layers = json_lines(out)[0]["non_sliding_layers"] if code == 0 else None
    assert code != 0 and "--layers" in err and "--model" in err, f"exit {code}; non_sliding_layers {layers}"


def test_recipes_show_refuses_context_beside_window(capsys):
    """`--context` is the prompt length the window is scaled to; --window fixes the window, so the pair is refused
    (it printed the config with --context unused and nothing said)."""
    assert main(["recipes", "show", "swa", "--layers", "4", "--window", "100", "--context", "4000", "--json"]) == 1
    out, err = capsys.readouterr()
    assert not out and "--context is not used with --window" in err


def test_recipes_file_that_is_a_folder_is_not_called_missing(tmp_path, capsys):
    """A folder given as --recipes-file is called a folder, as --prompt-file and --config say it (it was "Recipe
    file not found")."""
    assert main(["recipes", "list", "--recipes-file", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "not found" not in err and "folder" in err, err


def test_sweep_json_summary_is_strict_json_under_no_logprob(tiny_folder, tmp_path, capsys):
    """`sweep --json` with `--no-logprob` prints the missing log-likelihood as null: strict JSON (RFC 8259), where it
    printed `NaN`, which strict parsers refuse."""
    argv = [*TINY_SWEEP, "--model", tiny_folder, "--out", str(tmp_path / "s.jsonl"), "-q", "--json"]
    assert main(argv) == 0
    out = capsys.readouterr().out

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    for line in out.splitlines():
        json.loads(line, parse_constant=refuse)


# ------------------------------------------------------------------------------------------------ the rule tables


def test_every_rule_and_check_names_options_of_its_commands():
    """The tables stay true to the parsers: each rule's options and each check's option exist in every command it
    names, so a renamed option cannot leave a rule that never fires."""
    import argparse

    from swaa_core.cli import build_parser, subcommand_parser
    from swaa_core.cli.rules import RULES, VALUE_CHECKS

    parser = build_parser()

    def dests(command: str) -> set[str]:
        name, _, action = command.partition(" ")
        ns = argparse.Namespace(command=name, recipes_command=action or None)
        return {a.dest for a in subcommand_parser(parser, ns)._actions}

    for rule in RULES:
        for command in rule.commands:
            known = dests(command)
            missing = {o for o in rule.options if o not in known and o != "depths" and o != "depth"}
            assert not missing, (command, missing)
            assert {"depth", "depths"} & known or not {"depth", "depths"} & set(rule.options), command
    for check in VALUE_CHECKS:
        for command in check.commands:
            assert check.dest in dests(command), (command, check.dest)


def test_task_options_match_the_task_builders():
    """registry.TASK_OPTIONS lists exactly the keywords each builder takes (through needle's and multi_key's
    pass-through to niah), and make_task refuses another one, or a value of the wrong type, by name."""
    import inspect

    from swaa_core.eval.tasks import registry
    from swaa_core.eval.tasks.needle import niah

    def keywords(fn) -> set[str]:
        return {
            n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY or p.default != p.empty
        }

    fixed = {"length_tokens", "depth", "seed"}
    for kind, builder in registry.BUILDERS.items():
        takes = keywords(builder) - fixed
        if kind in ("needle", "multi_key"):  # **kw into niah, which they give num_keys (needle) and kind
            takes = (takes | keywords(niah)) - fixed - {"kind"} - ({"num_keys"} if kind == "needle" else set())
        assert set(registry.TASK_OPTIONS[kind]) == takes, kind
    with pytest.raises(registry.TaskError, match=r"Task passkey has no option 'bogus'; its options: digits, haystack"):
        registry.make_task("passkey", None, length_tokens=100, bogus=3)
    with pytest.raises(registry.TaskError, match=r"option num_keys takes a whole number, got 'four'"):
        registry.make_task("multi-key", None, length_tokens=100, num_keys="four")


def test_an_option_given_at_its_default_value_counts_as_given(tmp_path, capsys):
    """`--samples 3` is eval's default, typed out: beside --dataset it is refused like any other value."""
    data = tmp_path / "ds.jsonl"
    data.write_text(json.dumps({"prompt": "p", "question": "q", "answer": "a"}) + "\n")
    assert main(["eval", "--model", str(tmp_path / "no-model"), "--dataset", str(data), "--samples", "3"]) == 1
    err = capsys.readouterr().err
    assert "--samples is not used with --dataset" in err and "Folder not found" not in err


REFUSED = [  # (argv after the subcommand's model, what the message says); refused before the model loads
    (["eval", "--out", "runs.txt"], "--out runs.txt: give a file name ending in .jsonl or .ndjson or .csv"),
    (["sweep", "--out", "x.csv"], "--out x.csv: give a file name ending in .jsonl or .ndjson (the results are appended"),
    (["sweep", "--out", "x.jsonl", "--csv", "x.tsv"], "--csv x.tsv: give a file name ending in .csv"),
    (["distill", "--out", "d.csv"], "--out d.csv: give a file name ending in .jsonl"),
    (["advise", "--length", "200", "--full-layers", "1", "--out", "a.txt"], "--out a.txt: give a file name ending in .json"),
    (["eval", "--task", "common_words", "--depth", "0.2"], "--depth is not used with --task common_words"),
    (["sweep", "--out", "x.jsonl", "--task", "common_words", "--depths", "0.2"], "--depths is not used with --task common_words"),
    (["eval", "--task", "doc_qa", "--document", "d.txt"], "--task doc_qa needs --question"),
    (["eval", "--task", "doc_qa", "--document", "d.txt", "--question", "Q?", "--seed", "2"], "--seed is not used with --task doc_qa"),
    (["eval", "--document", "d.txt"], "--document only applies with --task doc_qa: they are the document task's (the task is passkey)"),
    (["advise", "--length", "200", "--full-layers", "1", "--out", "a.json", "--task", "doc_qa", "--document", "d.txt"],
     "--task doc_qa needs --question and --answer"),
    (["eval", "--task", "doc_qa", "--document", "d.txt", "--question", "Q?", "--task-arg", "digits=3"],
     "--task-arg 'digits': --task doc_qa takes no such option; it takes no task args (its document, question and "
     "answer come from"),
    (["eval", "--task-arg", "digits"], "--task-arg takes KEY=VALUE (e.g. num_keys=4), got 'digits'"),
    (["distill", "--out", "d.jsonl", "--split", "train"], "--split only applies with --dataset"),
    (["finetune", "--out", "ad", "--eval-length", "300"], "--eval-length only applies with --eval-samples N"),
    (["finetune", "--out", "ad", "--targets", " , "], "--targets is empty: name the linear layers LoRA adapts"),
    (["recipes", "save", "x", "--from", "swa", "--file", "r.txt"], "--file r.txt: give a file name ending in .json"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "says"), REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_options_that_cannot_apply_are_refused_before_the_model_loads(tmp_path, capsys, monkeypatch, argv, says):
    import swaa_core

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(swaa_core, "load_model", lambda *a, **k: pytest.fail("no model may load for refused options"))
    model = [] if argv[0] == "recipes" else ["--model", str(tmp_path / "no-model")]
    assert main([*argv, *model]) == 1
    err = capsys.readouterr().err
    assert f"swaa: error: {says}" in err and "Traceback" not in err, err
    assert not any(p.name != "no-model" for p in tmp_path.iterdir()), "a refused command wrote a file"


def test_every_broken_rule_is_named_at_once(capsys):
    assert main(["eval", "--limit", "3", "--question", "Who?", "--depth", "0.3", "--task", "common_words"]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("swaa: error: ")]
    assert len(lines) == 3 and "--limit" in lines[0] and "--question" in lines[1] and "--depth" in lines[2]


def test_an_unknown_option_gets_the_usage_of_its_subcommand(capsys):
    """`distill -n 3`: the distill usage and "swaa distill: error", not the top-level usage."""
    with pytest.raises(SystemExit) as exit_:
        main(["distill", "-n", "3", "--out", "d.jsonl"])
    err = capsys.readouterr().err
    assert (
        exit_.value.code == 2
        and "usage: swaa distill" in err
        and "swaa distill: error: unrecognized arguments: -n 3" in err
    )
    with pytest.raises(SystemExit):
        main(["recipes", "show", "swa", "--bogus"])
    assert "swaa recipes show: error: unrecognized arguments: --bogus" in capsys.readouterr().err


def test_a_recipes_file_that_is_a_folder_is_named_before_the_model_loads(tmp_path, capsys):
    assert main(["run", "Hi", "--model", str(tmp_path / "no-model"), "--recipes-file", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert (
        f"--recipes-file {tmp_path} is a folder; give a JSON file of recipes" in err and "Folder not found" not in err
    )


def test_recipes_save_says_when_it_replaces_a_saved_recipe(tmp_path, capsys):
    file = str(tmp_path / "r.json")
    assert main(["recipes", "save", "mine", "--from", "swa", "--layers", "4", "--window", "64", "--file", file]) == 0
    assert "replaced" not in capsys.readouterr().err
    assert main(["recipes", "save", "mine", "--from", "swa", "--layers", "4", "--window", "32", "--file", file]) == 0
    assert "replaced 'mine' of" in capsys.readouterr().err


def test_printed_json_is_strict():
    """print_json writes null for NaN, pandas' missing values and infinities, and NumPy scalars as numbers."""
    import io
    from contextlib import redirect_stdout

    import numpy as np
    import pandas as pd

    from swaa_core.cli.output import print_json

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        print_json({"a": float("nan"), "b": [float("inf"), np.float32(0.5), np.int64(3)], "c": pd.NA, "d": "x"})

    def refuse(constant):
        raise ValueError(constant)

    assert json.loads(buffer.getvalue(), parse_constant=refuse) == {"a": None, "b": [None, 0.5, 3], "c": None, "d": "x"}


def test_summarize_refuses_a_column_it_cannot_group_by():
    """summarize (eval/results.py) names a group key the results lack instead of dropping it; list-valued columns
    (layer lists) group as tuples."""
    from swaa_core.eval.results import summarize, to_frame

    rows = [{"cell_id": str(i), "label": "swa", "non_sliding_layers": [1, 3], "correct": True, "error": None}
            for i in range(2)]  # fmt: skip
    df = to_frame(rows)
    with pytest.raises(ValueError, match="Cannot group by 'nosuch'"):
        summarize(df, by=("label", "nosuch"))
    with pytest.raises(ValueError, match="Nothing to group by"):
        summarize(df, by=())
    table = summarize(df, by=("non_sliding_layers",))
    assert table["runs"].tolist() == [2] and table["non_sliding_layers"].tolist() == [(1, 3)]


def test_a_task_without_a_needle_sweeps_one_cell_per_seed(tiny_folder, tmp_path, capsys):
    """`sweep --task common_words` without --depths: the default depths (0.1 0.5 0.9) would be three identical cells
    per seed counted as three runs; the grid has one cell per recipe and seed, recorded without a depth."""
    out = tmp_path / "s.jsonl"
    assert main(["sweep", "--model", tiny_folder, "--task", "common_words", "--lengths", "200", "--samples", "2",
                 "-r", "swa", "-w", "16", "-n", "1", "--timing-tokens", "0", "--no-logprob", "--out", str(out),
                 "-q"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 * 2 and all(r["depth"] is None for r in rows)  # (full + swa) x 2 seeds


def test_eval_doc_qa_reads_the_document_once_and_refuses_samples(tiny_folder, tmp_path, capsys):
    """`eval --task doc_qa`: one sample (every seed gives the same document and question), and --samples is refused
    by name instead of repeating it."""
    doc = tmp_path / "doc.txt"
    doc.write_text("The grass is green. " * 10, encoding="utf-8")
    argv = ["eval", "--model", tiny_folder, "--task", "doc_qa", "--document", str(doc), "--question", "Colour?",
            "-r", "swa", "-w", "16", "-n", "1", "--timing-tokens", "0", "--no-logprob", "--json", "-q"]  # fmt: skip
    assert main(argv) == 0
    assert len(json_lines(capsys.readouterr().out)) == 2  # full attention and swa, one sample each
    assert main([*argv, "--samples", "3"]) != 0
    assert "--samples" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "Hi", "-r", "swa"],
        ["finetune", "-r", "swa-fa-decode", "--samples", "1", "--out", "ADAPTER"],
        ["recipes", "show", "swa", "--layers", "4"],
        ["recipes", "save", "copy", "--from", "swa", "--layers", "4", "--file", "R"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_a_recipes_file_none_of_whose_recipes_is_named_is_refused(tiny_folder, tmp_path, capsys, argv):
    """--recipes-file beside recipe names it does not hold would be read and not used: refused, naming its recipes,
    before any model loads or file is written."""
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"narrow": {"sliding_window_size": 8}}), encoding="utf-8")
    argv = [str(tmp_path / ("x.json" if a == "R" else "x")) if a in ("ADAPTER", "R") else a for a in argv]
    extra = ["--model", tiny_folder] if argv[0] in ("run", "finetune") else []
    assert main([*argv, *extra, "--recipes-file", str(mine)]) != 0
    err = capsys.readouterr().err
    assert "--recipes-file" in err and "narrow" in err and "not used" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.json").exists()


def test_recipes_show_names_a_context_length_it_does_not_use(tmp_path, capsys):
    """--context scales a preset's window; for full attention or a saved config it changes nothing, and says so."""
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"narrow": {"sliding_window_size": 8}}), encoding="utf-8")
    assert main(["recipes", "show", "swa", "--layers", "4", "--context", "4000", "--json"]) == 0
    assert "context length" not in capsys.readouterr().err
    for name, extra in (("full", []), ("narrow", ["--recipes-file", str(mine)])):
        assert main(["recipes", "show", name, "--layers", "4", "--context", "4000", "--json", *extra]) == 0
        assert "context length 4000 you chose is not used" in capsys.readouterr().err


def test_group_by_takes_every_column_a_row_has_and_ndjson_outputs(tiny_folder, tmp_path, capsys):
    """--group-by accepts the row's own columns beyond the table's first ones (device, threads), and JSON-lines
    outputs may be named .ndjson, as results.export writes them."""
    out = tmp_path / "s.ndjson"
    assert main([*TINY_SWEEP, "--model", tiny_folder, "--out", str(out), "-q", "--json", "--group-by", "label",
                 "device", "threads"]) == 0  # fmt: skip
    groups = json_lines(capsys.readouterr().out)
    assert groups and all({"device", "threads"} <= g.keys() for g in groups)
    assert len(out.read_text().splitlines()) == 2
