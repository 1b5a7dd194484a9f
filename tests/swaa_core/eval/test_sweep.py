"""Sweeps: every cell once, a rerun skips finished cells (also after a crash mid-line), tidy tables and exports."""

from __future__ import annotations

import json
import threading
from dataclasses import fields
from types import SimpleNamespace

import pandas as pd
import pytest
from helpers.tiny_models import build_tiny_model, build_tiny_tokenizer

from swaa_core import SWAAConfig
from swaa_core.eval.results import export, load_results, summarize
from swaa_core.eval.run_spec import RunSpec
from swaa_core.eval.runner import run_one
from swaa_core.eval.sweep import GRID_FIELDS, SweepSpec, cell_id, finished_cells, run_settings, run_sweep
from swaa_core.eval.tasks import make_task
from swaa_core.runtime.jsonl import read_jsonl


@pytest.fixture(scope="module")
def loaded():
    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", layers=2, vocab_size=len(tok), seed=4)
    return SimpleNamespace(model=model, tokenizer=tok, lock=threading.Lock(), info=SimpleNamespace(name="tiny-llama"))


def spec(**kw) -> SweepSpec:
    base = dict(
        configs={
            "swa": SWAAConfig(sliding_window_size=16),
            "swa+fa": SWAAConfig(sliding_window_size=16, force_fa_decode=True),
        },
        lengths=[200, 300],
        depths=[0.2, 0.8],
        seeds=[0],
        task="needle",
        task_kwargs={"digits": 3},
        max_new_tokens=2,
        score_logprob=False,
    )
    if "run" in kw:  # the run value carries every run setting itself
        del base["max_new_tokens"], base["score_logprob"]
    base.update(kw)
    return SweepSpec(**base)


def lines(path) -> list[str]:
    return [x for x in path.read_text().splitlines() if x.strip()]


def test_full_attention_is_added_and_every_cell_runs_once(loaded, tmp_path):
    s = spec()
    assert list(s.configs)[0] == "Full attention" and s.total_cells == 3 * 2 * 2
    out = tmp_path / "sweep.jsonl"
    df = run_sweep(loaded, s, out, progress=False)
    assert len(lines(out)) == s.total_cells == len(df) == df["cell_id"].nunique()
    assert set(df["label"]) == set(s.configs)
    assert df["error"].isna().all()
    assert sorted(df["length_target"].unique()) == [200, 300] and sorted(df["depth"].unique()) == [0.2, 0.8]
    assert (df["prompt_tokens"] > df["length_target"]).all()  # the chat template wraps the task prompt
    full = df[df["label"] == "Full attention"]
    assert full["config"].isna().all() and full["window"].isna().all()


def test_rows_say_which_mask_kind_their_window_column_sizes(loaded, tmp_path):
    """A chunked config and a sliding window of the same size are two cells apart, each row naming its kind."""
    configs = {
        "chunks": SWAAConfig(sliding_window_size=16, mask_kind="chunked"),
        "swa": SWAAConfig(sliding_window_size=16),
    }
    df = run_sweep(loaded, spec(configs=configs, lengths=[200], depths=[0.5]), tmp_path / "s.jsonl", progress=False)
    rows = df.set_index("label")
    assert (rows.loc["chunks", "mask_kind"], rows.loc["swa", "mask_kind"]) == ("chunked", "sink_window")
    assert rows.loc["chunks", "window"] == rows.loc["swa", "window"] == 16
    assert rows.loc["chunks", "config"]["mask_kind"] == "chunked" and pd.isna(rows.loc["Full attention", "mask_kind"])
    assert df["cell_id"].nunique() == 3


def test_rerun_skips_finished_cells(loaded, tmp_path):
    out = tmp_path / "sweep.jsonl"
    run_sweep(loaded, spec(), out, progress=False)
    before = out.read_text()
    ran = []
    df = run_sweep(loaded, spec(), out, progress=False, on_result=ran.append)
    assert ran == [] and out.read_text() == before and len(df) == 12


def test_interrupted_sweep_resumes_with_only_the_missing_cells(loaded, tmp_path):
    out = tmp_path / "sweep.jsonl"
    run_sweep(loaded, spec(), out, progress=False)
    kept = lines(out)[:5]
    out.write_text("\n".join(kept) + '\n{"cell_id": "cut sho')  # a crash in the middle of a write
    ran = []
    df = run_sweep(loaded, spec(), out, progress=False, on_result=ran.append)
    assert len(ran) == 7
    assert {r["cell_id"] for r in ran}.isdisjoint(json.loads(x)["cell_id"] for x in kept)
    assert len(df) == 12 and df["cell_id"].nunique() == 12


