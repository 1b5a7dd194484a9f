"""Tasks: the answer is really in the prompt, at the requested depth, and the prompt has the requested token count
(checked by tokenizing the prompt again, with a BPE tokenizer and with the embedded model's own)."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from helpers.tiny_models import build_tiny_tokenizer

from swaa_core.eval.tasks import TASK_KINDS, TaskError, TaskSample, load_dataset_records, make_task

HAYSTACK_KINDS = ("passkey", "needle", "multi_key", "multi_value", "variable_tracking")


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer(vocab_size=400)


def n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def haystack_depth(tok, sample: TaskSample) -> float:
    """Tokens of filler before the needle over all filler tokens, measured from the prompt's own layout:
    instructions, blank line, haystack, blank line, question."""
    first, last = sample.prompt.index("\n\n") + 2, sample.prompt.rindex("\n\n")
    start, end = sample.needle_char_span
    before = n_tokens(tok, sample.prompt[first:start].rstrip())
    after = n_tokens(tok, sample.prompt[end:last].strip())
    return before / (before + after)


@pytest.mark.parametrize("kind", HAYSTACK_KINDS + ("common_words",))
@pytest.mark.parametrize("length", [500, 1024, 3000])
def test_prompt_has_the_requested_token_count(tok, kind, length):
    sample = make_task(kind, tok, length_tokens=length, depth=0.5, seed=7)
    real = n_tokens(tok, sample.prompt)
    assert abs(real - length) <= max(4, length // 200), f"{kind}: asked {length} tokens, got {real}"
    assert sample.context_tokens == real


@pytest.mark.parametrize("kind", HAYSTACK_KINDS)
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_needle_sits_at_the_requested_depth(tok, kind, depth):
    sample = make_task(kind, tok, length_tokens=2048, depth=depth, seed=3)
    start, end = sample.needle_char_span
    first_answer = sample.references[0]
    assert first_answer in sample.prompt[start:end]
    if kind in ("passkey", "needle"):  # a single insert: the filler around it is all haystack
        assert haystack_depth(tok, sample) == pytest.approx(depth, abs=0.01)
    assert sample.meta["actual_depth"] == pytest.approx(depth, abs=0.01)


def test_passkey_answer_appears_only_in_the_needle(tok):
    sample = make_task("passkey", tok, length_tokens=1024, depth=0.3, seed=11, digits=6)
    assert re.fullmatch(r"\d{6}", sample.answer)
    start, end = sample.needle_char_span
    outside = sample.prompt[:start] + sample.prompt[end:]
    assert sample.answer not in outside
    assert sample.question in sample.prompt and sample.prompt.rstrip().endswith(sample.question)


def test_same_seed_same_sample_other_seed_other_sample(tok):
    a = make_task("needle", tok, length_tokens=800, depth=0.5, seed=5)
    b = make_task("needle", tok, length_tokens=800, depth=0.5, seed=5)
    c = make_task("needle", tok, length_tokens=800, depth=0.5, seed=6)
    assert a.to_dict() == b.to_dict()
    assert a.answer != c.answer and a.prompt != c.prompt


def test_multi_key_asks_for_one_key_among_distractors(tok):
    sample = make_task("multi_key", tok, length_tokens=1500, depth=0.4, seed=2, num_keys=4)
    found = dict(re.findall(r"special magic numbers for ([\w-]+) is: (\d+)\.", sample.prompt))
    assert len(found) == 4
    asked = re.search(r"magic number for ([\w-]+) mentioned", sample.question).group(1)
    assert found[asked] == sample.answer
    assert sum(v == sample.answer for v in found.values()) == 1


def test_multi_value_lists_every_value_of_the_key(tok):
    sample = make_task("multi_value", tok, length_tokens=1500, depth=0.6, seed=4, num_values=5)
    key = sample.meta["key"]
    values = re.findall(rf"special magic numbers for {re.escape(key)} is: (\d+)\.", sample.prompt)
    assert sorted(values) == sorted(sample.answer) and len(set(values)) == 5
    assert sample.match_mode == "all"


def test_variable_tracking_answer_is_the_chain_that_holds_the_value(tok):
    sample = make_task("variable_tracking", tok, length_tokens=1200, depth=0.2, seed=9, num_hops=3)
    value = re.search(r"assigned the value (\d+)", sample.question).group(1)
    holds = set()
    for name, rhs in re.findall(r"VAR (\w+) = (VAR \w+|\d+)\.", sample.prompt):
        if rhs == value or (rhs.startswith("VAR ") and rhs[4:] in holds):
            holds.add(name)
    assert holds == set(sample.answer) and len(holds) == 4


def test_common_words_answer_is_the_most_frequent_words(tok):
    sample = make_task("common_words", tok, length_tokens=1500, seed=1, num_common=5)
    counts = Counter(re.findall(r"\d+\. ([a-z]+)", sample.prompt))
    common = set(sample.answer)
    assert len(common) == 5
    assert min(counts[w] for w in common) > max(c for w, c in counts.items() if w not in common)


def test_doc_qa_wraps_the_document_and_finds_the_answer(tok):
    doc = "The meeting is on Tuesday. " * 40 + "The treasurer is Ada Lovelace. " + "Lunch is at noon. " * 40
    sample = make_task(
        "doc_qa", tok, length_tokens=None, document=doc, question="Who is the treasurer?", answer="Ada Lovelace"
    )
    start, end = sample.needle_char_span
    assert sample.prompt[start:end] == "Ada Lovelace"
    at = doc.index("Ada Lovelace")
    before, after = n_tokens(tok, doc[:at].rstrip()), n_tokens(tok, doc[at + len("Ada Lovelace") :].strip())
    assert sample.depth == pytest.approx(before / (before + after), abs=0.01)
    short = make_task("doc_qa", tok, length_tokens=120, document=doc, question="Who is the treasurer?")
    assert short.meta["truncated"] and n_tokens(tok, short.prompt) <= 125


@pytest.mark.parametrize(
    "kind, kwargs, message",
    [
        ("haystack", {"length_tokens": 500}, "Unknown task"),
        ("passkey", {"length_tokens": 10}, "too small"),
        ("passkey", {"length_tokens": 500, "depth": 1.5}, "between 0"),
        ("passkey", {"length_tokens": 0}, "positive"),
        ("multi_key", {"length_tokens": 500, "num_keys": 1}, "num_keys"),
        ("doc_qa", {"length_tokens": None, "question": "Q?"}, "needs a document"),
        ("common_words", {"length_tokens": 500, "freq_rare": 0}, "freq_rare"),  # once a ZeroDivisionError
        ("common_words", {"length_tokens": 500, "freq_common": 1}, "freq_common"),
    ],
)
def test_bad_requests_say_what_is_wrong(tok, kind, kwargs, message):
    with pytest.raises(TaskError, match=message):
        make_task(kind, tok, **kwargs)


# Values each builder refuses, with the builder's words (hand-written: the builders' messages as documented).
BAD_OPTIONS = [
    ("passkey", "digits", 0, "digits must be between 1 and 32, got 0"),
    ("needle", "digits", 33, "digits must be between 1 and 32, got 33"),
    ("needle", "haystack", "   ", "The haystack text is empty"),
    ("multi_key", "num_keys", 1, "multi_key needs num_keys >= 2"),
    ("multi_value", "num_values", -3, "multi_value needs num_values >= 2, got -3"),
    ("variable_tracking", "num_hops", 0, "num_hops must be at least 1, got 0"),
    ("common_words", "num_common", -1, "num_common must be at least 1, got -1"),
    ("common_words", "freq_common", 1, "freq_common (how often each common word appears) must be at least 2"),
    ("common_words", "freq_rare", 0, "freq_rare (how often each other word appears) must be at least 1, got 0"),
    ("passkey", "digits", 4.5, "option digits takes a whole number, got 4.5"),
]


@pytest.mark.parametrize("kind, name, value, message", BAD_OPTIONS)
def test_task_options_are_checked_without_a_tokenizer_in_the_builders_words(tok, kind, name, value, message):
    """check_task_options (what `swaa --task-arg` runs before a model loads) refuses what the builder refuses, with
    the builder's own message."""
    from swaa_core.eval.tasks.registry import check_task_options

    with pytest.raises(TaskError) as built:
        make_task(kind, tok, length_tokens=600, depth=0.5, **{name: value})
    assert message in str(built.value)
    with pytest.raises(TaskError) as checked:
        check_task_options(kind, {name: value})
    assert str(checked.value) == str(built.value)


