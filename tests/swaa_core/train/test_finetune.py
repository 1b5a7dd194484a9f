"""LoRA SFT under SWA: the mixed training mask, loss, gradient checkpointing, adapters that carry their config."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers.tiny_models import build_tiny_model, build_word_tokenizer, tiny_loaded_llama

from swaa_core import SWAAConfig, apply_swaa, load_upstream_settings, remove_swaa, swaa
from swaa_core.engine.families import attention_modules
from swaa_core.engine.patch import current_config
from swaa_core.train.adapters import AdapterError, find_adapters, load_adapter, read_adapter_info, save_adapter
from swaa_core.train.distill import DistillDataError
from swaa_core.train.finetune import finetune_pipeline
from swaa_core.train.lora import (
    IGNORE,
    TrainSettings,
    _training_mode,
    build_examples,
    collate,
    lora_config,
    make_example,
    train_lora,
)

MIXED = SWAAConfig(sliding_window_size=5, keep_first=2, force_fa_decode=True, non_sliding_layers=[3])


def random_examples(n: int, prompt_len: int = 30, answer_len: int = 6, seed: int = 0) -> list[dict]:
    """Prompts of random tokens whose answer copies tokens from far back in the prompt (out of a small window)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(3, 97, (prompt_len + i % 3,), generator=g).tolist()
        out.append(make_example(prompt, prompt[2 : 2 + answer_len]))
    return out


@torch.no_grad()
def incremental_logits(model, ids: list[int], prompt_len: int) -> torch.Tensor:
    """Inference path: prefill the prompt, then feed the answer one token at a time through the KV cache. A manual
    decode loop marks where the prompt ends (``generate`` does that by itself), so FA decode applies to the answer."""
    marker = {"swaa_prompt_lengths": torch.tensor([prompt_len])}
    out = model(torch.tensor([ids[:prompt_len]]), use_cache=True, **marker)
    rows, cache = [out.logits[0]], out.past_key_values
    for tok in ids[prompt_len:]:
        out = model(torch.tensor([[tok]]), past_key_values=cache, use_cache=True, **marker)
        rows.append(out.logits[0])
        cache = out.past_key_values
    return torch.cat(rows)


