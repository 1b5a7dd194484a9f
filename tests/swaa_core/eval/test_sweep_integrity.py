"""Sweeps, resumes and merges never mix or lose a result: each test compares a sweep's file or table with an
independent reference (a fresh run into a new file, a hand count). The faults these tests once caught: cells keyed by
the model's name alone (a folder saved over, an adapter loaded in place), a retried error left in the table, two
writers on one file, NumPy seeds keyed apart from ints."""

from __future__ import annotations

import copy
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from helpers.tiny_models import build_tiny_model, build_tiny_tokenizer

import swaa_core.eval.sweep as sweep_module
from swaa_core import SWAAConfig
from swaa_core.eval.results import load_results, summarize
from swaa_core.eval.sweep import SweepSpec, merge_parts, part_path, run_sweep
from swaa_core.runtime.jsonl import read_jsonl


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def tiny_loaded(tok, seed=4):
    model = build_tiny_model("llama", layers=2, vocab_size=len(tok), seed=seed)
    return SimpleNamespace(model=model, tokenizer=tok, lock=threading.Lock(), info=SimpleNamespace(name="tiny-llama"))


def spec(**kw) -> SweepSpec:
    base = dict(configs={"swa": SWAAConfig(sliding_window_size=16)}, lengths=[200], depths=[0.2, 0.8],
                task="needle", task_kwargs={"digits": 3}, max_new_tokens=4, score_logprob=False, timing_tokens=4)  # fmt: skip
    base.update(kw)
    return SweepSpec(**base)


def test_local_model_folder_saved_over_runs_again_and_the_same_weights_resume(tok, tmp_path):
    """A folder saved over with other weights is another model under the same name: its cells run again (their
    answers are a fresh run's); the same weights loaded again resume (nothing runs)."""
    from swaa_core import load_model

    folder, out = tmp_path / "model", tmp_path / "out.jsonl"
    for seed in (1, 7):
        build_tiny_model("llama", layers=2, vocab_size=len(tok), seed=seed).save_pretrained(folder)
        tok.save_pretrained(folder)
        loaded = load_model(str(folder), device="cpu")
        df = run_sweep(loaded, spec(), out, progress=False)
    fresh = run_sweep(loaded, spec(), tmp_path / "fresh.jsonl", progress=False)
    assert df["output_text"].tolist() == fresh["output_text"].tolist()
    ran = []
    run_sweep(load_model(str(folder), device="cpu"), spec(), out, progress=False, on_result=ran.append)
    assert ran == []


def test_an_adapter_attached_in_place_runs_its_cells_again(tok, tmp_path):
    """load_adapter changes the model in place (documented): the weights fingerprint in the cell ids tells the two
    models apart, so the adapter's cells run and answer as a fresh run does."""
    from peft import LoraConfig, get_peft_model

    from swaa_core.train import load_adapter

    loaded = tiny_loaded(tok)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(copy.deepcopy(loaded.model), lora).save_pretrained(tmp_path / "adapter")
    out = tmp_path / "out.jsonl"
    run_sweep(loaded, spec(), out, progress=False)
    load_adapter(loaded.model, tmp_path / "adapter")
    df = run_sweep(loaded, spec(), out, progress=False)
    fresh = run_sweep(loaded, spec(), tmp_path / "fresh.jsonl", progress=False)
    assert df["output_text"].tolist() == fresh["output_text"].tolist()


def test_a_retried_error_gives_way_to_its_new_row(tok, tmp_path, monkeypatch):
    """A transient failure (an error row, as run_one reports OOM), then --retry-errors: the cell succeeds, and the
    table (returned, and loaded from the file) holds its new row only, so nothing reports an error."""
    loaded, out = tiny_loaded(tok), tmp_path / "out.jsonl"
    real, calls = sweep_module.run_one, [0]

    def flaky(*a, **k):
        calls[0] += 1
        result = real(*a, **k)
        if calls[0] == 2:
            result.error = "CUDA out of memory (transient)"
        return result

    monkeypatch.setattr(sweep_module, "run_one", flaky)
    run_sweep(loaded, spec(), out, progress=False)
    monkeypatch.setattr(sweep_module, "run_one", real)
    df = run_sweep(loaded, spec(), out, progress=False, retry_errors=True)
    assert len(df) == df["cell_id"].nunique() == spec().total_cells
    assert summarize(df, by=("label",))["errors"].sum() == 0
    assert len(read_jsonl(out)) == spec().total_cells + 1  # the error row stays in the file, as a record
    loaded_back = load_results(out)
    assert loaded_back["error"].isna().all() and len(loaded_back) == spec().total_cells


