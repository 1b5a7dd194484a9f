"""The recipe advisor: layer scores -> the full layers a budget allows -> FA decode and sinks -> a check on held-out
samples beside the paper's periodic patterns with the same budget.

:func:`advise` is what ``swaa advise``, the app's advisor panel and its API endpoint call. Calibration and held-out
samples come from disjoint seeds, so the check measures the choice, not the samples it was fitted to. Accuracy is
greedy generation: a sample counts when ``generate`` (under the candidate's config, FA decode as in real use) writes
the answer's tokens exactly; NLL is the teacher-forced NLL per answer token.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from ..engine.config import SWAAConfig
from .advisor import (
    METHODS,
    AdviceCancelled,
    Calibration,
    LayerRunner,
    LayerScores,
    Progress,
    answer_nll,
    calibrate,
    check_cancel,
    gain_scores,
    greedy_scores,
    mass_scores,
    task_samples,
)
from .budget import Budget, BudgetError, CostModel, full_layer_count, layered

__all__ = ["Advice", "AdviceCancelled", "Budget", "BudgetError", "Candidate", "advise", "periodic_patterns"]

HELD_OUT_SEED = 0  # held-out samples use seeds 0.. ; calibration seeds start far above (CALIBRATION_SEED)
CALIBRATION_SEED = 10_000
TOLERANCE = 0.05  # nats per answer token: FA decode / sinks are kept only when they lower held-in NLL by more


@dataclass
class Candidate:
    """One configuration checked on the held-out samples."""

    label: str
    kind: str  # "advisor", "periodic", "swa" (no full layer), "full"
    config: dict | None  # upstream swaa_config; None: full attention
    full_layers: list[int]
    accuracy: float  # greedy generation writes the answer's tokens exactly: fraction of held-out samples
    nll: float  # mean NLL per answer token on held-out samples
    nll_spread: float
    seconds: float  # median forward time over held-out samples (prompt + answer tokens, this machine)
    prefill_share: float  # FLOP model: prefill FLOPs as a fraction of full attention's
    kv_bytes: int  # KV cache at the context length (memory estimate)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Advice:
    """What :func:`advise` found: the recommended config, the scores it came from, the decisions and the check."""

    model: str
    length: int
    window: int
    budget: str
    full_layers: int  # how many layers the budget allowed
    scores: LayerScores
    config: SWAAConfig
    decisions: dict  # {"fa_decode": {...}, "sinks": {...}}: held-in NLL with / without, and what was chosen
    candidates: list[Candidate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    calibration_seeds: list[int] = field(default_factory=list)
    held_out_seeds: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def upstream(self) -> dict:
        """The recommendation as upstream writes it: ``{"swaa_config": {...}}`` (``swaa run --config`` reads it)."""
        return {"swaa_config": self.config.to_dict()}

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("scores", "config", "candidates")}
        out.update(scores=self.scores.to_dict(), swaa_config=self.config.to_dict(),
                   candidates=[c.to_dict() for c in self.candidates])  # fmt: skip
        return out


def periodic_patterns(num_layers: int, k: int) -> dict[str, list[int]]:
    """The paper's interleaving at the same budget: every ``s``-th layer from every offset, s = round(L / k) (30
    layers: k=8 -> every 4th, the paper's "1/4"; k=4 -> every 8th; k=15 -> every 2nd, "1/2"). Offsets whose pattern
    holds fewer layers than ``k`` are kept (they spend less); none holds more than ``k`` + 1."""
    step = max(1, round(num_layers / k))
    return {f"every {step} from {o}": list(range(o, num_layers, step)) for o in range(step)}


def _select(scores: LayerScores, k: int) -> list[int]:
    return sorted(scores.ranking()[:k])


def _phase(progress: Progress | None, name: str) -> Progress | None:
    if progress is None:
        return None
    return lambda done, total, what: progress(done, total, f"{name}: {what}")


def _nlls(runner: LayerRunner, cals, cfg, cancel) -> list[float]:
    out = []
    for cal in cals:
        check_cancel(cancel)
        out.append(runner.record(cal, cfg, keep_states=False)[0])
    return out


def decide(runner: LayerRunner, cals, layers, base: SWAAConfig, *, cancel=None,
           progress: Progress | None = None) -> tuple[bool, int, dict]:  # fmt: skip
    """FA decode and sinks as their own decisions, with ``layers`` full and every other layer sliding under ``base``
    (its ``force_fa_decode``: the FA decode that may be chosen, False: none; its ``keep_first``: the sinks asked for):
    the held-in mean NLL of each combination. FA decode is kept when the best combination with it beats the best
    without it by more than ``TOLERANCE``; then, with FA decode settled, sinks by the same rule. Returns (fa_decode,
    keep_first, the NLLs behind both); :func:`settled` turns them into the config."""
    fads = (True, False) if base.force_fa_decode else (False,)
    options = [(fad, k) for fad in fads for k in dict.fromkeys((base.keep_first, 0))]
    table = {}
    for i, (fad, k) in enumerate(options):
        if progress:
            progress(i, len(options), f"FA decode {'on' if fad else 'off'}, {k} sinks")
        cfg = layered(settled(base, fad, k), len(runner.layers), layers)
        table[(fad, k)] = statistics.fmean(_nlls(runner, cals, cfg, cancel))

    def best(**fixed):
        nlls = [v for (fad, k), v in table.items() if all(dict(fad=fad, sinks=k > 0)[f] == x for f, x in fixed.items())]
        return min(nlls) if nlls else None

    fad = _helps(best(fad=True), best(fad=False))
    keep = base.keep_first if _helps(best(fad=fad, sinks=True), best(fad=fad, sinks=False)) else 0
    record = {
        "fa_decode": dict(chosen=fad, allowed=bool(base.force_fa_decode), nll_on=best(fad=True),
                          nll_off=best(fad=False)),
        "sinks": dict(chosen=keep, asked=base.keep_first, nll_with=best(fad=fad, sinks=True),
                      nll_without=best(fad=fad, sinks=False)),
        "tolerance": TOLERANCE,
    }  # fmt: skip
    return fad, keep, record


def settled(base: SWAAConfig, fa_decode: bool, keep_first: int) -> SWAAConfig:
    """``base`` with the FA decode (on: ``base``'s own, every layer or its list) and sinks :func:`decide` chose."""
    return replace(base, force_fa_decode=base.force_fa_decode if fa_decode else False, keep_first=keep_first)


def _helps(with_it: float | None, without: float | None) -> bool:
    """Whether an option earns its cost: it was measured, and it lowers NLL by more than TOLERANCE."""
    if with_it is None:
        return False
    return without is None or without - with_it > TOLERANCE


@torch.no_grad()
def check(runner: LayerRunner, cals, cost: CostModel, length: int, configs: dict, *, kinds: dict, cancel=None,
          progress: Progress | None = None) -> list[Candidate]:  # fmt: skip
    """Every config on the held-out samples, in turns (sample by sample, configs alternating, so machine load
    spreads over all of them): accuracy, NLL, forward time, and the cost model's prefill share and KV bytes."""
    stats = {label: ([], [], []) for label in configs}
    total, done = len(cals) * len(configs), 0
    for cal in cals:
        for label, cfg in configs.items():
            check_cancel(cancel)
            if progress:
                progress(done, total, label)
            t0 = time.perf_counter()
            nll, hit = _nll_and_hit(runner, cal, cfg)
            stats[label][2].append(time.perf_counter() - t0)
            stats[label][0].append(nll)
            stats[label][1].append(hit)
            done += 1
    out = []
    for label, cfg in configs.items():
        nlls, hits, secs = stats[label]
        out.append(Candidate(
            label=label, kind=kinds[label], config=None if cfg is None else cfg.to_dict(),
            full_layers=[] if cfg is None else list(cfg.non_sliding_layers), accuracy=sum(hits) / len(hits),
            nll=statistics.fmean(nlls), nll_spread=statistics.stdev(nlls) if len(nlls) > 1 else 0.0,
            seconds=statistics.median(secs), prefill_share=cost.prefill_share(length, cfg),
            kv_bytes=cost.kv_bytes(length, cfg),
        ))  # fmt: skip
    return out


def _nll_and_hit(runner: LayerRunner, cal: Calibration, cfg) -> tuple[float, bool]:
    """(NLL per answer token, whether greedy generation reproduces the answer's tokens) for one sample.

    The hit comes from ``generate`` (greedy, the answer's length in new tokens), not from teacher forcing: forced,
    every answer token after the first is predicted from the true earlier ones, and under FA decode those queries
    see the whole prompt, so a forced "hit" needs little more than the first token right. When the generation
    matches, its raw logits are the teacher-forced ones (same prefix), so the NLL costs nothing more; otherwise one
    teacher-forced forward gives it."""
    from ..engine.patch import swaa
    from .latency import greedy_generation_config

    model = runner.model
    ids = torch.tensor([cal.context], device=runner.device)
    gen = greedy_generation_config(model, len(cal.target))
    with swaa(model, cfg, backend=runner.backend):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gen, output_logits=True)
    new = out.sequences[0, ids.shape[1] :].tolist()
    if new == cal.target:
        return answer_nll(torch.stack([*out.logits, out.logits[-1]], dim=1), cal.target), True
    return runner.record(cal, cfg, keep_states=False)[0], False


