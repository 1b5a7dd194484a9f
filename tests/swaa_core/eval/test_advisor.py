"""The recipe advisor: layer scores on a model built so that one known layer carries the long-range retrieval, the
budget arithmetic against hand-computed costs, the written config through SWAAConfig and `swaa run --config`, and
budgets that cannot be met."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from swaa_core import SWAAConfig, swaa
from swaa_core.cli import main
from swaa_core.engine.kinds import SinkWindow
from swaa_core.eval.advisor import (
    AdviceCancelled,
    Calibration,
    LayerRunner,
    gain_scores,
    greedy_scores,
    mass_scores,
)
from swaa_core.eval.budget import Budget, BudgetError, CostModel, full_layer_count
from swaa_core.eval.recommend import _nll_and_hit, advise, decide, periodic_patterns
from swaa_core.models.capacity import pairs_visited
from tests.helpers.tiny_models import build_tiny_model

VOCAB, NEEDLE, FILLER, CARRIER = 16, 5, 9, 2


def retrieval_model(layers: int = 4, carrier: int = CARRIER):
    """A Llama whose layer ``carrier`` averages the token identities of every key it sees (query weights 0: uniform
    attention; values and output copy the one-hot embedding into dims 16..31, which alone the LM head reads), so the
    answer token's logit rises only when that layer sees the distant needle. The other layers keep their random
    attention at a tenth of its size, and every MLP is off."""
    m = build_tiny_model("llama", layers=layers, vocab_size=VOCAB, hidden_size=32, seed=3)
    with torch.no_grad():
        m.model.embed_tokens.weight.zero_()
        m.model.embed_tokens.weight[:, :VOCAB] = torch.eye(VOCAB)
        for i, layer in enumerate(m.model.layers):
            layer.mlp.down_proj.weight.zero_()
            if i != carrier:
                layer.self_attn.o_proj.weight.mul_(0.1)
        a = m.model.layers[carrier].self_attn
        a.q_proj.weight.zero_()
        a.v_proj.weight.zero_()
        a.v_proj.weight[:, :VOCAB] = torch.eye(VOCAB)  # kv head 0 holds tokens 0-7, kv head 1 tokens 8-15
        a.o_proj.weight.zero_()
        a.o_proj.weight[VOCAB : VOCAB + 8, 0:8] = 8 * torch.eye(8)  # query head 0 (kv head 0)
        a.o_proj.weight[VOCAB + 8 :, 16:24] = 8 * torch.eye(8)  # query head 2 (kv head 1)
        m.lm_head.weight.zero_()
        m.lm_head.weight[:, VOCAB:] = 5 * torch.eye(VOCAB)
    return m


def needle_sample(filler: int = 60) -> Calibration:
    return Calibration([3, NEEDLE] + [FILLER] * filler, [NEEDLE])


BASE = SWAAConfig(sliding_window_size=8, keep_first=1, force_fa_decode=True)


@pytest.mark.parametrize("carrier", [1, 2])
def test_the_layer_that_carries_retrieval_scores_first(carrier):
    m = retrieval_model(carrier=carrier)
    cals = [needle_sample(60), needle_sample(45)]
    gain = gain_scores(m, cals, BASE)
    assert gain.ranking()[0] == carrier
    assert gain.mean[carrier] > 10 * max(abs(g) for i, g in enumerate(gain.mean) if i != carrier)
    assert len(gain.spread) == 4 and gain.spread[carrier] >= 0
    assert greedy_scores(m, cals, BASE, 2).order[0] == carrier


def test_the_needle_inside_the_window_gives_no_layer_anything_to_gain():
    gain = gain_scores(retrieval_model(), [needle_sample(filler=4)], BASE)  # 6 tokens: all within W=8
    assert max(abs(g) for g in gain.mean) < 1e-5


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_running_from_a_layer_up_equals_the_whole_forward(family):
    m = build_tiny_model(family, layers=4, seed=1)
    torch.manual_seed(0)
    ids = torch.randint(3, 90, (50,)).tolist()
    cal = Calibration(ids[:46], ids[46:])
    runner = LayerRunner(m)
    _, states = runner.record(cal, BASE)
    for layer in range(4):
        cfg = SWAAConfig(**{**BASE.to_dict(), "non_sliding_layers": [layer]})
        whole = runner.record(cal, cfg, keep_states=False)[0]
        assert runner.nll_from(cal, cfg, states, layer) == pytest.approx(whole, abs=1e-5)
    assert len(runner.layers) == 4  # the layer list is put back


@pytest.mark.parametrize("cfg", [None, BASE, SWAAConfig(sliding_window_size=8, keep_first=1)])
def test_a_hit_is_what_generate_writes_and_its_nll_the_forced_one(cfg):
    m = build_tiny_model("llama", layers=3, seed=2)
    torch.manual_seed(0)
    context = torch.randint(3, 90, (40,)).tolist()
    with swaa(m, cfg):
        written = m.generate(torch.tensor([context]), max_new_tokens=3, do_sample=False)[0, 40:].tolist()
    runner = LayerRunner(m)
    own = Calibration(context, written)
    nll, hit = _nll_and_hit(runner, own, cfg)
    assert hit and nll == pytest.approx(runner.record(own, cfg, keep_states=False)[0], abs=1e-5)
    other = Calibration(context, [written[0], (written[1] + 1) % 90 + 3, written[2]])
    nll, hit = _nll_and_hit(runner, other, cfg)
    assert not hit and nll == pytest.approx(runner.record(other, cfg, keep_states=False)[0], abs=1e-6)


def test_mass_counts_only_keys_outside_the_window_and_sinks():
    scores = mass_scores(retrieval_model(), [needle_sample(60)], BASE)
    # the carrier attends uniformly: the last prompt query (position 61) sees 62 keys, 8 in its window, 1 sink
    assert scores.mean[CARRIER] == pytest.approx(53 / 62, abs=1e-4)
    assert all(0 <= s <= 1 for s in scores.mean)


CHUNKED = SWAAConfig(sliding_window_size=8, keep_first=1, force_fa_decode=True, mask_kind="chunked")


def test_mass_under_chunks_counts_only_keys_outside_the_querys_chunk_and_sinks():
    scores = mass_scores(retrieval_model(), [needle_sample(60)], CHUNKED)
    # query 61 is in chunk 56..63: it sees keys 56..61 (6) and sink 0 of the 62 it would see under full attention
    assert scores.mean[CARRIER] == pytest.approx(55 / 62, abs=1e-4)
    with pytest.raises(ValueError, match="full attention"):
        mass_scores(retrieval_model(), [needle_sample(60)], SWAAConfig())


def test_gain_under_chunks_is_the_nll_fall_of_whole_chunked_forwards():
    """Each layer's gain equals base NLL minus the NLL of a whole forward with that layer full and every other layer
    still chunked; the same numbers under a sink window differ, so a config that lost its kind would show."""
    m = build_tiny_model("llama", layers=4, seed=1)
    torch.manual_seed(0)
    ids = torch.randint(3, 90, (50,)).tolist()
    cal = Calibration(ids[:46], ids[46:])
    runner = LayerRunner(m)
    base_nll = runner.record(cal, CHUNKED, keep_states=False)[0]
    want = []
    for layer in range(4):
        cfg = SWAAConfig(**{**CHUNKED.to_dict(), "non_sliding_layers": [layer]})
        want.append(base_nll - runner.record(cal, cfg, keep_states=False)[0])
    assert gain_scores(m, [cal], CHUNKED).mean == pytest.approx(want, abs=1e-5)
    window = SWAAConfig(**{**CHUNKED.to_dict(), "mask_kind": "sink_window"})
    assert gain_scores(m, [cal], window).mean != pytest.approx(want, abs=1e-3)


def test_a_set_cancel_event_stops_before_the_next_forward():
    stop = threading.Event()
    stop.set()
    with pytest.raises(AdviceCancelled):
        gain_scores(retrieval_model(), [needle_sample()], BASE, cancel=stop)
    calls = []
    with pytest.raises(AdviceCancelled):
        gain_scores(retrieval_model(), [needle_sample()], BASE, cancel=lambda: len(calls) > 2,
                    progress=lambda d, t, w: calls.append(d))  # fmt: skip
    assert len(calls) == 3


class TableRunner:
    """Stands in for LayerRunner: the held-in NLL of a config comes from a hand-written table keyed by (FA decode,
    sinks), so the decision rule is checked on its own."""

    def __init__(self, table):
        self.layers, self.table, self.seen = [None] * 4, table, []

    def record(self, cal, cfg, keep_states=True):
        assert cfg.non_sliding_layers == [2] and cfg.sliding_window_size == 8
        self.seen.append((cfg.force_fa_decode, cfg.keep_first))
        return self.table[(cfg.force_fa_decode, cfg.keep_first)], []


@pytest.mark.parametrize(
    "table,allow,chosen",
    [
        ({(True, 4): 1.0, (True, 0): 1.5, (False, 4): 2.0, (False, 0): 2.5}, True, (True, 4)),
        ({(True, 4): 1.0, (True, 0): 1.04, (False, 4): 2.0, (False, 0): 2.5}, True, (True, 0)),  # sinks: < 0.05
        ({(True, 4): 1.0, (True, 0): 1.5, (False, 4): 1.03, (False, 0): 2.5}, True, (False, 4)),  # FA decode: < 0.05
        ({(False, 4): 1.0, (False, 0): 0.9}, False, (False, 0)),  # sinks that hurt are left out
    ],
)
def test_fa_decode_and_sinks_are_kept_only_where_they_lower_held_in_nll(table, allow, chosen):
    runner = TableRunner(table)
    base = SWAAConfig(sliding_window_size=8, keep_first=4, force_fa_decode=allow)
    fad, keep, record = decide(runner, [needle_sample()], [2], base)
    assert (fad, keep) == chosen
    assert sorted(runner.seen) == sorted(table)  # every combination measured once, no other
    assert record["fa_decode"]["nll_off"] == min(v for (f, _), v in table.items() if not f)


# ------------------------------------------------------------------------------------------- budget arithmetic


@pytest.mark.parametrize("n,window,sinks", [(1, 4, 0), (10, 4, 0), (10, 4, 2), (10, 4, 9), (3, 8, 2), (50, 7, 3)])
def test_pairs_visited_counts_what_the_mask_shows(n, window, sinks):
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    visible = SinkWindow(window, sinks).visible(
        q, k, torch.ones(1, n, dtype=torch.bool), torch.zeros(n, 1, dtype=torch.bool)
    )
    assert pairs_visited(n, window, sinks) == int(visible.sum())


def test_prefill_share_and_kv_bytes_match_hand_computed_costs():
    m = build_tiny_model("llama", layers=4)  # hidden 32, 4 heads x 8, 2 kv heads x 8, MLP 64
    cost = CostModel.of(m)
    n, w, s = 100, 10, 2
    linear = 2 * (32 * 32 * 2 + 32 * 16 * 2) + 2 * 3 * 32 * 64  # q, o; k, v; gate, up, down (per token, layer)
    full_pairs, slide_pairs = 100 * 101 // 2, (55 + 90 * 10) + (1 + 89 * 2)  # window; sinks before the window
    one_full = SWAAConfig(sliding_window_size=w, keep_first=s, non_sliding_layers=[1])
    expected = (4 * n * linear + 4 * 32 * (full_pairs + 3 * slide_pairs)) / (4 * n * linear + 4 * 32 * 4 * full_pairs)
    assert cost.prefill_share(n, one_full) == pytest.approx(expected, rel=1e-12)
    per_token = 2 * 2 * 8 * 4  # k and v, 2 kv heads x 8 dims, float32
    assert cost.kv_bytes(n, one_full) == per_token * (n + 3 * (w + s))
    fa_decode = SWAAConfig(sliding_window_size=w, keep_first=s, force_fa_decode=True)
    assert cost.kv_bytes(n, fa_decode) == cost.kv_bytes(n, None) == per_token * 4 * n


def test_budget_costs_under_chunks_match_hand_counted_pairs_and_slots():
    """8 tokens in chunks of 3 with 1 sink: queries see 1, 2, 3, 2 (sink + own), 3, 4, 2, 3 keys = 20 pairs (a window
    of 3 with 1 sink: 1, 2, 3, 3, 4, 4, 4, 4 = 25); an evicting layer keeps 1 sink + 3 slots."""
    cost = CostModel.of(build_tiny_model("llama", layers=4))
    n, linear = 8, 2 * (32 * 32 * 2 + 32 * 16 * 2) + 2 * 3 * 32 * 64

    def share(k, pairs):  # k full layers, the rest visiting ``pairs``
        return (4 * n * linear + 4 * 32 * (k * 36 + (4 - k) * pairs)) / (4 * n * linear + 4 * 32 * 4 * 36)

    base = SWAAConfig(sliding_window_size=3, keep_first=1, mask_kind="chunked")
    one_full = SWAAConfig(**{**base.to_dict(), "non_sliding_layers": [1]})
    assert cost.prefill_share(n, one_full) == pytest.approx(share(1, 20), rel=1e-12)
    assert cost.kv_bytes(n, one_full) == 2 * 2 * 8 * 4 * (n + 3 * 4)
    between = Budget(prefill=(share(2, 20) + share(2, 25)) / 2)  # two chunked layers fit, two windowed do not
    assert share(1, 25) < share(2, 20) < share(2, 25) < share(3, 20)
    assert full_layer_count(between, cost, n, base) == 2
    assert full_layer_count(between, cost, n, SWAAConfig(sliding_window_size=3, keep_first=1)) == 1
    with pytest.raises(BudgetError, match="with chunked 3 \\+ 1 sinks at 8 tokens"):
        full_layer_count(Budget(prefill=0.01), cost, n, base)


def test_a_budget_allows_the_most_full_layers_that_fit():
    cost = CostModel.of(build_tiny_model("llama", layers=4))
    n, w = 100, 10
    shares = [
        cost.prefill_share(n, SWAAConfig(sliding_window_size=w, non_sliding_layers=list(range(k)))) for k in range(5)
    ]
    base = SWAAConfig(sliding_window_size=w)
    assert full_layer_count(Budget(prefill=(shares[2] + shares[3]) / 2), cost, n, base) == 2
    assert full_layer_count(Budget(prefill=shares[1]), cost, n, base) == 1
    kv = [cost.kv_bytes(n, SWAAConfig(sliding_window_size=w, non_sliding_layers=list(range(k)))) for k in range(5)]
    assert full_layer_count(Budget(kv_gib=kv[3] / 2**30), cost, n, base) == 3
    assert full_layer_count(Budget(full_layers=3), cost, n, base) == 3


@pytest.mark.parametrize(
    "budget,says",
    [
        (Budget(full_layers=0), "at least 1"),
        (Budget(full_layers=4), "is full attention"),
        (Budget(full_layers=9), "more than it has"),
        (Budget(prefill=0.05), "out of reach: with SWA 10 at 100 tokens, every layer sliding costs"),
        (Budget(prefill=1.0), "allows full attention in every layer"),
        (Budget(kv_gib=1e-9), "out of reach"),
    ],
)
def test_budgets_that_cannot_be_met_say_why(budget, says):
    cost = CostModel.of(build_tiny_model("llama", layers=4))
    with pytest.raises(BudgetError, match=says):
        full_layer_count(budget, cost, 100, SWAAConfig(sliding_window_size=10))


def test_exactly_one_budget():
    with pytest.raises(BudgetError, match="exactly one"):
        Budget(full_layers=2, prefill=0.5)
    with pytest.raises(BudgetError, match="exactly one"):
        Budget()


def test_periodic_patterns_at_the_papers_budgets():
    assert periodic_patterns(30, 8) == {f"every 4 from {o}": list(range(o, 30, 4)) for o in range(4)}
    assert list(periodic_patterns(30, 15).values()) == [list(range(0, 30, 2)), list(range(1, 30, 2))]
    assert len(periodic_patterns(30, 4)) == 8


# ------------------------------------------------------------------------------------------- the whole advice


def test_advise_recommends_and_checks_on_other_seeds(tiny_folder):
    from swaa_core import load_model

    loaded = load_model(tiny_folder)
    advice = advise(loaded.model, loaded.tokenizer, length=300, budget=Budget(full_layers=1), window=16, sinks=2,
                    samples=1, held_out=1)  # fmt: skip
    assert set(advice.calibration_seeds).isdisjoint(advice.held_out_seeds)
    assert len(advice.config.non_sliding_layers) == 1
    assert advice.config.non_sliding_layers[0] == advice.scores.ranking()[0]
    labels = [c.label for c in advice.candidates]
    assert labels[0] == "advisor" and labels[-1] == "full attention" and "every 4 from 0" in labels
    full = advice.candidates[-1]
    assert full.prefill_share == 1 and full.config is None
    assert SWAAConfig.from_dict(advice.upstream()["swaa_config"]) == advice.config
    json.dumps(advice.to_dict())


def test_swaa_advise_writes_a_config_that_swaa_run_reads(tiny_folder, tmp_path, capsys):
    out = tmp_path / "advice.json"
    argv = ["advise", "--model", tiny_folder, "--length", "300", "--window", "16", "--keep-first", "2",
            "--full-layers", "2", "--samples", "1", "--held-out", "1", "--out", str(out), "--json", "-q"]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = json.loads(out.read_text())
    cfg = SWAAConfig.from_dict(written["swaa_config"])
    assert written["swaa_config"] == printed["swaa_config"] and len(cfg.non_sliding_layers) == 2
    assert cfg.sliding_window_size == 16
    assert main(["run", "--model", tiny_folder, "Hi", "-n", "2", "--json", "--config", str(out)]) == 0
    runs = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert runs[1]["config"] == written["swaa_config"]


@pytest.mark.parametrize(
    "extra,says",
    [
        (["--full-layers", "0"], "argument --full-layers: must be a whole number from 1"),
        (["--full-layers", "7"], "this model has 4 layers: 7 full layers is more than it has"),
        (["--prefill-budget", "0.01"], "is out of reach"),
        (["--prefill-budget", "1.5"], "argument --prefill-budget: must be a number > 0 and < 1"),
        (["--full-layers", "2", "--question", "q"], "--question only applies with --task doc_qa"),
    ],
)
def test_swaa_advise_refuses_bad_budgets_by_name(tiny_folder, tmp_path, capsys, extra, says):
    argv = ["advise", "--model", tiny_folder, "--length", "300", "-w", "16", "--out", str(tmp_path / "a.json"), *extra]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's range check
        code = e.code
    assert code != 0
    assert says.lower() in capsys.readouterr().err.lower()
    assert not (tmp_path / "a.json").exists()
