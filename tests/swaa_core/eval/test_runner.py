"""The runner on a tiny random model: outputs match plain greedy generation, metrics are real (KV bytes match the
cache tensors, prefill time grows with the prompt), streaming, cancellation, errors as results, CoT accounting."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import torch
from helpers.tiny_models import build_tiny_model, build_tiny_tokenizer

from swaa_core import SWAAConfig, swaa
from swaa_core.eval.cot import COT_INSTRUCTION, render_prompt, split_reasoning
from swaa_core.eval.latency import DEFAULT_TIMING_TOKENS, comparable, decode_note
from swaa_core.eval.runner import BASELINE_LABEL, RunResult, compare, run_one
from swaa_core.eval.scoring import answer_loglik
from swaa_core.eval.tasks import make_task

LAYERS, KV_HEADS, HEAD_DIM = 4, 2, 8  # build_tiny_model's shape


@pytest.fixture(scope="module")
def loaded():
    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", layers=LAYERS, vocab_size=len(tok), seed=1, max_position_embeddings=16384)
    return SimpleNamespace(model=model, tokenizer=tok, lock=threading.Lock(), info=None)


@pytest.fixture(scope="module")
def sample(loaded):
    return make_task("passkey", loaded.tokenizer, length_tokens=400, depth=0.3, seed=2)


def greedy_reference(loaded, text: str, config, n: int, prefix: str = "") -> tuple[list[int], int]:
    """Plain transformers greedy generation under the config: the ids the runner must reproduce."""
    tok, model = loaded.tokenizer, loaded.model
    ids = tok(render_prompt(tok, text, answer_prefix=prefix), add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad(), swaa(model, config):
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1] :].tolist(), ids.shape[1]


@pytest.mark.parametrize(
    "config",
    [None, SWAAConfig(sliding_window_size=32), SWAAConfig(sliding_window_size=32, keep_first=4, force_fa_decode=True)],
    ids=["full", "swa", "swa+sinks+fa-decode"],
)
def test_output_and_counts_match_plain_generation(loaded, sample, config):
    result = run_one(loaded, sample, config, max_new_tokens=6)
    assert result.error is None, result.error
    expected_ids, n_prompt = greedy_reference(loaded, sample.prompt, config, 6, sample.answer_prefix)
    assert result.prompt_tokens == n_prompt
    assert result.generated_tokens == len(expected_ids)
    assert result.output_text == loaded.tokenizer.decode(expected_ids, skip_special_tokens=True)
    assert result.config == (None if config is None else config.to_dict())
    assert result.backend == ("sdpa" if config is None else "blocked")


def test_every_column_and_the_decode_curve_store_keys_alike(loaded, sample, monkeypatch):
    """Full attention and SWAA runs hand generate the same kind of cache (SWAA's in-place growing layers), so their
    decode times differ by attention only, not by transformers' per-step concatenation of the full column's cache."""
    from swaa_core.engine.cache import SWAACacheLayer
    from swaa_core.eval.latency import time_decode

    model, caches = loaded.model, []
    original = type(model).generate

    def spy(self, *args, **kwargs):
        caches.append(kwargs.get("past_key_values"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "generate", spy)
    configs = [None, SWAAConfig(sliding_window_size=32, keep_first=4, force_fa_decode=True)]
    for config in configs:
        assert run_one(loaded, sample, config, max_new_tokens=4).error is None
        time_decode(model, torch.randint(3, 90, (1, 64)), config, new_tokens=4)
    assert len(caches) == 2 * len(configs)
    for cache in caches:
        assert cache is not None and {type(layer) for layer in cache.layers} == {SWAACacheLayer}


def test_full_attentions_timed_decode_steps_leave_out_cudnn_sdpa_on_cuda(loaded, sample, monkeypatch):
    """On a GPU, SDPA's default cuDNN kernel builds a graph for every new key length (41-55 ms of host time per decode
    step on an H200): the full-attention column's decode steps run with SDPA's other kernels, as SWAA's own decode
    step does; prefill keeps SDPA's choice, and so do SWAA's columns, whose dispatcher picks its kernels itself (a
    masked step reads bucketed keys on cuDNN). The model here is on the CPU, so the CUDA case is forced; the switches
    are what torch reads."""
    import swaa_core.eval.decoding as decoding
    from swaa_core.eval.latency import time_decode

    as_if_cuda = decoding.decode_kernels  # the one place every eager timed generation enters
    monkeypatch.setattr(decoding, "decode_kernels", lambda model: as_if_cuda(model, device="cuda"))
    model, seen = loaded.model, []
    original = type(model).forward

    def spy(self, *args, **kwargs):
        swaa_on = getattr(self, "_swaa_state", None) is not None
        seen.append((swaa_on, kwargs["input_ids"].shape[1], torch.backends.cuda.cudnn_sdp_enabled()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", spy)
    cudnn_before, flash_before = torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled()
    assert cudnn_before  # torch's default
    for config in [None, SWAAConfig(sliding_window_size=32, keep_first=4)]:
        assert run_one(loaded, sample, config, max_new_tokens=4).error is None
        time_decode(model, torch.randint(3, 90, (1, 64)), config, new_tokens=4)
    full_steps = [on for swaa_on, tokens, on in seen if tokens == 1 and not swaa_on]
    swaa_steps = [on for swaa_on, tokens, on in seen if tokens == 1 and swaa_on]
    prefills = [on for _, tokens, on in seen if tokens > 1]
    assert len(full_steps) >= 6 and not any(full_steps)
    assert len(swaa_steps) >= 6 and all(swaa_steps)
    assert len(prefills) >= 4 and all(prefills)
    assert torch.backends.cuda.cudnn_sdp_enabled() == cudnn_before  # restored after each run
    assert torch.backends.cuda.flash_sdp_enabled() == flash_before
    with as_if_cuda(model, device="cpu"):  # and nothing changes for a model on the CPU
        model(input_ids=torch.tensor([[5]]))
    assert seen[-1] == (False, 1, True)


@pytest.mark.parametrize("shipped", ["dynamic", "static"])
def test_a_checkpoints_cache_implementation_does_not_change_the_timed_runs(loaded, sample, shipped, monkeypatch):
    """A checkpoint may ship generation_config.cache_implementation; transformers refuses it beside a cache object,
    and "static" would send SWAA columns down the fixed-buffer path unasked. The runs stay plain generation."""
    import swaa_core.engine.fast_decode as fast_decode

    def unasked(*args, **kwargs):
        raise AssertionError("the fixed-buffer path ran without static_cache=True")

    configs = (None, SWAAConfig(sliding_window_size=32, keep_first=4))
    expected = [greedy_reference(loaded, sample.prompt, c, 6, sample.answer_prefix)[0] for c in configs]
    monkeypatch.setattr(fast_decode, "generate_static", unasked)
    monkeypatch.setattr(loaded.model.generation_config, "cache_implementation", shipped)
    for config, expected_ids in zip(configs, expected, strict=True):
        result = run_one(loaded, sample, config, max_new_tokens=6)
        assert result.error is None, result.error
        assert result.output_text == loaded.tokenizer.decode(expected_ids, skip_special_tokens=True)


def test_kv_bytes_match_the_cache_tensors(loaded, sample):
    per_token = 2 * KV_HEADS * HEAD_DIM * 4  # keys and values, float32, per layer
    full = run_one(loaded, sample, None, max_new_tokens=5)
    # the last token is never fed back; tokens generated past the answer for the timing are held too
    held = full.prompt_tokens + full.generated_tokens + full.timing_extra_tokens - 1
    assert full.generated_tokens + full.timing_extra_tokens == DEFAULT_TIMING_TOKENS
    assert full.kv_cache_bytes == LAYERS * held * per_token
    window, sinks = 32, 4
    swa = run_one(loaded, sample, SWAAConfig(sliding_window_size=window, keep_first=sinks), max_new_tokens=5)
    # a sliding layer without FA decode keeps the sinks and a ring of the last W tokens; layer 1 keeps them all
    mixed = run_one(loaded, sample, SWAAConfig(sliding_window_size=window, non_sliding_layers=[1]), max_new_tokens=5)
    assert swa.kv_cache_bytes_per_layer == [(sinks + window) * per_token] * LAYERS
    assert mixed.kv_cache_bytes_per_layer == [window * per_token, held * per_token] + [window * per_token] * 2


@pytest.mark.parametrize(
    "config",
    [None, SWAAConfig(sliding_window_size=32, keep_first=4), SWAAConfig(sliding_window_size=32, force_fa_decode=True)],
    ids=["full", "swa+sinks", "swa+fa-decode"],
)
def test_static_cache_runs_as_plain_generation(loaded, sample, config):
    """The fixed-buffer decoder (a CUDA graph on a GPU) gives the same answer, streams it, times the same tokens and
    reports the KV bytes its buffers hold: sinks + W per evicting layer, prompt + new tokens per full one."""
    pieces = []
    result = run_one(loaded, sample, config, max_new_tokens=6, static_cache=True, on_token=pieces.append)
    assert result.error is None, result.error
    expected_ids, n_prompt = greedy_reference(loaded, sample.prompt, config, 6, sample.answer_prefix)
    assert result.output_text == loaded.tokenizer.decode(expected_ids, skip_special_tokens=True) == "".join(pieces)
    assert result.generated_tokens + result.timing_extra_tokens == DEFAULT_TIMING_TOKENS
    assert "static cache" in result.backend and result.prefill_s > 0 and result.decode_tokens_per_s > 0
    per_token = 2 * KV_HEADS * HEAD_DIM * 4
    slots = (4 + 32) if config is not None and not config.force_fa_decode else n_prompt + DEFAULT_TIMING_TOKENS
    assert result.kv_cache_bytes_per_layer == [slots * per_token] * LAYERS


def test_static_cache_setup_stays_out_of_the_decode_speed(loaded, sample, monkeypatch):
    """Moving the cache into fixed buffers (and capturing a graph on a GPU) happens once, between two generated
    tokens: it is reported as setup_s and must not slow the decode speed. The clock every timer reads jumps by an hour
    inside that move, so where the hour lands shows where the move is counted, whatever the machine's load."""
    from swaa_core.engine import fast_decode

    hour, jumped, real_clock = 3600.0, [0.0], time.perf_counter
    real_move = fast_decode.StaticSWAACache.from_dynamic

    def slow(*args, **kwargs):  # every move, the warm-up run's too
        jumped[0] += hour
        return real_move(*args, **kwargs)

    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + jumped[0])
    monkeypatch.setattr(fast_decode.StaticSWAACache, "from_dynamic", slow)
    result = run_one(loaded, sample, SWAAConfig(sliding_window_size=32), max_new_tokens=6, static_cache=True)
    assert result.error is None, result.error
    assert jumped[0] >= hour  # the move ran
    assert result.setup_s >= hour
    assert result.decode_tokens / result.decode_tokens_per_s < hour / 2  # the timed steps exclude the move
    assert result.timed_total_s >= hour  # time to token N still counts it: the user waited for it


