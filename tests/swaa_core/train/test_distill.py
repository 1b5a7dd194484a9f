"""Self-distillation data: judging against references, filtering, JSONL files, full-attention teacher answers."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.tiny_models import build_tiny_model, build_word_tokenizer

from swaa_core import SWAAConfig, apply_swaa
from swaa_core.engine.patch import current_config
from swaa_core.runtime.jsonl import save_jsonl
from swaa_core.train.distill import (
    DistillDataError,
    distill,
    encode_prompt,
    filter_records,
    generate_answer,
    judge,
    load_jsonl,
)


# --------------------------------------------------------------------------- judging and filtering
@pytest.mark.parametrize(
    ("response", "reference", "mode", "verdict"),
    [
        ("The code is 4821.", "4821", "any", True),
        (" 4821", "4821", "any", True),
        ("The code is 48210.", "4821", "any", False),  # a longer number is a different number
        ("The code is 482.", "4821", "any", False),
        ("the capital is PARIS!", "Paris", "any", True),
        ("New  York,  of course", "new york", "any", True),
        ("It is York.", "New York", "any", False),
        ("values: 12, 34", ["12", "34", "56"], "all", False),
        ("values: 12, 34 and 56", ["12", "34", "56"], "all", True),
        ("I think 34", ["12", "34"], "any", True),
        ("anything", None, "any", None),
        ("anything", "", "any", None),
        ("anything", [], "all", None),
    ],
)
def test_judge(response, reference, mode, verdict):
    assert judge(response, reference, mode) is verdict


def test_judge_rejects_unknown_mode():
    with pytest.raises(ValueError, match="'any' or 'all'"):
        judge("x", "x", "most")


RECORDS = [
    {"prompt": "p1", "response": "4821", "answer": "4821", "judge": 1},
    {"prompt": "p2", "response": "1234", "answer": "4821", "judge": 0},
    {"prompt": "p3", "response": "free text", "answer": None, "judge": None},
]


@pytest.mark.parametrize(("keep", "prompts"), [("correct", ["p1", "p3"]), ("judged-correct", ["p1"]), ("all", ["p1", "p2", "p3"])])  # fmt: skip
def test_filter_records(keep, prompts):
    assert [r["prompt"] for r in filter_records(RECORDS, keep)] == prompts


def test_filter_records_rejects_unknown_keep():
    with pytest.raises(DistillDataError, match="keep must be one of"):
        filter_records(RECORDS, "best")


# --------------------------------------------------------------------------- files
def test_jsonl_round_trip_and_upstream_layouts(tmp_path):
    path = save_jsonl(RECORDS + [{"instruction": "do it", "output": "done"}], tmp_path / "d" / "data.jsonl")
    loaded = load_jsonl(path)
    assert loaded[:3] == RECORDS
    assert loaded[3]["prompt"] == "do it" and loaded[3]["response"] == "done"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2 is not valid JSON"),
        ('{"prompt": "p"}', "line 2: needs text fields 'prompt' and 'response'.*'response' is missing"),
        ('{"prompt": "p", "response": "  "}', "line 2: 'response' is empty"),
        ("[1, 2]", "line 2: expected a JSON object, got list"),
    ],
)
def test_load_jsonl_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n" + line + "\n")
    with pytest.raises(DistillDataError, match=message):
        load_jsonl(path)


def test_load_jsonl_missing_or_empty(tmp_path):
    with pytest.raises(DistillDataError, match="not found"):
        load_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DistillDataError, match="holds no records"):
        load_jsonl(tmp_path / "empty.jsonl")


# --------------------------------------------------------------------------- the teacher
def test_distill_uses_full_attention_and_filters_wrong_answers():
    """Targets come from the full-attention model even while SWA is applied (which is restored afterwards); a sample
    whose reference the answer contains is kept, a wrong one is dropped, an unjudged one is kept."""
    tok = build_word_tokenizer()
    model = build_tiny_model("llama")
    prompt = " ".join(f"w{i % 80}" for i in range(7, 67))  # 60 tokens: far more than the window below
    model.generation_config.eos_token_id = 2
    full_answer, _ = generate_answer(model, tok, prompt, "the code is", max_new_tokens=6)
    cfg = SWAAConfig(sliding_window_size=3)
    apply_swaa(model, cfg)
    ids = torch.tensor([encode_prompt(tok, prompt, "the code is")])
    swa_answer = tok.decode(model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1] :])
    assert swa_answer != full_answer  # so the check below can tell which attention wrote the targets
    first_word = full_answer.split()[0]
    samples = [
        {"prompt": prompt, "question": "q", "answer": first_word, "answer_prefix": "the code is", "task": "needle"},
        {"prompt": prompt, "answer": "w79 w79 w79 w79", "answer_prefix": "the code is"},
        {"prompt": prompt, "answer": None, "answer_prefix": "the code is"},
    ]
    reports = []
    records = distill(model, tok, samples, max_new_tokens=6, on_progress=reports.append, progress=False)
    assert current_config(model) == cfg
    assert [r["judge"] for r in records] == [1, None]
    assert all(r["response"] == full_answer for r in records)
    assert records[0]["task"] == "needle" and records[0]["question"] == "q"
    assert [r.step for r in reports] == [1, 2, 3] and reports[-1].phase == "distill"
    everything = distill(model, tok, samples, max_new_tokens=6, keep="all", progress=False)
    assert [r["judge"] for r in everything] == [1, 0, None]


def test_generate_answer_stops_at_eos_and_reports_it():
    tok = build_word_tokenizer()
    model = build_tiny_model("llama")
    ids = torch.tensor([encode_prompt(tok, "w1 w2 w3")])
    model.generation_config.eos_token_id = 96  # a token this greedy run never produces
    raw = model.generate(ids, max_new_tokens=5, do_sample=False)[0, ids.shape[1] :].tolist()
    assert 96 not in raw and raw[1] not in raw[:1]
    text, finished = generate_answer(model, tok, "w1 w2 w3", max_new_tokens=5)
    assert not finished and text == tok.decode(raw, skip_special_tokens=True)
    model.generation_config.eos_token_id = raw[1]  # now the second generated token ends the answer
    text, finished = generate_answer(model, tok, "w1 w2 w3", max_new_tokens=5)
    assert finished and text == tok.decode(raw[:1], skip_special_tokens=True)


def test_distill_rejects_empty_input():
    tok, model = build_word_tokenizer(), build_tiny_model("llama")
    with pytest.raises(DistillDataError, match="No samples"):
        distill(model, tok, [], progress=False)
    with pytest.raises(DistillDataError, match="no prompt text"):
        distill(model, tok, [{"prompt": "  "}], progress=False)


def test_upstream_parquet_self_distillation_output_loads_as_is(tmp_path):
    """Upstream's self_distill_data.py writes a Parquet table (question, answer, prompt, response, judge; several
    generations as a list); its sft_swaa.py keeps judge == 1. Our --keep correct does the same after loading."""
    import pandas as pd

    table = pd.DataFrame(
        {
            "question": ["q1", "q2", "q3"],
            "answer": ["4821", "17", "x"],
            "prompt": ["long context 1", "long context 2", "long context 3"],
            "response": ["The code is 4821.", "It is 18.", "x"],
            "judge": [1, 0, None],
        }
    )
    table.to_parquet(tmp_path / "judged.parquet")
    loaded = load_jsonl(tmp_path / "judged.parquet")
    assert [r["prompt"] for r in loaded] == ["long context 1", "long context 2", "long context 3"]
    assert loaded[2]["judge"] is None
    assert [r["prompt"] for r in filter_records(loaded, "judged-correct")] == ["long context 1"]


def test_json_list_conversations_and_several_generations(tmp_path):
    records = [
        {"conversations": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
        {"prompt": "p", "response": ["r1", "r2"], "judge": [1, 0]},
    ]
    (tmp_path / "data.json").write_text(json.dumps(records), encoding="utf-8")
    loaded = load_jsonl(tmp_path / "data.json")
    assert [(r["prompt"], r["response"], r.get("judge")) for r in loaded] == [
        ("u", "a", None),
        ("p", "r1", 1),
        ("p", "r2", 0),
    ]


def test_unreadable_parquet_names_the_file(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DistillDataError, match="bad.parquet is not a readable Parquet file"):
        load_jsonl(tmp_path / "bad.parquet")