def advise(model, tokenizer, *, length: int, budget: Budget, window: int = 256, sinks: int = 16,
           samples: int = 2, held_out: int = 2, task: str = "needle", method: str = "gain", fa_decode: bool = True,
           backend: str = "auto", progress: Progress | None = None, cancel=None, model_name: str = "",
           **task_kw) -> Advice:  # fmt: skip
    """Recommend which layers keep full attention for ``model`` at ``length`` tokens under ``budget``.

    ``samples`` calibration samples (seeds from ``CALIBRATION_SEED``) score the layers by ``method`` (see
    :mod:`.advisor`); the budget sets how many layers; FA decode (when ``fa_decode`` allows it and the budget is not
    a KV cap below full attention's) and ``sinks`` are then kept only where they lower held-in NLL; ``held_out``
    samples (seeds from ``HELD_OUT_SEED``) check the recommendation beside every offset of the periodic pattern with
    the same budget, plain SWA and full attention. ``task_kw`` goes to the task (``document``, ``question``,
    ``answer`` for ``task="doc_qa"``, the user's own text). Raises :class:`BudgetError`, ``TaskError``,
    :class:`AdviceCancelled`."""
    if method not in METHODS:
        raise ValueError(f"Unknown scoring method {method!r}; choose one of {', '.join(METHODS)}.")
    for name, v in (("samples", samples), ("held_out", held_out)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {v!r}.")
    t0 = time.perf_counter()
    cost = CostModel.of(model)
    n_layers = cost.num_layers
    notes = []
    allow_fad = fa_decode
    if budget.kv_gib is not None and fa_decode:
        full_kv = cost.kv_bytes(length, None)
        if full_kv > budget.kv_gib * 2**30:
            allow_fad = False
            notes.append("FA decode keeps every key in every layer, so under a KV cap below full attention's "
                         "it is left off.")  # fmt: skip
    base = SWAAConfig(sliding_window_size=window, keep_first=sinks, force_fa_decode=allow_fad).validate(n_layers)
    k = full_layer_count(budget, cost, length, base)
    cal_seeds = list(range(CALIBRATION_SEED, CALIBRATION_SEED + samples))
    out_seeds = list(range(HELD_OUT_SEED, HELD_OUT_SEED + held_out))
    cals = calibrate(tokenizer, task_samples(tokenizer, task, length, cal_seeds, **task_kw))
    outs = calibrate(tokenizer, task_samples(tokenizer, task, length, out_seeds, **task_kw))
    if task == "doc_qa":
        notes.append("One document: calibration and held-out samples are the same text, so the check is not held out.")
    kw = dict(progress=_phase(progress, "scores"), cancel=cancel)
    if method == "gain":
        scores = gain_scores(model, cals, base, backend=backend, **kw)
    elif method == "mass":
        scores = mass_scores(model, cals, base, **kw)
    else:
        scores = greedy_scores(model, cals, base, k, backend=backend, **kw)
    chosen = _select(scores, k)
    runner = LayerRunner(model, backend)
    fad, keep, decisions = decide(runner, cals, chosen, base, cancel=cancel,
                                  progress=_phase(progress, "FA decode and sinks"))  # fmt: skip
    final = settled(base, fad, keep)
    config = layered(final, n_layers, chosen)
    configs, kinds = {"advisor": config}, {"advisor": "advisor"}
    for label, layers in periodic_patterns(n_layers, k).items():
        configs[label], kinds[label] = layered(final, n_layers, layers), "periodic"
    configs["SWA (no full layer)"], kinds["SWA (no full layer)"] = layered(final, n_layers, []), "swa"
    configs["full attention"], kinds["full attention"] = None, "full"
    candidates = check(runner, outs, cost, length, configs, kinds=kinds, cancel=cancel,
                       progress=_phase(progress, "held-out check"))  # fmt: skip
    return Advice(model=model_name, length=length, window=window, budget=budget.describe(), full_layers=k,
                  scores=scores, config=config, decisions=decisions, candidates=candidates, notes=notes,
                  calibration_seeds=cal_seeds, held_out_seeds=out_seeds,
                  seconds=time.perf_counter() - t0)  # fmt: skip