def test_growing_the_grid_runs_only_the_new_cells(loaded, tmp_path):
    out = tmp_path / "sweep.jsonl"
    run_sweep(loaded, spec(seeds=[0]), out, progress=False)
    ran = []
    df = run_sweep(loaded, spec(seeds=[0, 1]), out, progress=False, on_result=ran.append)
    assert len(ran) == 12 and all(r["seed"] == 1 for r in ran) and len(df) == 24


def test_cell_ids_depend_on_what_decides_the_outcome_not_on_labels():
    cfg = SWAAConfig(sliding_window_size=16)
    settings = run_settings(spec())
    base = dict(model="m", config=cfg, length=100, depth=0.5, seed=0, settings=settings)
    assert cell_id(**base) == cell_id(**base)
    assert cell_id(**base) == cell_id(**{**base, "config": SWAAConfig(sliding_window_size=16)})
    changed = [
        {**base, "model": "other"},
        {**base, "config": SWAAConfig(sliding_window_size=32)},
        {**base, "seed": 1},
    ]
    # every setting a row is run under, one at a time
    changed += [{**base, "settings": run_settings(spec(**{k: v}))} for k, v in [
        ("cot", True), ("task_kwargs", {"digits": 4}), ("timing_tokens", 8), ("max_new_tokens", 3),
        ("score_logprob", True), ("static_cache", True), ("task", "passkey"),
    ]]  # fmt: skip
    changed.append({**base, "settings": run_settings(spec(), backend="blocked")})
    assert len({cell_id(**base), *(cell_id(**c) for c in changed)}) == 1 + len(changed)


# A value away from spec()'s for every RunSpec field: a field added to RunSpec without one here fails below.
OTHER_RUN_VALUES = {"max_new_tokens": 3, "cot": True, "system": "Answer briefly.", "backend": "blocked",
                    "warmup": False, "score_logprob": True, "timing_tokens": 8, "decode_path": "fixed"}  # fmt: skip


def test_every_run_setting_and_spec_field_but_the_grid_changes_the_ids():
    # a field added to SweepSpec or RunSpec later (a sampling option) is in the ids without a list to update
    assert set(OTHER_RUN_VALUES) == {f.name for f in fields(RunSpec)}
    assert {f.name for f in fields(SweepSpec)} - GRID_FIELDS == {"task", "task_kwargs", "run"}
    cell = dict(model="m", config=None, length=100, depth=0.5, seed=0)
    variants = [spec(), spec(task="passkey"), spec(task_kwargs={"digits": 4})]
    variants += [spec(**{name: value}) for name, value in OTHER_RUN_VALUES.items()]
    variants.append(spec(run=RunSpec(**{"max_new_tokens": 2, "score_logprob": False, "system": "Answer briefly."})))
    ids = [cell_id(**cell, settings=run_settings(v)) for v in variants]
    assert len(set(ids[:-1])) == len(ids) - 1 and ids[-1] == ids[3 + list(OTHER_RUN_VALUES).index("system")]


def test_ids_written_before_the_run_value_stay_valid():
    """Results files key their rows on these ids: the values below were computed by the SweepSpec that listed
    the run settings itself, before it held a RunSpec."""
    one = spec(configs={"swa": SWAAConfig(sliding_window_size=16)}, task_kwargs={"digits": 3})
    cfg = SWAAConfig(sliding_window_size=16)
    assert cell_id(model="tiny-llama", config=cfg, length=200, depth=0.5, seed=0,
                   settings=run_settings(one)) == "053d38e8a3aeed68"  # fmt: skip
    assert cell_id(model="tiny-llama", config=None, length=200, depth=0.5, seed=0,
                   settings=run_settings(one, backend="blocked")) == "2e4e424b9f5b17d2"  # fmt: skip


def test_the_run_value_is_given_once_and_reaches_every_cell(loaded, tmp_path):
    run = RunSpec(max_new_tokens=2, score_logprob=False, timing_tokens=2, system="Reply with the number only.")
    s = spec(lengths=[200], depths=[0.5], run=run)
    assert s.run is run and s.max_new_tokens == 2 and s.system == run.system  # the settings read through
    df = run_sweep(loaded, s, tmp_path / "s.jsonl", progress=False)
    sample = make_task("needle", loaded.tokenizer, length_tokens=200, depth=0.5, seed=0, digits=3)
    fresh = [run_one(loaded, sample, c, spec=run) for c in s.configs.values()]
    assert df["output_text"].tolist() == [r.output_text for r in fresh]
    assert df["prompt_tokens"].tolist() == [r.prompt_tokens for r in fresh]
    plain = run_sweep(
        loaded, spec(lengths=[200], depths=[0.5], timing_tokens=2), tmp_path / "plain.jsonl", progress=False
    )
    assert (df["prompt_tokens"] > plain["prompt_tokens"]).all()  # the system message was read, not dropped
    with pytest.raises(TypeError, match="not both"):
        SweepSpec({}, [200], run=run, cot=True)
    with pytest.raises(TypeError, match=r"Unknown run setting\(s\) \['max_tokens'\]"):
        spec(max_tokens=3)
    with pytest.raises(ValueError, match="backend='flex' was given beside a run value with backend='blocked'"):
        run_sweep(loaded, SweepSpec({}, [200], backend="blocked"), tmp_path / "x.jsonl", backend="flex")