def test_a_second_sweep_on_a_file_being_written_is_refused_by_name(tok, tmp_path):
    """A second sweep (or a merge of leftover parts) on the output of a running sweep is refused, naming the file:
    it would run the same cells again, and its merge would replace the file under the first one's appends."""
    loaded, out = tiny_loaded(tok), tmp_path / "out.jsonl"
    leftover = tmp_path / "leftover.jsonl"
    run_sweep(loaded, spec(seeds=[5]), leftover, progress=False)
    refusals, finished = [], []

    def meanwhile(row):
        finished.append(row["cell_id"])
        if len(finished) > 1:
            return
        part_path(out, 1).write_text(leftover.read_text())
        for attempt in (lambda: run_sweep(loaded, spec(), out, progress=False), lambda: merge_parts(out)):
            thread = threading.Thread(target=lambda a=attempt: refusals.append(_raised(a)))
            thread.start()
            thread.join()

    df = run_sweep(loaded, spec(), out, progress=False, on_result=meanwhile)
    assert len(refusals) == 2 and all("Another sweep is writing" in r and str(out) in r for r in refusals)
    rows = read_jsonl(out)  # the leftover part merged at the end, after this sweep's own rows
    assert [r["cell_id"] for r in rows[: len(finished)]] == finished
    assert len(rows) == spec().total_cells + spec(seeds=[5]).total_cells
    assert len(df) == df["cell_id"].nunique() == spec().total_cells
    ran = []
    run_sweep(loaded, spec(), out, progress=False, on_result=ran.append)  # the lock was released
    assert ran == []


def _raised(action) -> str:
    try:
        action()
    except ValueError as e:
        return str(e)
    return ""


def test_numpy_seeds_are_the_same_cells_as_int_seeds(tok, tmp_path):
    """NumPy integer seeds and lengths are the same cells as plain ints (a resume with ints runs nothing) and are
    recorded as numbers; floats and booleans are refused by name."""
    loaded, out = tiny_loaded(tok), tmp_path / "out.jsonl"
    run_sweep(loaded, spec(seeds=list(np.arange(1))), out, progress=False)
    ran = []
    run_sweep(loaded, spec(seeds=[0]), out, progress=False, on_result=ran.append)
    assert ran == []
    assert all(r["seed"] == 0 for r in read_jsonl(out))
    with pytest.raises(ValueError, match="seeds must be whole numbers"):
        spec(seeds=[0.5])
    with pytest.raises(ValueError, match="lengths must be positive whole numbers"):
        spec(lengths=[True])
    assert spec(lengths=list(np.array([200])), seeds=[np.int32(3)]).seeds == [3]


def test_the_weights_fingerprint_sees_one_changed_bit_and_no_copy():
    """The fingerprint changes with one weight's lowest bit and with an added adapter, not with a deep copy; the
    accelerator's checksum (run here on CPU tensors) is exact: swapped words differ, and chunking does not matter."""
    import torch

    from swaa_core.runtime import stamp

    model = build_tiny_model("llama", layers=2)
    before = stamp.weights_fingerprint(model)
    assert stamp.weights_fingerprint(copy.deepcopy(model)) == before
    with torch.no_grad():
        weight = model.model.layers[1].mlp.up_proj.weight
        weight.view(-1).view(torch.int32)[17] ^= 1
    assert stamp.weights_fingerprint(model) != before
    words = torch.arange(1000, dtype=torch.int32)
    swapped = words.clone()
    swapped[[3, 900]] = swapped[[900, 3]]
    assert stamp.device_checksum(words.view(torch.uint8)) != stamp.device_checksum(swapped.view(torch.uint8))
    odd = torch.arange(1001, dtype=torch.uint8)
    whole = stamp.device_checksum(odd)
    stamp._CHUNK, saved = 7, stamp._CHUNK
    try:
        assert stamp.device_checksum(odd) == whole
        assert whole == (int(odd.long().sum()), int((odd.long() * (torch.arange(1001) % 65521 + 1)).sum()))
    finally:
        stamp._CHUNK = saved


def test_grids_that_would_repeat_one_sample_are_refused_by_name(tok):
    """Depths of a task without a needle, several seeds of a task that reads the user's text: identical samples that
    a table would count as several; refused by the library as by the CLI. Without depths, a needle-less task's grid
    has one cell per seed."""
    from swaa_core.eval.tasks import make_samples

    assert spec(task="common_words", task_kwargs={}, depths=None).depths == [None]
    with pytest.raises(ValueError, match="common_words hides no needle"):
        spec(task="common_words", task_kwargs={}, depths=[0.1, 0.9])
    with pytest.raises(ValueError, match="common_words hides no needle"):
        make_samples("cwe", tok, length_tokens=200, seeds=[0], depths=[0.5])
    with pytest.raises(ValueError, match="doc_qa reads your own text"):
        make_samples("doc_qa", tok, length_tokens=None, seeds=[0, 1], document="Some text.", question="Which?")
    assert len(make_samples("common_words", tok, length_tokens=200, seeds=[0, 1])) == 2


def test_a_padded_tokenizer_call_between_two_sweeps_changes_no_cell(tok, tmp_path):
    """The tokenizer's fingerprint leaves out the padding and truncation state its last call left behind (a user's
    own tok(batch, padding=True) between two sweeps must not make every cell run again)."""
    loaded, out = tiny_loaded(tok), tmp_path / "out.jsonl"
    run_sweep(loaded, spec(), out, progress=False)
    tok(["a b", "a b c d"], padding=True, truncation=True, max_length=3)
    ran = []
    run_sweep(loaded, spec(), out, progress=False, on_result=ran.append)
    assert ran == []


def test_rows_hold_exactly_the_fields_group_by_may_name(tok, tmp_path):
    """sweep.row_fields() (what `swaa sweep --group-by` accepts) is every key of a written row, no more."""
    from swaa_core.eval.sweep import row_fields

    run_sweep(tiny_loaded(tok), spec(), tmp_path / "out.jsonl", progress=False)
    assert {frozenset(r) for r in read_jsonl(tmp_path / "out.jsonl")} == {row_fields()}