# Options each valid alone that no sample can meet (the builders once looped forever drawing distinct values, or
# asked for more common words than exist); bounds from the word lists and number ranges, counted by hand.
UNMEETABLE = [
    ("multi_value", {"digits": 1, "num_values": 11}, "11 distinct 1-digit numbers and there are only 10"),
    ("multi_value", {"digits": 2, "num_values": 91}, "91 distinct 2-digit numbers and there are only 90"),
    ("multi_value", {"num_values": 9 * 10**6 + 1}, "there are only 9000000"),  # the default 7 digits
    ("multi_key", {"num_keys": 845 * 6098 + 1}, "num_keys must be at most 5,152,810"),
    ("variable_tracking", {"num_hops": 26**5}, "num_hops must be at most 11,881,375"),
    ("common_words", {"num_common": 6099}, "num_common must be at most 6,098"),
    ("common_words", {"freq_common": 3, "freq_rare": 3}, "freq_common (3) must be above freq_rare (3)"),
]


@pytest.mark.parametrize("kind, options, message", UNMEETABLE)
def test_options_no_sample_can_meet_are_refused_not_hung(tok, kind, options, message):
    """Refused up front (check_task_options) and by the builder, in the same words, within seconds."""
    import signal

    from swaa_core.eval.tasks.registry import check_task_options

    def hung(*_):
        raise TimeoutError(f"{kind} {options} did not return in 20 s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        with pytest.raises(TaskError) as checked:
            check_task_options(kind, options)
        with pytest.raises(TaskError) as built:
            make_task(kind, tok, length_tokens=600, depth=0.5, **options)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert message in str(checked.value)
    assert str(checked.value) == str(built.value)


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_task_options_that_a_builder_takes_pass_the_check(kind):
    from swaa_core.eval.tasks.registry import TASK_OPTIONS, check_task_options

    good = {"digits": 3, "haystack": "Some filler. More filler.", "num_keys": 3, "num_values": 3, "num_hops": 2,
            "num_common": 5, "freq_common": 4, "freq_rare": 1}  # fmt: skip
    check_task_options(kind, {k: v for k, v in good.items() if k in TASK_OPTIONS[kind]})


def test_every_kind_is_buildable(tok):
    for kind in TASK_KINDS:
        extra = {"document": "Some text. " * 30, "question": "What?"} if kind == "doc_qa" else {}
        assert make_task(kind, tok, length_tokens=600, seed=0, **extra).prompt


# ---------------------------------------------------------------------- datasets in the upstream format

RECORDS = [
    {
        "prompt": "Context: the sky is green.\n\nQuestion: what colour is the sky?",
        "question": "Sky colour?",
        "answer": "green",
        "id": 1,
    },
    {"prompt": "Who wrote it? Ada did.", "question": "Who wrote it?", "answer": ["Ada", "Ada Lovelace"], "id": 2},
]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_dataset_files_load_as_samples(tmp_path, tok, fmt):
    path = tmp_path / f"eval.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    elif fmt == "json":
        path.write_text(json.dumps(RECORDS))
    else:  # a parquet column holds one type: every answer is a list there
        pd.DataFrame([{**r, "answer": list(np.atleast_1d(r["answer"]))} for r in RECORDS]).to_parquet(path)
    samples = load_dataset_records(path, tokenizer=tok)
    assert [s.prompt for s in samples] == [r["prompt"] for r in RECORDS]
    assert samples[0].references == ["green"] and samples[1].answer == ["Ada", "Ada Lovelace"]
    assert samples[0].question == "Sky colour?" and samples[0].meta["id"] == 1
    assert samples[1].context_tokens == n_tokens(tok, RECORDS[1]["prompt"])


def test_dataset_folder_split_limit_and_context_records(tmp_path):
    (tmp_path / "data").mkdir()
    pd.DataFrame(RECORDS[:1]).to_parquet(tmp_path / "data" / "test-00000.parquet")
    rows = [{"context": "Paris is in France.", "question": "Where is Paris?", "answer": "France"}]
    (tmp_path / "data" / "validation.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert len(load_dataset_records(tmp_path, split="test", limit=1)) == 1
    (sample,) = load_dataset_records(tmp_path, split="validation")
    assert sample.prompt == "Context: Paris is in France.\n\nQuestion: Where is Paris?"
    with pytest.raises(TaskError, match="No file of split 'train'"):
        load_dataset_records(tmp_path, split="train")


def test_dataset_errors_are_explained(tmp_path, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input": "x", "answer": "y"}) + "\n")
    with pytest.raises(TaskError, match="has no 'prompt'"):
        load_dataset_records(bad)
    with pytest.raises(TaskError, match="neither a local file"):
        load_dataset_records(tmp_path / "missing.parquet")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TaskError, match="Cannot fetch Hub dataset 'someone/longmemeval'"):
        load_dataset_records("someone/longmemeval")


# ---------------------------------------------------------------------- the embedded model's tokenizer


@pytest.mark.embedded
def test_sizes_and_depths_hold_for_the_embedded_tokenizer():
    from swaa_core import load_model

    etok = load_model().tokenizer
    for length in (1024, 2048):
        for depth in (0.1, 0.5, 0.9):
            sample = make_task("passkey", etok, length_tokens=length, depth=depth, seed=1)
            assert abs(n_tokens(etok, sample.prompt) - length) <= max(4, length // 200)
            assert haystack_depth(etok, sample) == pytest.approx(depth, abs=0.01)