def answer_loss(logits_rows: list[torch.Tensor], examples: list[dict]) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens of all examples (what the SFT loss must be)."""
    logits = torch.cat([lg[:-1] for lg in logits_rows])
    labels = torch.cat([torch.tensor(ex["labels"][1:]) for ex in examples])
    return F.cross_entropy(logits, labels, ignore_index=IGNORE)


# --------------------------------------------------------------------------- the mixed mask
@pytest.mark.parametrize("cfg", [MIXED, SWAAConfig(sliding_window_size=4, keep_first=1, force_fa_decode=[0, 2])])
def test_mixed_training_mask_equals_inference_mask(cfg):
    """A training batch (right-padded, two lengths) through the default backend gives, for prompt and answer
    positions alike, the logits of the inference path (prefill + cached decode) under the reference backend."""
    model = build_tiny_model("llama")
    examples = random_examples(2, prompt_len=28, answer_len=7, seed=1)
    batch = collate(examples, pad_id=0)
    with swaa(model, cfg):
        trained = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    with swaa(model, cfg, backend="reference"):
        for row, ex in enumerate(examples):
            n = len(ex["input_ids"])
            expected = incremental_logits(model, ex["input_ids"], ex["prompt_length"])
            torch.testing.assert_close(trained[row, :n], expected, atol=2e-5, rtol=1e-4)
    # Without prompt lengths the answer rows would be pure SWA: the check above can tell the two apart.
    with swaa(model, cfg):
        plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    p = examples[0]["prompt_length"]
    assert not torch.allclose(plain[0, p:], trained[0, p:], atol=1e-3)


def test_first_training_loss_is_the_inference_loss_on_answer_tokens():
    """train_lora's first logged loss (LoRA starts as a no-op) equals the cross-entropy of the inference-path logits
    on answer tokens only: SWA was active, the mixed mask was used, the prompt was left out of the loss."""
    model = build_tiny_model("qwen3")
    examples = random_examples(3, seed=2)
    with swaa(model, MIXED, backend="reference"):
        rows = [incremental_logits(model, ex["input_ids"], ex["prompt_length"]) for ex in examples]
    expected = answer_loss(rows, examples)
    with torch.no_grad(), swaa(model, SWAAConfig(sliding_window_size=5, keep_first=2, non_sliding_layers=[3])):
        pure_swa = answer_loss([model(torch.tensor([ex["input_ids"]])).logits[0] for ex in examples], examples)
    assert abs(pure_swa.item() - expected.item()) > 1e-3  # the mixed mask changes the answer-token loss
    settings = TrainSettings(max_steps=1, batch_size=3, lora_dropout=0.0)
    result = train_lora(model, examples, MIXED, settings, progress=False)
    assert result.losses[0] == pytest.approx(float(expected), abs=1e-4)


# --------------------------------------------------------------------------- training
def test_loss_decreases_in_a_few_steps():
    model = build_tiny_model("llama")
    examples = random_examples(4, seed=3)
    batch = collate(examples)

    def eval_loss():
        with torch.no_grad(), swaa(model, MIXED):
            return float(model(**batch).loss)

    before = eval_loss()
    reports = []
    settings = TrainSettings(max_steps=12, batch_size=4, learning_rate=2e-2, lora_dropout=0.0)
    result = train_lora(model, examples, MIXED, settings, on_progress=reports.append, progress=False)
    after = eval_loss()  # the LoRA layers live in `model` now
    assert after < before - 0.3, (before, after)
    assert len(result.losses) == result.steps == 12
    assert sum(result.losses[-3:]) < sum(result.losses[:3])
    assert [r.step for r in reports] == list(range(1, 13)) and reports[-1].fraction == 1.0
    assert current_config(model) is None and not model.training  # SWAA state and eval mode restored


def test_cancel_stops_training():
    import threading

    model = build_tiny_model("llama")
    cancel = threading.Event()

    def stop_after_two(p):
        if p.step == 2:
            cancel.set()

    result = train_lora(
        model, random_examples(4), MIXED, TrainSettings(max_steps=10), on_progress=stop_after_two, cancel=cancel,
        progress=False,
    )  # fmt: skip
    assert result.steps == 2 and result.stopped_early


def test_gradient_checkpointing_recomputes_swaa_attention_with_equal_gradients():
    """With checkpointing every attention layer runs again in backward (through the registered 'swaa' function,
    mixed mask included) and the LoRA gradients equal those of a plain backward."""
    from peft import get_peft_model

    grads, calls = {}, {}
    for checkpointing in (False, True):
        model = build_tiny_model("llama")
        torch.manual_seed(0)
        peft_model = get_peft_model(model, lora_config(TrainSettings(lora_dropout=0.0)))
        for p in peft_model.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.1)  # B starts at zero: make every LoRA weight matter
        count = [0]
        for module in attention_modules(model):
            module.register_forward_hook(lambda *a, c=count: c.__setitem__(0, c[0] + 1))
        batch = collate(random_examples(2, seed=4))
        with swaa(model, MIXED), _training_mode(model, checkpointing):
            peft_model.train()
            peft_model(**batch).loss.backward()
        calls[checkpointing] = count[0]
        grads[checkpointing] = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert calls[False] == 4 and calls[True] == 8
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, atol=1e-6, rtol=1e-5)


def test_settings_and_data_errors_are_clear():
    model = build_tiny_model("llama")
    with pytest.raises(DistillDataError, match="No training examples"):
        train_lora(model, [], MIXED, progress=False)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        TrainSettings(learning_rate=0).check()
    with pytest.raises(ValueError, match="target_modules is empty"):
        TrainSettings(target_modules=[]).check()
    with pytest.raises(ValueError, match="names layer"):
        train_lora(model, random_examples(1), SWAAConfig(sliding_window_size=4, non_sliding_layers=[9]), progress=False)


def test_build_examples_labels_only_the_answer():
    tok = build_word_tokenizer()
    records = [
        {"prompt": "w1 w2 w3 what is the code ?", "response": "w7 w8 .", "answer_prefix": "the code is"},
        {"prompt": "w4 w5", "response": "w6", "finished": False},
        {"prompt": "w9 " * 40, "response": "w1"},
    ]
    examples, skipped = build_examples(records, tok, max_length=30)
    assert skipped == 1 and len(examples) == 2
    first = examples[0]
    answer = [t for t, lab in zip(first["input_ids"], first["labels"], strict=True) if lab != IGNORE]
    assert answer == tok.convert_tokens_to_ids(["w7", "w8", ".", "<eos>"])  # finished by default: learns to stop
    assert tok.decode(first["input_ids"][: first["prompt_length"]]).endswith("<|assistant|> the code is")
    assert first["labels"][: first["prompt_length"]] == [IGNORE] * first["prompt_length"]
    second = examples[1]
    assert second["input_ids"][second["prompt_length"] :] == tok.convert_tokens_to_ids(["w6"])  # cut short: no EOS


# --------------------------------------------------------------------------- adapters
def trained_adapter(tmp_path, cfg):
    model = build_tiny_model("qwen2")
    settings = TrainSettings(max_steps=4, batch_size=2, learning_rate=5e-2, lora_dropout=0.0)
    result = train_lora(model, random_examples(4), cfg, settings, progress=False)
    path = save_adapter(result.model, tmp_path / "adapter", cfg, base_model="tiny/qwen2", training=result.summary())
    return model, path


def test_adapter_round_trips_config_and_weights(tmp_path):
    cfg = SWAAConfig(sliding_window_size=6, keep_first=3, force_fa_decode=[0, 1], non_sliding_layers=[2])
    trained, path = trained_adapter(tmp_path, cfg)
    x = torch.tensor([random_examples(1, seed=9)[0]["input_ids"]])
    with torch.no_grad(), swaa(trained, cfg):
        expected = trained(x).logits
    fresh = build_tiny_model("qwen2")
    with torch.no_grad():
        base_logits = fresh(x).logits
    model, loaded_cfg = load_adapter(fresh, path)
    assert loaded_cfg == cfg
    with torch.no_grad():
        apply_swaa(model, loaded_cfg)
        got = model(x).logits
        remove_swaa(model)
        torch.testing.assert_close(got, expected)
        assert not torch.allclose(model(x).logits, base_logits, atol=1e-3)  # the adapter changed the model

    merged, merged_cfg = load_adapter(build_tiny_model("qwen2"), path, merge=True)
    assert merged_cfg == cfg and type(merged).__name__ == "Qwen2ForCausalLM"
    with torch.no_grad(), swaa(merged, merged_cfg):
        torch.testing.assert_close(merged(x).logits, expected, atol=1e-5, rtol=1e-4)


def test_adapter_folder_is_upstream_compatible_and_portable(tmp_path):
    _, path = trained_adapter(tmp_path, MIXED)
    [(cfg, models)] = load_upstream_settings(path / "swaa_config.json")
    assert cfg == MIXED and models == ["tiny/qwen2"]
    assert json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny/qwen2"
    info = read_adapter_info(path)
    assert info.training["steps"] == 4 and len(info.training["losses"]) == 4
    assert "SWA 5 + 2 sinks" in (path / "README.md").read_text()
    (tmp_path / "not-an-adapter").mkdir()
    [(found, found_info)] = find_adapters(tmp_path)
    assert found == path and found_info.swaa_config == MIXED


def test_adapter_without_swaa_file_and_bad_paths(tmp_path):
    _, path = trained_adapter(tmp_path, MIXED)
    (path / "swaa_config.json").unlink()
    model, cfg = load_adapter(build_tiny_model("qwen2"), path)
    assert cfg is None and hasattr(model, "peft_config")
    with pytest.raises(AdapterError, match="not a LoRA adapter folder"):
        load_adapter(build_tiny_model("qwen2"), tmp_path)
    with pytest.raises(AdapterError, match="neither a local adapter folder nor a Hub id"):
        load_adapter(build_tiny_model("qwen2"), tmp_path / "missing" / "deeper")
    (path / "swaa_config.json").write_text('{"swaa_config": {"sliding_window": 3}}')
    with pytest.raises(AdapterError, match="unreadable.*Unknown SWAA config field"):
        read_adapter_info(path)


def test_adapter_for_another_layer_count_is_refused(tmp_path):
    cfg = SWAAConfig(sliding_window_size=4, non_sliding_layers=[3])
    _, path = trained_adapter(tmp_path, cfg)
    with pytest.raises(ValueError, match="names layer"):
        load_adapter(build_tiny_model("qwen2", layers=2), path)


# --------------------------------------------------------------------------- the pipeline and the CLI
def test_pipeline_distils_evaluates_trains_and_saves(tmp_path):
    """End to end through the real task builder and runner: the saved folder holds what the report says."""
    from swaa_core.train.distill import load_jsonl

    loaded = tiny_loaded_llama()
    cfg = SWAAConfig(sliding_window_size=8, keep_first=2, force_fa_decode=True)
    phases = []
    settings = TrainSettings(max_steps=3, learning_rate=1e-2, lora_dropout=0.0)
    report = finetune_pipeline(
        loaded, cfg, tmp_path / "out", samples=3, length_tokens=48, keep="all", max_new_tokens=4, settings=settings,
        eval_samples=2, on_progress=lambda p: phases.append(p.phase), progress=False,
    )  # fmt: skip
    assert phases[:3] == ["distill"] * 3 and phases.count("eval") == 4 and phases.count("train") == 3
    assert report.records == report.examples == 3 and report.train.steps == 3
    assert report.before.samples == report.after.samples == 2 and report.before.errors == report.after.errors == 0
    records = load_jsonl(report.distill_path)
    assert len(records) == 3 and all(r["task"] == "needle" and r["answer"] for r in records)
    info = read_adapter_info(report.adapter_path)
    assert info.swaa_config == cfg and info.base_models == ["tiny/llama"]
    assert info.training["eval_before"]["samples"] == 2 and info.training["losses"] == pytest.approx(
        report.train.losses, abs=1e-4
    )


def test_pipeline_refuses_full_attention(tmp_path):
    with pytest.raises(ValueError, match="needs a sliding config"):
        finetune_pipeline(tiny_loaded_llama(), SWAAConfig(), tmp_path)


def test_cli_finetune_help_teaches():
    from swaa_core.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = sub.choices["finetune"].format_help()
    for words in ("self-distillation", "mixed mask", "swaa_config.json", "--eval-samples", "examples:", "--recipe"):
        assert words in text
    assert "judge" in sub.choices["distill"].format_help()


def test_cli_distill_then_finetune(tmp_path, monkeypatch, capsys):
    """`swaa distill` writes JSONL, `swaa finetune --data` trains on it and saves an adapter for the recipe."""
    import swaa_core
    from swaa_core.cli import main

    loaded = tiny_loaded_llama()
    monkeypatch.setattr(swaa_core, "load_model", lambda *a, **k: loaded)
    data = tmp_path / "d.jsonl"
    assert main(["distill", "--samples", "2", "--length", "80", "--max-new-tokens", "3", "--keep", "all",
                 "--out", str(data), "-q"]) == 0  # fmt: skip
    assert "2 answers with full attention" in capsys.readouterr().out
    out = tmp_path / "adapter"
    args = ["finetune", "--data", str(data), "--recipe", "swa-sinks-fa-decode", "--window", "8", "--sinks", "2",
            "--steps", "2", "--out", str(out), "-q"]  # fmt: skip
    assert main(args) == 1  # the random model's answers are all wrong: nothing to train on by default
    assert "No training data left: 2 of 2" in capsys.readouterr().err
    assert main([*args, "--keep", "all"]) == 0
    printed = capsys.readouterr().out
    assert "train: 2 steps" in printed and "adapter saved" in printed
    assert read_adapter_info(out).swaa_config == SWAAConfig(sliding_window_size=8, keep_first=2, force_fa_decode=True)
    assert main(["finetune", "--data", str(data), "--recipe", "full", "--out", str(tmp_path / "full"), "-q"]) == 1
    assert "full attention" in capsys.readouterr().err
    assert main([*args, "--keep", "all"]) == 1  # the same --out again: the first adapter is kept, not replaced
    assert "already holds an earlier run's adapter" in capsys.readouterr().err


def test_cli_finetune_takes_dtype_and_backend_like_the_other_commands(tmp_path, monkeypatch):
    """--dtype reaches the loader and --backend the attention the adapter is trained under."""
    import swaa_core
    import swaa_core.train.lora as lora
    from swaa_core.cli import main

    loaded, loads, backends = tiny_loaded_llama(), [], []
    monkeypatch.setattr(swaa_core, "load_model", lambda *a, **k: loads.append(k) or loaded)
    real_swaa = lora.swaa

    def spy(model, config, *, backend="auto"):
        backends.append(backend)
        return real_swaa(model, config, backend=backend)

    monkeypatch.setattr(lora, "swaa", spy)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "w1 w2 w3 w4 w5 w6", "response": "w7 w8"}) + "\n", encoding="utf-8")
    argv = ["finetune", "--data", str(data), "--recipe", "swa", "--window", "4", "--steps", "1", "--keep", "all",
            "--dtype", "float32", "--backend", "reference", "--out", str(tmp_path / "a"), "-q"]  # fmt: skip
    assert main(argv) == 0
    assert loads[0]["dtype"] == "float32" and backends == ["reference"]


def test_train_never_imports_the_cli():
    """Imports go downward: the CLI calls training, never the other way round (lazy imports included)."""
    import ast
    from pathlib import Path

    import swaa_core.train

    for path in Path(swaa_core.train.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                targets = ["." * node.level + (node.module or "")]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                assert not target.startswith(("..cli", "swaa_core.cli")), f"{path.name} imports {target}"
