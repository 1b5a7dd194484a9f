"""The training surfaces (train_lora, finetune_pipeline, `swaa finetune`, `swaa distill`) as a new user meets
them (found by a probe, 2026-12-06): options that were accepted and ignored, outputs replaced without a word,
messages that named the wrong thing.

References are independent of the code under test: peft's own initialisation (LoRA B starts at zero) and its
``peft_config``, the adapter files peft writes, and the files on disk before and after a command.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers.tiny_models import build_tiny_model

from swaa_core import SWAAConfig
from swaa_core.train.adapters import load_adapter, save_adapter
from swaa_core.train.lora import TrainSettings, make_example, train_lora

CFG = SWAAConfig(sliding_window_size=5, keep_first=2, force_fa_decode=True)


def examples(n: int = 4, prompt_len: int = 30, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(3, 97, (prompt_len,), generator=g).tolist()
        out.append(make_example(prompt, prompt[2:8]))
    return out


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


# --------------------------------------------------------------------------- train_lora: settings that do nothing
def test_one_training_step_changes_the_adapter():
    """peft initialises every lora_B to zero, so an adapter only does something once an optimizer step with a
    learning rate > 0 has moved B. ``max_steps=1, learning_rate=1e-2`` (CLI: --steps 1 --lr 1e-2) must therefore
    leave a non-zero B. The warm-up (warmup_steps=0.05 -> ceil(0.05 * N) >= 1 step, linear from lr 0) makes the first
    optimizer step of every run use lr 0: with one step the saved adapter is the base model, and every run wastes
    its first step."""
    model = build_tiny_model("llama")
    result = train_lora(model, examples(), CFG, TrainSettings(max_steps=1, learning_rate=1e-2), progress=False)
    b = [w for n, w in lora_weights(result.model).items() if "lora_B" in n]
    assert b and max(w.abs().max().item() for w in b) > 0, "one step at lr 1e-2 left every lora_B at zero"


def test_continuing_a_peft_model_does_not_silently_drop_the_lora_settings(tmp_path):
    """train_lora accepts a PeftModel "to continue"; the LoRA shape settings passed with it (r 32, v_proj only) are
    then not applied: the adapter keeps r 4 / q_proj. They must be refused by name, yet they are ignored, and the
    result's summary (saved into swaa_config.json's "training") records r 32 as if it had been used."""
    first = train_lora(build_tiny_model("llama"), examples(), CFG,
                       TrainSettings(max_steps=2, lora_r=4, target_modules=["q_proj"]), progress=False)  # fmt: skip
    save_adapter(first.model, tmp_path / "a", CFG)
    peft_model, cfg = load_adapter(build_tiny_model("llama"), tmp_path / "a", trainable=True)
    other = TrainSettings(max_steps=2, lora_r=32, lora_alpha=8, target_modules=["v_proj"])
    try:
        result = train_lora(peft_model, examples(), cfg, other, progress=False)
    except ValueError as e:  # refused by name: fine
        assert "lora_r" in str(e) or "rank" in str(e)
        return
    used = result.model.peft_config["default"]
    recorded = result.summary()["settings"]
    assert (used.r, sorted(used.target_modules)) == (recorded["lora_r"], sorted(recorded["target_modules"]))


def test_continuing_a_frozen_adapter_is_refused_or_trains():
    """load_adapter's default is trainable=False. train_lora on that PeftModel runs its steps, reports losses and
    changes nothing (every LoRA weight is frozen): training accepted and ignored. It must be refused (pointing at
    trainable=True) or actually train."""
    first = train_lora(build_tiny_model("llama"), examples(), CFG, TrainSettings(max_steps=3, learning_rate=1e-2),
                       progress=False)  # fmt: skip
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(first.model, tmp, CFG)
        frozen, cfg = load_adapter(build_tiny_model("llama"), tmp)  # trainable=False
        before = lora_weights(frozen)
        try:
            result = train_lora(frozen, examples(seed=1), cfg, TrainSettings(max_steps=3, learning_rate=1e-2),
                                progress=False)  # fmt: skip
        except ValueError as e:
            assert "trainable" in str(e)
            return
    after = lora_weights(result.model)
    assert any(not torch.equal(before[k], after[k]) for k in before), "3 steps at lr 1e-2 changed no LoRA weight"


# --------------------------------------------------------------------------- the CLI
def write_data(path, n: int = 2, words: int = 12):
    lines = [json.dumps({"prompt": " ".join(f"w{(i + j) % 80}" for j in range(words)), "response": "w7 w8"})
             for i in range(n)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cli_epochs_with_steps_is_refused(cli, tmp_path, capsys):
    """--epochs is "passes over the data when --steps is not given": given together, --epochs is accepted and
    ignored (3 steps run either way). The rule table has no such pair."""
    data = write_data(tmp_path / "d.jsonl")
    rc = cli(["finetune", "--data", str(data), "--keep", "all", "--recipe", "swa-fa-decode", "--window", "4",
              "--steps", "3", "--epochs", "2", "--out", str(tmp_path / "o"), "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "--epochs" in err


def test_cli_data_shorter_than_the_default_window_is_not_silent(cli, tmp_path, capsys):
    """With --data and no --window the window is scaled to --length's default (1024 -> 256), an option --data
    refuses; every prompt here is ~20 tokens, so nothing slides: the adapter is trained under full attention while
    swaa_config.json says "SWA 256 + FA decode". The command must say so (a note or an error naming the window)."""
    data = write_data(tmp_path / "d.jsonl")
    out = tmp_path / "o"
    rc = cli(["finetune", "--data", str(data), "--keep", "all", "--recipe", "swa-fa-decode", "--steps", "1",
              "--out", str(out), "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 or "window" in err.lower(), "trained 'under SWA 256' on prompts that all fit in the window"


def test_cli_finetune_out_is_not_silently_mixed_with_an_earlier_run(cli, tmp_path, capsys):
    """A second run into the same --out replaces the adapter without a word and leaves the first run's
    distill.jsonl beside it: the folder then claims (help step 5: "OUT/ holds the adapter, swaa_config.json,
    distill.jsonl") data the new adapter was never trained on."""
    out = tmp_path / "o"
    assert cli(["finetune", "--samples", "2", "--length", "80", "--max-new-tokens", "3", "--keep", "all",
                "--recipe", "swa-fa-decode", "--window", "4", "--steps", "1", "--out", str(out), "-q"]) == 0  # fmt: skip
    assert (out / "distill.jsonl").is_file()
    data = write_data(tmp_path / "d.jsonl")
    rc = cli(["finetune", "--data", str(data), "--keep", "all", "--recipe", "swa", "--window", "8", "--steps", "1",
              "--out", str(out), "-q"])  # fmt: skip
    err = capsys.readouterr().err
    if rc == 1:
        assert "--out" in err  # refused by name: fine
        return
    stale = out / "distill.jsonl"
    assert not stale.exists() or stale.read_text() == data.read_text(), "distill.jsonl is the earlier run's data"


def test_cli_distill_does_not_silently_replace_an_existing_file(cli, tmp_path, capsys):
    """`swaa distill --out FILE` over an existing file replaces it without a word (sweep resumes into its --out;
    distill throws the old records away)."""
    out = tmp_path / "d.jsonl"
    out.write_text('{"prompt": "mine", "response": "precious"}\n', encoding="utf-8")
    rc = cli(["distill", "--samples", "1", "--length", "80", "--max-new-tokens", "2", "--keep", "all",
              "--out", str(out), "-q"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 1 or "precious" in out.read_text() or str(out.name) in captured.err


def test_cli_judged_correct_message_tells_the_real_reason(cli, tmp_path, capsys):
    """Records without a judge and --keep judged-correct: the message says "0 of 2 full-attention answers were
    wrong and --keep judged-correct drops them", which is false (none was wrong; none was judged)."""
    data = write_data(tmp_path / "d.jsonl")
    rc = cli(["finetune", "--data", str(data), "--keep", "judged-correct", "--recipe", "swa-fa-decode", "--window",
              "4", "--steps", "1", "--out", str(tmp_path / "o"), "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1
    assert "0 of 2" not in err and "judge" in err.lower()


def test_cli_distill_length_too_small_names_the_option(cli, tmp_path, capsys):
    """`swaa distill --length 10`: the message names the Python keyword ``length_tokens=10``, not --length."""
    rc = cli(["distill", "--length", "10", "--samples", "1", "--out", str(tmp_path / "d.jsonl"), "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and "--length" in err and "length_tokens" not in err


def test_cli_finetune_data_folder_is_refused_by_name_before_the_model_loads(cli, tmp_path, capsys):
    """--recipes-file FOLDER is refused before loading ("is a folder"); --data FOLDER loads the model first and then
    says "Training data file not found", though the path exists."""
    (tmp_path / "data").mkdir()
    rc = cli(["finetune", "--data", str(tmp_path / "data"), "--recipe", "swa-fa-decode", "--window", "4",
              "--out", str(tmp_path / "o"), "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "folder" in err and "not found" not in err
    assert cli.loads == [], "the model was loaded before a folder given as --data was refused"


# --------------------------------------------------------------------------- what works (kept as guards)
def test_same_seed_same_adapter_other_seed_other_adapter():
    def run(seed):
        result = train_lora(build_tiny_model("llama"), examples(), CFG,
                            TrainSettings(max_steps=3, learning_rate=1e-2, seed=seed), progress=False)  # fmt: skip
        return result.losses, lora_weights(result.model)

    (l1, w1), (l2, w2), (_, w3) = run(0), run(0), run(1)
    assert l1 == l2 and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert not all(torch.equal(w1[k], w3[k]) for k in w1)


def test_saved_adapter_loads_in_plain_peft_with_the_same_logits(tmp_path):
    """peft's own PeftModel.from_pretrained on a fresh base gives the trained model's logits, with the non-default
    r / alpha / dropout / targets in its config."""
    from peft import PeftModel

    settings = TrainSettings(max_steps=4, learning_rate=5e-2, lora_r=4, lora_alpha=8, lora_dropout=0.1,
                             target_modules=["q_proj", "o_proj", "down_proj"])  # fmt: skip
    result = train_lora(build_tiny_model("llama"), examples(), CFG, settings, progress=False)
    save_adapter(result.model, tmp_path / "a", CFG, base_model="tiny")
    x = torch.tensor([examples(1, seed=5)[0]["input_ids"]])
    with torch.no_grad():
        expected = result.model.eval()(x).logits
        fresh = PeftModel.from_pretrained(build_tiny_model("llama"), str(tmp_path / "a")).eval()
        torch.testing.assert_close(fresh(x).logits, expected, rtol=0, atol=0)
    c = fresh.peft_config["default"]
    assert (c.r, c.lora_alpha, c.lora_dropout, set(c.target_modules)) == (4, 8, 0.1, {"q_proj", "o_proj", "down_proj"})


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("d.csv", "prompt,response\nw1 w2,w3\n", ".csv files are not read; give JSON lines (.jsonl)"),  # once: "line 1"
        ("d.jsonl", '{"prompt": "w1 w2", "response": "w3"}\n{"prompt": \n', "line 2"),
    ],
)
def test_cli_finetune_data_that_cannot_be_read_is_refused_before_the_model_loads(cli, tmp_path, capsys, name, text,
                                                                                 message):  # fmt: skip
    """A --data file that cannot be read costs no model load (it was parsed after loading), and a table format the
    reader does not take is named as such."""
    data = tmp_path / name
    data.write_text(text, encoding="utf-8")
    rc = cli(["finetune", "--data", str(data), "--recipe", "swa-fa-decode", "--window", "4", "--out",
              str(tmp_path / "o"), "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and message in err, err
    assert cli.loads == []