def test_prefill_time_grows_with_the_prompt(loaded):
    def best_prefill(length):  # the fastest of three: other processes on the machine only ever add time
        s = make_task("needle", loaded.tokenizer, length_tokens=length, seed=0)
        return min(run_one(loaded, s, None, max_new_tokens=2, score_logprob=False).prefill_s for _ in range(3))

    # 32x the tokens: a wide enough gap that load on a shared machine cannot invert it (256 vs 2048 once did)
    times = [best_prefill(n) for n in (256, 8192)]
    assert times[0] < times[1], times


def test_timings_are_consistent(loaded, sample):
    r = run_one(loaded, sample, SWAAConfig(sliding_window_size=32), max_new_tokens=8, timing_tokens=20)
    assert 0 < r.prefill_s <= r.ttft_s <= r.total_s <= r.timed_total_s  # the answer (<= 8 tokens) ends first
    assert (r.timed_tokens, r.decode_tokens) == (20, 19)
    assert r.decode_tokens / r.decode_tokens_per_s == pytest.approx(r.timed_total_s - r.ttft_s)
    assert r.peak_memory_bytes > 0


def _answer_lengths(ids: list[int], eos: int, n: int) -> int:
    return ids.index(eos) + 1 if eos in ids[:n] else n


def test_decode_speed_comes_from_the_same_token_count_for_every_config(loaded, sample, monkeypatch):
    """Answers of different lengths (an EOS token chosen so that full attention and SWA stop at different points)
    are each the natural greedy answer, while every run is timed over the same 20 tokens."""
    swa, n = SWAAConfig(sliding_window_size=16), 12
    full_ids, _ = greedy_reference(loaded, sample.prompt, None, n, sample.answer_prefix)
    swa_ids, _ = greedy_reference(loaded, sample.prompt, swa, n, sample.answer_prefix)
    eos = next(t for t in full_ids if _answer_lengths(full_ids, t, n) != _answer_lengths(swa_ids, t, n))
    monkeypatch.setattr(loaded.model.generation_config, "eos_token_id", eos)
    streamed: dict[str, list[str]] = {BASELINE_LABEL: [], "swa": []}
    results = []
    for label, cfg in ((BASELINE_LABEL, None), ("swa", swa)):
        on_token = streamed[label].append
        results.append(run_one(loaded, sample, cfg, label=label, max_new_tokens=n, timing_tokens=20, on_token=on_token))
    full, sliding = results
    assert full.generated_tokens == _answer_lengths(full_ids, eos, n)
    assert sliding.generated_tokens == _answer_lengths(swa_ids, eos, n)
    assert full.generated_tokens != sliding.generated_tokens
    for r, ids in ((full, full_ids), (sliding, swa_ids)):
        answer = ids[: r.generated_tokens]
        assert r.output_text == loaded.tokenizer.decode(answer, skip_special_tokens=True) == "".join(streamed[r.label])
        assert (r.timed_tokens, r.decode_tokens, r.generated_tokens + r.timing_extra_tokens) == (20, 19, 20)
        assert r.decode_tokens_per_s > 0 and comparable(full, r) is None and comparable(full, r, what="timed") is None


