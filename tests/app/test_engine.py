"""The app's plumbing without a model: ZeroGPU decoration, the shared model cache, streaming and Stop."""

from __future__ import annotations

import threading
import time
import types
from pathlib import Path

import pytest

from app import errors, model_service
from app.board import CANCELLED, DONE, ERROR
from app.columns import ColumnSpec
from app.model_service import ModelHub
from app.runs import stream_columns
from swaa_core.engine.config import SWAAConfig
from swaa_core.eval.run_spec import RunSpec
from swaa_core.eval.runner import RunResult


def test_spaces_gpu_decorates_runs_when_zero_gpu_is_present(monkeypatch):
    calls = []

    def gpu(duration):
        def wrap(fn):
            calls.append((fn.__name__, duration))
            return fn

        return wrap

    monkeypatch.setattr(model_service, "spaces", types.SimpleNamespace(GPU=gpu))

    @model_service.on_gpu(duration=42)
    def run():
        return "ran"

    assert run() == "ran" and calls == [("run", 42)]


def test_without_spaces_the_decorator_changes_nothing():
    assert model_service.spaces is None  # the package is not installed here, and importing the app did not fail

    def run():
        return 1

    assert model_service.on_gpu(10)(run) is run


class FakeModel:
    def __init__(self, name):
        self.name = name


class CachingLoader:
    """Stands in for swaa_core.load_model: a cache of its own, counting the loads that were not cache hits."""

    def __init__(self, fail_first: bool = False, delay: float = 0.0):
        self.cache, self.loads, self.fail_first, self.delay = {}, [], fail_first, delay

    def __call__(self, name):
        if name not in self.cache:
            self.loads.append(name)
            time.sleep(self.delay)
            if self.fail_first and len(self.loads) == 1:
                raise ValueError(f"{name} is not reachable")
            self.cache[name] = FakeModel(name)
        return self.cache[name]


def test_model_hub_retries_after_a_failure():
    loader = CachingLoader(fail_first=True)
    hub = ModelHub(loader)
    with pytest.raises(ValueError, match="not reachable"):
        hub.get("m")
    assert not hub.is_ready("m")
    assert hub.get("m") is hub.get("m") is loader.cache["m"]
    assert loader.loads == ["m", "m"] and hub.is_ready("m")