@pytest.mark.parametrize("changed", [{"score_logprob": True}, {"static_cache": True}, {"max_new_tokens": 3}])
def test_a_rerun_under_other_settings_runs_again_as_into_a_fresh_file(loaded, tmp_path, changed):
    """Reference: the same sweep into a new file. The old rows stay in the file but never stand in for the new."""
    grid = dict(lengths=[200], depths=[0.5])
    out = tmp_path / "sweep.jsonl"
    first = run_sweep(loaded, spec(**grid), out, progress=False)
    again = run_sweep(loaded, spec(**grid, **changed), out, progress=False)
    fresh = run_sweep(loaded, spec(**grid, **changed), tmp_path / "fresh.jsonl", progress=False)
    assert len(lines(out)) == 2 * len(first) and set(again["cell_id"]).isdisjoint(first["cell_id"])
    assert list(again["cell_id"]) == list(fresh["cell_id"])
    for column in ("answer_logprob", "decode_path", "output_text", "generated_tokens"):
        assert again[column].tolist() == fresh[column].tolist()
    if "score_logprob" in changed:
        assert again["answer_logprob"].notna().all() and first["answer_logprob"].isna().all()


def test_cancelled_and_failed_cells(loaded, tmp_path):
    out = tmp_path / "sweep.jsonl"
    out.write_text(json.dumps({"cell_id": "a", "cancelled": True}) + "\n" + json.dumps({"cell_id": "b", "error": "x"}))
    assert finished_cells(out) == {"b"}
    assert finished_cells(out, retry_errors=True) == set()
    too_short = spec(lengths=[10], depths=[0.5], seeds=[0])  # the task cannot be built: an error row, not a crash
    df = run_sweep(loaded, too_short, tmp_path / "short.jsonl", progress=False)
    assert len(df) == 3 and df["error"].str.contains("too small").all()


def test_cancel_stops_without_writing_a_partial_row(loaded, tmp_path):
    cancel = threading.Event()
    out = tmp_path / "sweep.jsonl"
    run_sweep(loaded, spec(), out, progress=False, cancel=cancel, on_result=lambda _r: cancel.set())
    assert len(lines(out)) == 1
    assert len(run_sweep(loaded, spec(), out, progress=False)) == 12


def test_summary_matches_a_manual_count(loaded, tmp_path):
    out = tmp_path / "sweep.jsonl"
    df = run_sweep(loaded, spec(), out, progress=False)
    table = summarize(df, by=("label", "length_target"))
    assert list(table["label"].unique()) == list(spec().configs)  # the sweep's config order
    rows = read_jsonl(out)
    for _, row in table.iterrows():
        group = [r for r in rows if r["label"] == row["label"] and r["length_target"] == row["length_target"]]
        assert row["runs"] == len(group) == 2
        assert row["accuracy"] == pytest.approx(sum(bool(r["correct"]) for r in group) / len(group))
        assert row["prefill_s"] == pytest.approx(sum(r["prefill_s"] for r in group) / len(group))
        assert row["timed_total_s"] == pytest.approx(sum(r["timed_total_s"] for r in group) / len(group))
        # answers of 2 tokens, but every run timed over the same budget
        assert row["decode_tokens"] == min(r["decode_tokens"] for r in group) == spec().timing_tokens - 1
        assert all(r["generated_tokens"] <= 2 for r in group)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_export_round_trips(loaded, tmp_path, suffix):
    df = run_sweep(loaded, spec(seeds=[0], depths=[0.5]), tmp_path / "s.jsonl", progress=False)
    path = export(df, tmp_path / f"table{suffix}")
    back = pd.read_csv(path) if suffix == ".csv" else load_results(path)
    assert len(back) == len(df) and list(back["cell_id"]) == list(df["cell_id"])
    configs = back["config"].dropna()
    parsed = [json.loads(c) if isinstance(c, str) else c for c in configs]
    assert all(p["sliding_window_size"] == 16 for p in parsed)
    with pytest.raises(ValueError, match="csv or .jsonl"):
        export(df, tmp_path / "table.xlsx")


def test_bad_specs_are_explained():
    with pytest.raises(ValueError, match="lengths"):
        spec(lengths=[0])
    with pytest.raises(ValueError, match="between 0 and 1"):
        spec(depths=[2.0])
    with pytest.raises(ValueError, match="seeds"):
        spec(seeds=[])