def test_decode_speed_from_too_few_tokens_is_labelled(loaded, sample):
    natural = run_one(loaded, sample, None, max_new_tokens=4, timing_tokens=0)
    assert natural.timed_tokens == natural.generated_tokens <= 4 and natural.timing_extra_tokens == 0
    assert "too few tokens to compare" in decode_note(natural)
    budget = run_one(loaded, sample, None, max_new_tokens=4, timing_tokens=40)
    assert decode_note(budget) is None and comparable(natural, budget) is not None
    # near the end of the model's context the budget shrinks to what fits: same for every config on that prompt
    short = SimpleNamespace(**{**vars(loaded), "info": SimpleNamespace(context_length=budget.prompt_tokens + 8)})
    clipped = run_one(short, sample, SWAAConfig(sliding_window_size=16), max_new_tokens=4, timing_tokens=40)
    assert clipped.error is None and clipped.timed_tokens == 8 and "too few" in decode_note(clipped)


PEAK_PROBE = """
import torch
from swaa_core.eval.harness import PeakMemory
size = 256 * 2**20
with PeakMemory(torch.device("cpu")) as m:
    block = torch.ones(size // 4)
    block.add_(1)
    del block
with PeakMemory(torch.device("cpu")) as quiet:
    torch.ones(16)
print(m.delta / size, quiet.delta / size)
"""