def test_concurrent_requests_share_one_load():
    loader = CachingLoader(delay=0.3)
    hub = ModelHub(loader)
    results = []
    threads = [threading.Thread(target=lambda: results.append(hub.get("m"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(r is results[0] for r in results)
    assert loader.loads == ["m"]


def test_model_hub_keeps_no_reference_so_the_core_cache_can_free_a_model():
    import gc
    import weakref

    loader = CachingLoader()
    hub = ModelHub(loader)
    ref = weakref.ref(hub.get("m"))
    loader.cache.clear()  # what swaa_core's LRU cache does when it evicts the model
    gc.collect()
    assert ref() is None
    assert hub.get("m") is loader.cache["m"] and loader.loads == ["m", "m"]  # a later request loads it again


def test_a_model_the_core_cache_evicts_is_freed_although_the_app_loaded_it(monkeypatch, tmp_path):
    """The real chain: the app's hub over swaa_core.load_model over the core LRU. Once the LRU evicts a model, no
    reference is left anywhere in the app, so its memory goes."""
    import gc
    import weakref

    from helpers.tiny_models import build_tiny_model, build_tiny_tokenizer

    from swaa_core.models import model_cache

    tok = build_tiny_tokenizer()
    for name in ("one", "two"):
        build_tiny_model("llama", layers=2, vocab_size=len(tok)).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    cache = model_cache.ModelCache(max_bytes=1)  # room for one model: each load evicts the one before
    monkeypatch.setattr(model_cache, "_MODEL_CACHE", cache)
    hub = ModelHub()  # the app's default loader: swaa_core.load_model
    first = hub.get(str(tmp_path / "one"))
    model_ref, loaded_ref = weakref.ref(first.model), weakref.ref(first)
    assert hub.get(str(tmp_path / "one")) is first and len(cache) == 1  # a hit: the core cache holds it
    del first
    second = hub.get(str(tmp_path / "two"))
    gc.collect()
    assert len(cache) == 1 and hub.get(str(tmp_path / "two")) is second  # the core cache now holds only "two"
    assert model_ref() is None and loaded_ref() is None


def test_space_refuses_local_paths_outside_the_allowed_folders(monkeypatch, tmp_path):
    allowed = tmp_path / "adapters"
    (allowed / "mine").mkdir(parents=True)
    monkeypatch.setenv("SPACE_ID", "someone/swaa")
    monkeypatch.setenv(model_service.ALLOWED_DIRS_ENV, str(allowed))
    hub = ModelHub(CachingLoader())
    for path in ("/etc", str(tmp_path), f"{allowed}/../../etc"):
        with pytest.raises(ValueError, match=r"This Space loads a model from the Hugging Face Hub or from its"):
            hub.get(path)
    assert hub.get(str(allowed / "mine")).name == str(allowed / "mine")
    assert hub.get("org/some-model").name == "org/some-model"  # Hub ids and embedded names pass
    monkeypatch.delenv("SPACE_ID")
    assert hub.get("/etc").name == "/etc"  # a local run may load any folder


def test_tokens_never_reach_a_message(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_" + "a" * 34)
    text = errors.friendly_error(OSError(f"401 for url https://x?token={'hf_' + 'a' * 34} and hf_{'B' * 30}"))
    assert "hf_" not in text and text.count("***") == 2


def _fake_run_one(tokens: int, delay: float):
    """Streams ``tokens`` pieces through on_token like swaa_core.eval.runner.run_one and honours cancel."""

    def run_one(loaded, sample, config, *, label, on_token, cancel, spec):
        for i in range(tokens):
            if cancel.is_set():
                return RunResult(label=label, config=None, generated_tokens=i, error="Cancelled after some tokens.")
            on_token(f"t{i} ")
            time.sleep(delay)
        return RunResult(label=label, config=None, output_text="done", generated_tokens=tokens)

    return run_one


def test_columns_stream_in_order_and_finish():
    columns = [ColumnSpec("Full attention", None), ColumnSpec("SWA", SWAAConfig(sliding_window_size=8))]
    snapshots = []
    for views in stream_columns(lambda a: None, None, columns, spec=RunSpec(max_new_tokens=5), seed=0,
                                cancel=threading.Event(), run_one=_fake_run_one(5, 0.05), interval=0.05):  # fmt: skip
        snapshots.append([(v.status, v.text) for v in views])
    assert any(s[0][1] and not s[1][1] for s in snapshots), "the first column streamed before the second started"
    assert snapshots[-1] == [(DONE, "t0 t1 t2 t3 t4 "), (DONE, "t0 t1 t2 t3 t4 ")]


def test_cancel_stops_the_running_column_and_skips_the_rest():
    columns = [ColumnSpec("Full attention", None), ColumnSpec("SWA", SWAAConfig(sliding_window_size=8))]
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    *_, views = stream_columns(lambda a: None, None, columns, spec=RunSpec(max_new_tokens=100), seed=0, cancel=cancel,
                               run_one=_fake_run_one(100, 0.02), interval=0.05)  # fmt: skip
    assert [v.status for v in views] == [CANCELLED, CANCELLED]
    assert 0 < views[0].result.generated_tokens < 100 and views[1].result is None


def test_a_failing_column_shows_its_message_and_the_others_run():
    def run_one(loaded, sample, config, *, label, **kw):
        if config is not None:
            raise ValueError("this model has 30 layers")
        return RunResult(label=label, config=None, output_text="ok")

    columns = [ColumnSpec("Full attention", None), ColumnSpec("SWA", SWAAConfig(sliding_window_size=8))]
    *_, views = stream_columns(lambda a: None, None, columns, spec=RunSpec(max_new_tokens=1), seed=0,
                               cancel=threading.Event(), run_one=run_one, interval=0.01)  # fmt: skip
    assert views[0].status == DONE
    assert (views[1].status, views[1].error) == (ERROR, "this model has 30 layers")


def test_out_of_memory_reads_as_advice():
    text = errors.friendly_error(MemoryError())
    assert text.startswith("Out of memory") and "shorter prompt" in text


# ---------------------------------------------------------------- adapters trained again into the same folder
def _save_random_adapter(base, folder, seed: int):
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    from swaa_core.train.adapters import save_adapter

    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    save_adapter(peft_model, folder, SWAAConfig(sliding_window_size=16))


def _peft_merged_logits(base, folder, ids):
    """Reference: peft's own load and merge of the folder's current adapter onto a fresh copy of the base."""
    import copy

    import torch
    from peft import PeftModel

    merged = PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).merge_and_unload()
    with torch.no_grad():
        return merged(ids).logits


def test_an_adapter_trained_again_into_its_folder_is_merged_again(tmp_path):
    import torch
    from helpers.tiny_models import build_tiny_model, build_tiny_tokenizer

    from swaa_core import load_model

    tok = build_tiny_tokenizer()
    build_tiny_model("llama", layers=2, seed=3, vocab_size=len(tok)).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    loaded = load_model(tmp_path / "base", reuse=False)
    ids = torch.tensor([[5, 9, 17, 30, 41]])
    adapters = model_service.AdapterModels()
    folder = tmp_path / "adapter"

    def served():
        with torch.no_grad():
            return adapters.get(loaded, str(folder)).model(ids).logits

    _save_random_adapter(loaded.model, folder, seed=1)
    first = served()
    assert torch.allclose(first, _peft_merged_logits(loaded.model, folder, ids), atol=1e-5)
    assert adapters.get(loaded, str(folder)) is adapters.get(loaded, str(folder))  # unchanged: merged once
    _save_random_adapter(loaded.model, folder, seed=2)  # an adapter saved again into its folder
    again = served()
    assert not torch.allclose(first, again, atol=1e-3)
    assert torch.allclose(again, _peft_merged_logits(loaded.model, folder, ids), atol=1e-5)
    assert len(adapters._models) == 1  # the stale merge is gone, not kept beside the new one


# ---------------------------------------------------------------- a stopped column on the page and in the files
@pytest.fixture(scope="module")
def tiny_loaded():
    from types import SimpleNamespace

    from helpers.tiny_models import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", layers=2, vocab_size=len(tok), seed=1)
    return SimpleNamespace(model=model, tokenizer=tok, lock=threading.Lock(), info=None, name="tiny")


@pytest.mark.parametrize("stop_after", [3, 0], ids=["mid-stream", "before-the-first-token"])
def test_a_stopped_column_keeps_its_answer_on_the_page_and_in_the_exports(tiny_loaded, stop_after):
    """Reference: the text that streamed into the column. What was not measured reads "–" on the page, null in the
    JSON and empty in the CSV: never 0 ms."""
    import json

    import pandas as pd

    from app.board import render_board
    from app.comparison import export_files, result_rows
    from swaa_core.engine.patch import attention_modules
    from swaa_core.eval.runner import run_one

    cancel, pieces = threading.Event(), []

    def stopping_run_one(*args, on_token, **kw):
        def counted(piece):
            pieces.append(piece)
            on_token(piece)
            if len(pieces) == stop_after:
                cancel.set()

        return run_one(*args, on_token=counted, **kw)

    hook = None
    if not stop_after:  # Stop pressed while the prompt is read
        hook = attention_modules(tiny_loaded.model)[1].register_forward_pre_hook(lambda *_: cancel.set())
    columns = [ColumnSpec("Full attention", None), ColumnSpec("SWA", SWAAConfig(sliding_window_size=8))]
    try:
        *_, views = stream_columns(lambda _a: tiny_loaded, "w5 w9 w17 w30 " * 20, columns,
                                   spec=RunSpec(max_new_tokens=40), seed=0, cancel=cancel, run_one=stopping_run_one, interval=0.05)  # fmt: skip
    finally:
        if hook is not None:
            hook.remove()
    first = views[0]
    assert [v.status for v in views] == [CANCELLED, CANCELLED] and views[1].result is None
    assert first.result.output_text == first.text == "".join(pieces)
    assert (first.result.generated_tokens > 0) == bool(stop_after)
    board = render_board(views)
    assert "stopped" in board and " 0 ms" not in board
    rows = result_rows(views, {"model": "tiny"})
    csv, data = export_files(rows)
    back_json, back_csv = json.loads(Path(data).read_text(encoding="utf-8")), pd.read_csv(csv)
    assert back_json[0]["cancelled"] is True and bool(back_csv["cancelled"][0])
    assert back_json[0]["output_text"] == first.text
    assert back_json[0]["generated_tokens"] == first.result.generated_tokens
    if not stop_after:
        assert back_json[0]["ttft_s"] is None and pd.isna(back_csv["ttft_s"][0])
        assert "time to first token</dt><dd>–</dd>" in board


def test_the_model_facts_name_every_native_window(tmp_path):
    """A Gemma 3 whose layer 1 slides by 16 and the others by 8: the facts read each window from the load's info."""
    from helpers.tiny_models import build_tiny_model, build_tiny_tokenizer

    from app.sidebar.model import model_facts
    from swaa_core import load_model

    tokenizer = build_tiny_tokenizer()
    build_tiny_model("gemma3", layers=6, vocab_size=len(tokenizer), per_layer_config={1: {"sliding_window": 16}},
                     allow_global_per_layer_attribute_access=True).save_pretrained(tmp_path)  # fmt: skip
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), reuse=False)
    assert model_service.native_windows(loaded) == {8: [0, 2, 3, 4], 16: [1]}
    facts = model_facts(loaded)
    assert "native sliding window 8 in 4 layers" in facts and "native sliding window 16 in 1 layers" in facts
