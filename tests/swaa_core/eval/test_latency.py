"""Like-for-like latency: decode speed against prompt length on a tiny model (one point per length and config,
KV cache sizes from the cache tensors: full attention grows with the prompt, a sliding cache does not), errors and
cancellation per point, and the rules that decide whether two timings may be compared."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch
from helpers.tiny_models import build_tiny_model

from swaa_core import SWAAConfig
from swaa_core.eval.latency import DecodeTiming, comparable, decode_note, decode_speed_curve

LAYERS, KV_HEADS, HEAD_DIM, W = 2, 2, 8, 16
PER_TOKEN = 2 * KV_HEADS * HEAD_DIM * 4  # keys and values, float32, per layer
CONFIGS = {
    "Full attention": None,
    "SWA": SWAAConfig(sliding_window_size=W),
    "SWA + FA decode": SWAAConfig(sliding_window_size=W, force_fa_decode=True),
}


@pytest.fixture(scope="module")
def loaded():
    return SimpleNamespace(model=build_tiny_model(layers=LAYERS), lock=threading.Lock(), info=None)


def test_one_point_per_length_and_config_with_the_cache_each_one_holds(loaded):
    new = 8
    points = decode_speed_curve(loaded, CONFIGS, [64, 256], new_tokens=new, repeats=2)
    assert [(p.prompt_tokens, p.label) for p in points] == [(n, label) for n in (64, 256) for label in CONFIGS]
    for p in points:
        assert p.error is None and p.repeats == 2 and p.new_tokens == new
        assert 0 < p.best_ms_per_token <= p.ms_per_token and p.tokens_per_s == pytest.approx(1000 / p.ms_per_token)
        assert p.prefill_s > 0
    held = {(p.label, p.prompt_tokens): p.kv_cache_bytes for p in points}
    for n in (64, 256):
        # generate() made new + 1 tokens; the last one is never fed back
        assert held["Full attention", n] == held["SWA + FA decode", n] == LAYERS * (n + new) * PER_TOKEN
        assert held["SWA", n] == LAYERS * W * PER_TOKEN  # a ring of sinks (none) + W slots at every length


def test_the_fixed_buffer_path_reports_itself_and_holds_its_buffers(loaded):
    """static_cache=True times fast_generate: each point says so, has a setup time, and holds what the fixed
    buffers hold (prompt + new + 1 slots per full or FA-decode layer, a ring of W per evicting one)."""
    new = 6
    points = decode_speed_curve(loaded, CONFIGS, [64, 256], new_tokens=new, static_cache=True)
    held = {(p.label, p.prompt_tokens): p.kv_cache_bytes for p in points}
    for p in points:
        assert p.error is None and p.repeats == 1 and p.ms_per_token > 0 and p.prefill_s > 0
        assert p.decode_path == "fixed buffers" and p.setup_s > 0
    for n in (64, 256):
        assert held["Full attention", n] == held["SWA + FA decode", n] == LAYERS * (n + new + 1) * PER_TOKEN
        assert held["SWA", n] == LAYERS * W * PER_TOKEN
    dynamic = decode_speed_curve(loaded, {"SWA": CONFIGS["SWA"]}, [64], new_tokens=2)
    assert (dynamic[0].decode_path, dynamic[0].setup_s) == ("dynamic cache", 0.0)


def test_a_length_beyond_the_context_fails_alone(loaded):
    short = SimpleNamespace(**{**vars(loaded), "info": SimpleNamespace(context_length=200)})
    points = decode_speed_curve(short, {"SWA": CONFIGS["SWA"]}, [64, 256], new_tokens=4)
    assert points[0].error is None and points[0].ms_per_token > 0
    assert "200-token context" in points[1].error and points[1].ms_per_token == 0


def test_cancel_keeps_the_finished_points(loaded):
    cancel = threading.Event()
    seen = []

    def on_point(point):
        seen.append(point)
        cancel.set()  # between lengths: the first length is complete, the second never starts

    points = decode_speed_curve(loaded, CONFIGS, [64, 128], new_tokens=4, cancel=cancel, on_point=on_point)
    assert points == seen and [p.prompt_tokens for p in points] == [64] * 3
    assert all(p.error is None and p.repeats == 1 for p in points)
    stopped = decode_speed_curve(loaded, CONFIGS, [64, 128], new_tokens=4, cancel=cancel)
    assert [(p.prompt_tokens, p.error) for p in stopped] == [(64, "Cancelled.")] * 3


def test_bad_arguments_are_explained(loaded):
    with pytest.raises(ValueError, match="configs is empty"):
        decode_speed_curve(loaded, {}, [64])
    with pytest.raises(ValueError, match="new_tokens and repeats"):
        decode_speed_curve(loaded, CONFIGS, [64], new_tokens=0)
    with pytest.raises(ValueError, match="lengths must be positive"):
        decode_speed_curve(loaded, CONFIGS, [])


def test_timing_covers_the_first_tokens_only():
    times = [10.0 + 0.5 * i for i in range(40)]  # token i arrives at 10 + 0.5 i seconds after a start at 8
    t = DecodeTiming.from_times(8.0, times, 21)
    assert (t.tokens, t.decode_tokens, t.ttft_s, t.total_s) == (21, 20, 2.0, 12.0)
    assert t.tokens_per_s == pytest.approx(2.0)
    assert DecodeTiming.from_times(8.0, times[:5], 21).tokens == 5  # a cancelled run: what it made
    assert DecodeTiming.from_times(8.0, [], 21).tokens_per_s == 0.0


def _run(steps, timed=None):
    return {"decode_tokens": steps, "timed_tokens": steps + 1 if timed is None else timed}


def test_comparisons_need_equal_and_enough_tokens():
    assert comparable(_run(31), _run(31)) is None and comparable(_run(31), _run(31), what="timed") is None
    assert comparable(_run(31), _run(40)) == "token counts differ"
    assert comparable(_run(31), _run(15)) == "too few tokens to compare (15 decode steps)"
    assert "too few" in decode_note(_run(3)) and decode_note(_run(16)) is None
    assert "0 decode steps" in decode_note({"decode_tokens": float("nan")})  # a row that was never timed
    assert "(1 decode step)" in decode_note(_run(1))


def test_verdicts_carry_their_spread_and_do_not_rank_noise():
    from swaa_core.eval.timing import spread_verdict

    # seconds of one config against the baseline's, turn by turn (hand-computed ratios: base / new)
    assert spread_verdict([2.0, 2.2, 1.8], [1.0, 1.0, 1.0]) == "2.00× faster (1.80–2.20× over 3 turns)"
    assert spread_verdict([1.0, 1.0], [1.5, 2.0]) == "1.71× slower (0.50–0.67× over 2 turns)"  # median 0.583
    # the flip: 1.40x faster in one turn, 2.48x slower in another, identical configs
    assert spread_verdict([1.4, 1.0], [1.0, 2.48]).startswith("within noise (0.40–1.40× over 2 turns)")
    assert spread_verdict([1.0, 1.0, 1.0], [0.98, 0.99, 0.97]).startswith("within noise")  # all within 5%
    assert spread_verdict([10.0, 10.0], [15.0, 14.0], higher_is_faster=True) == "1.45× faster (1.40–1.50× over 2 turns)"
    assert spread_verdict([2.0], [1.0]) == "2.00× faster (one run each: no spread)"
    assert spread_verdict([0.0], [1.0]) == "–" and spread_verdict([], []) == "–"


def test_decode_kernels_reaches_the_model_inside_a_peft_wrapper(monkeypatch):
    """A LoRA model that is not merged runs its wrapped model's forward: decode steps there leave cuDNN's SDPA out
    too (forced CUDA case on a CPU model), and the switch is back afterwards."""
    from peft import LoraConfig, get_peft_model

    from swaa_core.eval.latency import decode_kernels

    base = build_tiny_model("llama", layers=2)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    inner = peft_model.get_base_model()
    seen, original = [], type(inner).forward

    def spy(self, *args, **kwargs):
        seen.append((kwargs["input_ids"].shape[1], torch.backends.cuda.cudnn_sdp_enabled()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(inner), "forward", spy)
    ids = torch.randint(3, 90, (1, 12))
    with torch.no_grad(), decode_kernels(peft_model, device="cuda"):
        peft_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert seen[0] == (12, True) and seen[1:] and all(step == (1, False) for step in seen[1:])
    assert torch.backends.cuda.cudnn_sdp_enabled()