def test_peak_memory_sees_an_allocation_inside_the_block():
    """In a fresh process: the measure is process-wide, and threads that earlier tests leave behind (app servers,
    cancelled runs finishing) allocate and free memory at the same time."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PEAK_PROBE], capture_output=True, text=True, check=True, timeout=120)
    seen, quiet = map(float, out.stdout.split())
    assert seen >= 0.9
    assert quiet < 0.5


def test_streaming_delivers_the_output_while_holding_the_lock(loaded, sample):
    pieces, lock_held = [], []

    def on_token(piece):
        pieces.append(piece)
        lock_held.append(loaded.lock.locked())

    r = run_one(loaded, sample, SWAAConfig(sliding_window_size=32), max_new_tokens=12, on_token=on_token)
    assert "".join(pieces) == r.output_text and pieces
    assert all(lock_held)
    assert not loaded.lock.locked()


def test_cancel_during_decode_stops_early(loaded, sample):
    cancel, forwards = threading.Event(), []

    def count(*_):
        forwards.append(1)
        if len(forwards) == 3:  # the prefill and two decode steps, then the user presses stop
            cancel.set()

    hook = loaded.model.register_forward_hook(count)
    try:
        r = run_one(loaded, sample, None, max_new_tokens=40, cancel=cancel, warmup=False)
    finally:
        hook.remove()
    assert r.cancelled and "Cancelled after" in r.error
    assert r.generated_tokens == 3


def test_cancel_during_prefill_stops_inside_the_forward(loaded, sample):
    cancel = threading.Event()
    from swaa_core.engine.families import attention_modules

    first_layer = attention_modules(loaded.model)[0]
    hook = first_layer.register_forward_pre_hook(lambda *_: cancel.set())
    try:
        r = run_one(loaded, sample, None, max_new_tokens=5, cancel=cancel, warmup=False)
    finally:
        hook.remove()
    assert r.cancelled and r.error == "Cancelled before the first token." and r.generated_tokens == 0
    # nothing was timed: not measured (None, shown as "–"), never 0 seconds
    assert r.ttft_s is None and r.decode_tokens_per_s is None and r.timed_total_s is None and r.kv_cache_bytes is None


@pytest.mark.parametrize("static_cache", [False, True], ids=["dynamic-cache", "fixed-buffers"])
def test_a_stop_mid_stream_keeps_the_streamed_answer_and_its_counts(loaded, sample, static_cache):
    """Stopped after three streamed pieces: the text that streamed and its token count come back on every decode
    path. Reference: plain greedy generation, decoded to the same number of tokens."""
    cancel, pieces = threading.Event(), []

    def on_token(piece):
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()  # the page's Stop, pressed while the answer streams

    r = run_one(loaded, sample, SWAAConfig(sliding_window_size=32), max_new_tokens=40, cancel=cancel,
                on_token=on_token, static_cache=static_cache)  # fmt: skip
    assert r.cancelled and r.error == f"Cancelled after {r.generated_tokens} generated tokens."
    expected, _ = greedy_reference(loaded, sample.prompt, SWAAConfig(sliding_window_size=32), 40, sample.answer_prefix)
    assert 3 <= r.generated_tokens < 40
    assert r.output_text == loaded.tokenizer.decode(expected[: r.generated_tokens], skip_special_tokens=True)
    assert r.output_text.startswith("".join(pieces[:3]))
    assert r.ttft_s > 0 and r.timed_tokens == min(r.generated_tokens, DEFAULT_TIMING_TOKENS) and r.kv_cache_bytes > 0


def test_compare_runs_the_baseline_first_and_never_raises(loaded, sample):
    started = []
    configs = {
        "again full": None,
        "swa": SWAAConfig(sliding_window_size=16),
        "bad layers": SWAAConfig(sliding_window_size=16, non_sliding_layers=[9]),
        "bad type": "not a config",
    }
    results = compare(loaded, sample, configs, max_new_tokens=3, on_start=started.append)
    assert [r.label for r in results] == [BASELINE_LABEL, "swa", "bad layers", "bad type"] == started
    assert results[0].config is None and results[0].error is None
    assert results[1].error is None
    assert "Bad SWAA config" in results[2].error and "layer(s) [9]" in results[2].error
    assert results[3].error
    assert all(isinstance(r, RunResult) for r in results)


def test_cancelled_compare_reports_the_runs_it_skipped(loaded, sample):
    cancel = threading.Event()
    cancel.set()
    results = compare(loaded, sample, {"swa": SWAAConfig(sliding_window_size=16)}, cancel=cancel)
    assert [r.error for r in results] == ["Cancelled before it started."] * 2


def test_prompt_longer_than_the_context_is_an_error_not_an_exception():
    tok = build_tiny_tokenizer()
    small = SimpleNamespace(model=build_tiny_model(vocab_size=len(tok), max_position_embeddings=128), tokenizer=tok)
    long = make_task("passkey", tok, length_tokens=300, seed=0)
    r = run_one(small, long, None, max_new_tokens=4)
    assert "context is 128 tokens" in r.error and r.output_text == ""


def test_out_of_memory_is_reported_with_advice(loaded, sample, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(loaded.model, "generate", oom)
    r = run_one(loaded, sample, SWAAConfig(sliding_window_size=16), max_new_tokens=3, warmup=False)
    assert r.error.startswith("Out of memory") and "shorter prompt" in r.error


def test_answer_logprob_is_the_teacher_forced_likelihood(loaded, sample):
    cfg = SWAAConfig(sliding_window_size=32, force_fa_decode=True)
    r = run_one(loaded, sample, cfg, max_new_tokens=2)
    rendered = render_prompt(loaded.tokenizer, sample.prompt, answer_prefix=sample.answer_prefix)
    direct = answer_loglik(loaded.model, loaded.tokenizer, rendered, sample.answer, cfg)
    assert r.answer_logprob == pytest.approx(direct.logprob, abs=1e-4)
    assert r.answer_logprob_tokens == direct.tokens
    assert r.correct == (sample.answer in r.answer_text)


def test_cot_adds_the_instruction_and_accounts_for_reasoning(loaded, sample):
    plain = run_one(loaded, sample, None, max_new_tokens=24)
    cot = run_one(loaded, sample, None, max_new_tokens=24, cot=True)
    instruction = len(loaded.tokenizer(COT_INSTRUCTION, add_special_tokens=False).input_ids)
    assert cot.prompt_tokens > plain.prompt_tokens + instruction // 2
    assert cot.cot and (cot.reasoning_text, cot.answer_text) == split_reasoning(cot.output_text)
    n_reasoning = len(loaded.tokenizer(cot.reasoning_text, add_special_tokens=False).input_ids)
    assert cot.reasoning_tokens == (n_reasoning if cot.reasoning_text else 0)


def test_plain_prompts_run_unscored(loaded):
    r = run_one(loaded, "The grass is green. " * 20, SWAAConfig(sliding_window_size=16), max_new_tokens=3)
    assert r.error is None and r.correct is None and r.answer_logprob is None and r.meta["task"] == "prompt"


def test_needle_distance_counts_the_tokens_a_window_must_reach_back(loaded):
    distances = []
    for depth in (0.1, 0.5, 0.9):
        s = make_task("needle", loaded.tokenizer, length_tokens=600, depth=depth, seed=1)
        r = run_one(loaded, s, SWAAConfig(sliding_window_size=32), max_new_tokens=1, score_logprob=False)
        rendered = render_prompt(loaded.tokenizer, s.prompt, answer_prefix=s.answer_prefix)
        at = rendered.index(s.prompt) + s.needle_char_span[0]
        before = len(loaded.tokenizer(rendered[:at], add_special_tokens=False).input_ids)
        assert r.prompt_tokens <= before + r.meta["needle_distance"] <= r.prompt_tokens + 1
        distances.append(r.meta["needle_distance"])
    assert distances[0] > distances[1] > distances[2] > 32


def test_run_that_would_not_fit_is_refused_before_generating(tmp_path, monkeypatch):
    from swaa_core import load_model
    from swaa_core.models import memory as memory_module
    from swaa_core.models.memory import estimate_memory

    tok = build_tiny_tokenizer()
    build_tiny_model("llama", layers=LAYERS, vocab_size=len(tok), max_position_embeddings=16384).save_pretrained(
        tmp_path
    )
    tok.save_pretrained(tmp_path)
    real = load_model(tmp_path, reuse=False)
    long = make_task("passkey", tok, length_tokens=3000, seed=0)
    swa = SWAAConfig(sliding_window_size=32)
    probe = run_one(real, long, swa, max_new_tokens=2, score_logprob=False)
    context = probe.prompt_tokens + 2
    need_full = estimate_memory(real, context, None).run_bytes(False)
    need_swa = estimate_memory(real, context, swa).run_bytes(True)
    assert need_swa < need_full
    free = int((need_swa + need_full) / 2 / 0.9)  # enough for the SWAA run only
    monkeypatch.setattr(memory_module, "available_memory", lambda device="cpu": free)
    calls = []
    monkeypatch.setattr(
        real.model, "generate", lambda *a, **k: calls.append(1) or real.model.__class__.generate(real.model, *a, **k)
    )

    refused = run_one(real, long, None, max_new_tokens=2, warmup=False, score_logprob=False)
    assert refused.error is not None and "needs about" in refused.error and "shorter context" in refused.error
    assert calls == [] and refused.output_text == ""
    allowed = run_one(real, long, swa, max_new_tokens=2, warmup=False, score_logprob=False)
    assert allowed.error is None and calls == [1] and allowed.output_text == probe.output_text


def test_every_timed_path_runs_with_the_same_threads_in_any_thread(loaded, sample, monkeypatch):
    """The page runs columns in worker threads and the sweeps in Gradio's; anything may have changed torch's thread
    count meanwhile. Reference: the count asked for ($SWAA_NUM_THREADS), seen inside every forward pass."""
    from swaa_core.eval.latency import decode_speed_curve

    monkeypatch.setenv("SWAA_NUM_THREADS", "1")
    seen, out, before = [], {}, torch.get_num_threads()
    hook = loaded.model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    quick = dict(max_new_tokens=2, warmup=False, score_logprob=False, timing_tokens=2)

    def worker():
        torch.set_num_threads(2)  # a library, or another session, changed it
        out["run"] = run_one(loaded, sample, None, **quick)
        torch.set_num_threads(2)
        out["curve"] = decode_speed_curve(loaded, {"full": None}, [64], new_tokens=2)

    try:
        torch.set_num_threads(2)
        out["main"] = run_one(loaded, sample, None, **quick)
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    finally:
        hook.remove()
        torch.set_num_threads(before)
    assert out["main"].threads == out["run"].threads == out["curve"][0].threads == 1
    assert seen and set(seen) == {1}
