"""CLI options that are accepted and then ignored, silently overridden by another option, or that end in a
traceback instead of a message naming the option. Each test states what the help promises (the project's rule:
every option a surface accepts is applied, or refused by name) and fails while the command does otherwise."""

from __future__ import annotations

import json

import pytest

from swaa_core.cli import main

PROMPT = "The grass is green. " * 12 + "What colour is the grass?"


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


def names_option(err: str, *options: str) -> bool:
    return all(o in err for o in options)


# ------------------------------------------------------------------------------------------------ run


def test_run_stream_beside_json_is_not_dropped_silently(tiny_folder, capsys):
    """`--stream` ("print tokens as they are generated") beside `--json` is switched off without a word
    (cli/run.py: ``stream = args.stream and not args.json``): refuse the pair or say that --stream is not used."""
    code = main(["run", PROMPT, "--model", tiny_folder, "-r", "swa", "-w", "8", "-n", "2", "--timing-tokens", "0",
                 "--json", "--stream"])  # fmt: skip
    err = capsys.readouterr().err
    assert "--stream" in err, f"exit {code}; --stream was accepted and ignored"


def test_window_and_sinks_beside_a_recipes_file_without_recipe_are_not_dropped_silently(tiny_folder, tmp_path, capsys):
    """Without --recipe every config of --recipes-file runs as saved, so --window / --keep-first are not used; with
    --recipe NAME the command says so ("... runs as saved: the window 8 you chose is not used"), without it nothing
    is said (cli/common.py resolve_configs: ``if args.recipe:`` guards the note)."""
    recipes = tmp_path / "mine.json"
    recipes.write_text(json.dumps({"mine": {"sliding_window_size": 16, "keep_first": 4}}), encoding="utf-8")
    code = main(["run", PROMPT, "--model", tiny_folder, "--recipes-file", str(recipes), "--window", "8",
                 "--keep-first", "2", "-n", "1", "--timing-tokens", "0", "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0 and json_lines(out)[1]["config"]["sliding_window_size"] == 16  # the file's window ran
    assert "not used" in err, "--window 8 / --keep-first 2 were accepted and ignored without a note"


# ------------------------------------------------------------------------------------------------ eval


def test_eval_dataset_refuses_or_names_the_task_options_it_does_not_use(tiny_folder, tmp_path, capsys):
    """With --dataset the records are the prompts: --task, --task-arg, --samples, --seed, --length and --depth are
    accepted and silently unused (cli/eval.py _eval_samples returns load_dataset_records before reading them)."""
    data = tmp_path / "ds.jsonl"
    data.write_text(json.dumps({"prompt": "The code is 42. ", "question": "What is the code?", "answer": "42"}) + "\n")
    code = main(["eval", "--model", tiny_folder, "--dataset", str(data), "--task", "needle", "--task-arg", "digits=3",
                 "--samples", "5", "--seed", "3", "--length", "500", "--depth", "0.2", "-r", "swa", "-w", "8",
                 "-n", "1", "--timing-tokens", "0", "--no-logprob", "--json", "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert names_option(err, "--task-arg", "--samples", "--seed", "--length", "--depth"), (
        f"exit {code}; dataset run ignored the task options without a word: {err[-400:]}"
    )


def test_eval_refuses_doc_qa_options_without_doc_qa(tiny_folder, capsys):
    """`--question/--answer/--answer-prefix` are "doc_qa: ..." options; with --task passkey they are ignored (the
    reference stays the passkey). `swaa advise` refuses the same options by name in the same case."""
    code = main(["eval", "--model", tiny_folder, "--task", "passkey", "--length", "200", "--samples", "1",
                 "--question", "Who?", "--answer", "ZZZ", "--answer-prefix", "PP", "-r", "swa", "-w", "16", "-n", "1",
                 "--timing-tokens", "0", "--no-logprob", "--json", "-q"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code != 0 and "--answer" in err, f"exit {code}; references: {[r['reference'] for r in json_lines(out)]}"


def test_eval_refuses_limit_and_split_without_a_dataset(tiny_folder, capsys):
    """`--limit` ("use only the first N records") and `--split` only apply to --dataset; on a built-in task they are
    accepted and ignored."""
    code = main(["eval", "--model", tiny_folder, "--length", "200", "--samples", "1", "--limit", "5",
                 "--split", "train", "-r", "swa", "-w", "16", "-n", "1", "--timing-tokens", "0", "--no-logprob",
                 "--json", "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert "--limit" in err and "--split" in err, f"exit {code}; --limit/--split accepted and ignored"


# ------------------------------------------------------------------------------------------------ task args


@pytest.mark.parametrize("command", ["eval", "sweep", "advise"])
def test_unknown_task_arg_is_refused_by_name_not_a_traceback(tiny_folder, tmp_path, capsys, command):
    """`--task-arg bogus=3` reaches the task builder as a keyword: TypeError "passkey() got an unexpected keyword
    argument 'bogus'" escapes main (eval/tasks/registry.py make_task; cli/__init__.py main does not catch it)."""
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


# ------------------------------------------------------------------------------------------------ sweep


def test_sweep_group_by_an_unknown_column_is_refused(tiny_folder, tmp_path, capsys):
    """`--group-by label nosuch` groups by label only, dropping `nosuch` without a word (eval/results.py summarize:
    ``keys = [k for k in by if k in ok.columns]``); `--group-by nosuch` alone ends in pandas' "No group keys passed!",
    which names no option, after the whole sweep has run."""
    argv = ["sweep", "--model", tiny_folder, "--lengths", "200", "--depths", "0.5", "--samples", "1", "-r", "swa",
            "-w", "16", "-n", "1", "--timing-tokens", "0", "--no-logprob", "--out", str(tmp_path / "s.jsonl"), "-q",
            "--json", "--group-by", "label", "nosuch"]  # fmt: skip
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0 and "nosuch" in err and "--group-by" in err, f"exit {code}; unknown group column dropped"


@pytest.mark.parametrize("command", ["sweep", "distill", "advise"])
def test_out_that_is_a_folder_is_refused_by_name_not_a_traceback(tiny_folder, tmp_path, capsys, command):
    """`--out FOLDER` where a file is meant: IsADirectoryError escapes main (for distill and advise after the whole
    run, whose results are then lost)."""
    folder = tmp_path / "a-folder"
    folder.mkdir()
    argv = {
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
            "-w",
            "16",
            "-n",
            "1",
            "--timing-tokens",
            "0",
            "--no-logprob",
        ],  # fmt: skip
        "distill": ["distill", "--length", "200", "--samples", "1", "--max-new-tokens", "1"],
        "advise": ["advise", "--length", "200", "--full-layers", "1", "--samples", "1", "--held-out", "1", "-w", "16"],
    }[command]
    code = main([*argv, "--model", tiny_folder, "--out", str(folder), "-q"])
    err = capsys.readouterr().err
    assert code != 0 and ("--out" in err or str(folder) in err) and "Traceback" not in err


@pytest.mark.parametrize("command", ["sweep", "distill"])
def test_doc_qa_without_a_document_option_is_refused_by_name(tiny_folder, tmp_path, capsys, command):
    """`--task doc_qa` is among the choices of sweep and distill (and finetune), which have no --document option:
    sweep runs every cell into the error "doc_qa needs a document: pass document='...'", distill loads the model and
    stops with the same Python-keyword message; neither names an option of the command."""
    argv = {
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
            "-w",
            "16",
            "-n",
            "1",
            "--timing-tokens",
            "0",
            "--no-logprob",
            "--out",
            str(tmp_path / "s.jsonl"),
        ],  # fmt: skip
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
    code = main([*argv, "--model", tiny_folder, "--task", "doc_qa", "-q"])
    err = capsys.readouterr().err
    assert code != 0 and "--task" in err and "document='" not in err, err[-300:]


# ------------------------------------------------------------------------------------------------ distill / finetune


def test_distill_dataset_names_the_task_options_it_does_not_use(tiny_folder, tmp_path, capsys):
    """distill --dataset: --task, --length and --seed are accepted and unused (cli/distill.py prompts)."""
    data = tmp_path / "ds.jsonl"
    data.write_text(json.dumps({"prompt": "The code is 42. ", "question": "What is the code?", "answer": "42"}) + "\n")
    out = tmp_path / "d.jsonl"
    code = main(["distill", "--model", tiny_folder, "--dataset", str(data), "--task", "passkey", "--length", "5000",
                 "--seed", "9", "--samples", "1", "--max-new-tokens", "1", "--keep", "all", "--out", str(out), "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert names_option(err, "--length", "--seed"), f"exit {code}; --task/--length/--seed ignored without a word"


def test_finetune_data_names_the_distillation_options_it_does_not_use(tiny_folder, tmp_path, capsys):
    """finetune --data FILE trains on FILE: --dataset, --task and --samples beside it are accepted and unused
    (cli/finetune.py: ``records = load_jsonl(args.data) if args.data else None``), and --eval-length without
    --eval-samples too."""
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "The code is 42. What is the code?", "question": "", "answer": "42",
                                "response": " 42", "judge": 1}) + "\n")  # fmt: skip
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"prompt": "x", "question": "y", "answer": "z"}) + "\n")
    code = main(["finetune", "--model", tiny_folder, "--data", str(data), "--dataset", str(other), "--samples", "7",
                 "--eval-length", "300", "-r", "swa-fa-decode", "-w", "16", "--steps", "1", "--rank", "2",
                 "--keep", "all", "--out", str(tmp_path / "adapter"), "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert names_option(err, "--dataset", "--samples", "--eval-length"), f"exit {code}; options ignored silently"


# ------------------------------------------------------------------------------------------------ recipes


def test_recipes_save_json_prints_json(tmp_path, capsys):
    """`recipes save --json` ("print JSON") prints nothing on stdout."""
    assert main(["recipes", "save", "mine", "--from", "swa", "--layers", "4", "--window", "64",
                 "--file", str(tmp_path / "r.json"), "--json"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert json_lines(out), "--json was accepted and nothing was printed"


def test_recipes_save_reads_its_recipes_file(tmp_path, capsys):
    """`recipes save --recipes-file FILE` ("your saved recipes") is never read: --from a name saved there is an
    unknown recipe (cli/recipes.py cmd_recipes_save resolves against --file only)."""
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"other": {"sliding_window_size": 32}}), encoding="utf-8")
    code = main(["recipes", "save", "copy", "--from", "other", "--layers", "4", "--file", str(tmp_path / "r.json"),
                 "--recipes-file", str(mine)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err


def test_recipes_show_layers_and_model_do_not_conflict_silently(tiny_folder, capsys):
    """`--layers` is "the model's layer count (instead of --model)"; given both, --layers wins without a word
    (cli/common.py model_layers): the 4-layer model is shown with 8 layers' indices."""
    code = main(["recipes", "show", "recommended", "--model", tiny_folder, "--layers", "8", "--json"])
    out, err = capsys.readouterr()
    layers = json_lines(out)[0]["non_sliding_layers"] if code == 0 else None
    assert code != 0 and "--layers" in err and "--model" in err, f"exit {code}; non_sliding_layers {layers}"


def test_recipes_show_context_beside_window_is_not_dropped_silently(capsys):
    """`--context` is "prompt length the window is scaled to"; beside --window it does nothing and nothing says so."""
    assert main(["recipes", "show", "swa", "--layers", "4", "--window", "100", "--context", "4000", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json_lines(out)[0]["sliding_window_size"] == 100
    assert "--context" in err, "--context was accepted and ignored without a note"


def test_recipes_file_that_is_a_folder_is_not_called_missing(tmp_path, capsys):
    """A folder given as --recipes-file is reported as "Recipe file not found", while --prompt-file and --config say
    "... is a folder; give a text file"."""
    assert main(["recipes", "list", "--recipes-file", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "not found" not in err and "folder" in err, err


def test_sweep_json_summary_is_strict_json_under_no_logprob(tiny_folder, tmp_path, capsys):
    """`sweep --json` ("print the summary as JSON lines") with `--no-logprob` prints `"logprob_per_token": NaN`, which
    is not JSON (RFC 8259); strict parsers refuse the line. A missing value should be null (cli/output.py print_json
    dumps the summary frame's NaN as is)."""
    argv = ["sweep", "--model", tiny_folder, "--lengths", "200", "--depths", "0.5", "--samples", "1", "-r", "swa",
            "-w", "16", "-n", "1", "--timing-tokens", "0", "--no-logprob", "--out", str(tmp_path / "s.jsonl"), "-q",
            "--json"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    for line in out.splitlines():
        json.loads(line, parse_constant=refuse)
