"""Which layers need full attention: per-layer sensitivity scores measured on calibration samples.

Three measurements, all on samples whose answer is known (built-in tasks, or a user's document + question + answer):

- ``"gain"`` (the default): the fall in the answer's teacher-forced negative log-likelihood (nats per answer token)
  when that one layer keeps full attention and every other layer slides under the base config (window, sinks, FA
  decode). It measures what a layer's full attention does to the answer through every layer above it, which is what
  the choice is about, and it can be negative: on the embedded SmolLM2 some layers made retrieval worse when full
  (docs/results.md), which attention mass cannot see. Answer tokens are passed as generated queries
  (``swaa_prompt_lengths``), so FA decode applies to them exactly as in generation; the first answer token is
  predicted by the last *prompt* token, which slides, and that is where a retrieval layer's full attention counts.
  Cost: one forward per sample for the base, then one forward per layer and sample that starts at that layer
  (:class:`LayerRunner`: the layers below it see the same inputs, so their outputs are recorded once), about
  ``samples * (1 + layers / 2)`` full forwards.
- ``"mass"``: the attention probability that the answer-predicting queries (the last prompt token and the answer
  tokens but the last) put under full attention on keys the base config's mask kind hides from them (outside the
  window and the sinks, or the chunk and the sinks), the largest over heads.
  One forward per sample (every layer on the eager kernel), but it sees only direct attention: a layer whose far
  reach changes nothing downstream scores as high, and on a model built so that one layer carries the retrieval,
  every layer with near-uniform attention scores alike (tests/swaa_core/eval/test_advisor.py).
- ``"greedy"``: forward selection on held-in NLL (start from the base, add the layer whose going full lowers the mean
  NLL most, repeat up to the budget), for layers that only help together. Cost: about ``budget * samples * layers /
  2`` forwards, ``budget`` times "gain"; not yet measured on the embedded model (too slow for the shared 2-core CPU).

Scores are in nats per answer token (mass: a probability); ``spread`` is the standard deviation over samples.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from ..engine.config import SWAAConfig
from ..engine.families import attention_modules
from ..engine.install import install, remove_swaa
from ..engine.kinds import MaskKind
from ..engine.patch import swaa
from .cot import render_prompt
from .scoring import answer_ids, reference_text
from .tasks import TaskSample, make_samples, make_task

METHODS = ("gain", "mass", "greedy")
Progress = Callable[[int, int, str], None]  # (done, total, what is being measured)


class AdviceCancelled(Exception):
    """The measurement was stopped by its cancel event between two forwards."""


@dataclass
class Calibration:
    """One sample as token ids: the rendered prompt (chat template + answer prefix) and the reference answer."""

    context: list[int]
    target: list[int]
    seed: int = 0
    task: str = ""

    @property
    def ids(self) -> torch.Tensor:
        return torch.tensor([self.context + self.target])


def calibrate(tokenizer, samples: Sequence[TaskSample], *, system: str | None = None) -> list[Calibration]:
    """Token ids of ``samples`` as the runner renders them (chat template, then the task's answer prefix, which the
    embedded model needs to state a needle instead of restating the question: FACTS.md)."""
    out = []
    for s in samples:
        rendered = render_prompt(tokenizer, s.prompt, answer_prefix=s.answer_prefix, system=system)
        context, target = answer_ids(tokenizer, rendered, reference_text(s))
        out.append(Calibration(context, target, seed=s.seed, task=s.task))
    return out


def task_samples(tokenizer, task: str, length: int, seeds: Sequence[int], **kw) -> list[TaskSample]:
    """Built-in task samples at ``length`` tokens, one per seed, depths spread over the context; ``task="doc_qa"``
    with ``document``, ``question`` and ``answer`` keywords scores a user's own text (the same sample for every
    seed)."""
    if task == "doc_qa":
        return [make_task("doc_qa", tokenizer, length_tokens=None, seed=s, **kw) for s in seeds]
    return make_samples(task, tokenizer, length_tokens=length, seeds=list(seeds), **kw)


def check_cancel(cancel) -> None:
    """Raise AdviceCancelled once ``cancel`` (a threading.Event, or a callable returning True to stop; None: never)
    says stop: called between two forwards."""
    if cancel is None:
        return
    stopped = cancel.is_set() if isinstance(cancel, threading.Event) else cancel()
    if stopped:
        raise AdviceCancelled("Stopped before the measurement finished.")


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's list of decoder layers (``model.model.layers`` for every supported family)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: no list of decoder layers found (model.model.layers).")
    return layers


class LayerRunner:
    """Teacher-forced answer NLL under a SWAA config, from any layer up.

    Changing layer ``l``'s attention leaves the inputs of layers ``0..l`` unchanged, so a forward that records each
    layer's input hidden states (:meth:`record`) lets every config that differs from it only at layers ``>= l`` run
    layers ``l..`` alone (:meth:`nll_from`): the decoder's layer list is cut to ``layers[l:]`` for one call and the
    recorded states go in as ``inputs_embeds`` (position ids, masks and rotary embeddings are rebuilt from the
    sequence; every SWAA plan stays on its attention module, so layer indices keep their meaning).
    """

    def __init__(self, model, backend: str = "auto"):
        self.model = model
        self.backend = backend
        self.layers = decoder_layers(model)
        self.device = next(model.parameters()).device

    def _kwargs(self, cal: Calibration, config: SWAAConfig | None) -> dict:
        kw = dict(use_cache=False, logits_to_keep=len(cal.target) + 1)
        if config is not None and not config.is_full_attention:
            kw["swaa_prompt_lengths"] = torch.tensor([len(cal.context)], device=self.device)
        return kw

    @torch.no_grad()
    def record(self, cal: Calibration, config: SWAAConfig | None, keep_states: bool = True):
        """(NLL per answer token, each layer's input hidden states, or [] without ``keep_states``) of one full
        forward under ``config``."""
        states: list[torch.Tensor] = []

        def keep(module, args, kwargs):
            states.append((args[0] if args else kwargs["hidden_states"]).detach())

        layers = self.layers if keep_states else []
        hooks = [layer.register_forward_pre_hook(keep, with_kwargs=True) for layer in layers]
        try:
            with swaa(self.model, config, backend=self.backend):
                logits = self.model(input_ids=cal.ids.to(self.device), **self._kwargs(cal, config)).logits
        finally:
            for h in hooks:
                h.remove()
        return answer_nll(logits, cal.target), states

    @torch.no_grad()
    def nll_from(self, cal: Calibration, config: SWAAConfig | None, states: list[torch.Tensor], start: int) -> float:
        """NLL per answer token under ``config``, running layers ``start..`` on ``states[start]`` (recorded under a
        config that agrees with ``config`` below ``start``)."""
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.model
        full_list = self.layers
        with swaa(self.model, config, backend=self.backend):
            decoder.layers = torch.nn.ModuleList(list(full_list)[start:])
            try:
                out = self.model(inputs_embeds=states[start], **self._kwargs(cal, config))
            finally:
                decoder.layers = full_list
        return answer_nll(out.logits, cal.target)


def answer_nll(logits: torch.Tensor, target: list[int]) -> float:
    """Mean negative log-likelihood (nats per token) of ``target`` from logits (1, len(target) + 1, vocab) whose
    position t predicts token t + 1."""
    logprobs = torch.log_softmax(logits[0, :-1].float(), dim=-1)
    tgt = torch.tensor(target, device=logprobs.device)
    return float(-logprobs.gather(-1, tgt[:, None]).mean())


@dataclass
class LayerScores:
    """Per-layer need for full attention: ``mean[l]`` (higher: needs it more) and ``spread[l]`` over samples.

    ``per_sample[s][l]``; ``base_nll`` is the mean NLL per answer token under the base config (gain and greedy),
    ``order`` the layers best first (greedy: the order they were added)."""

    method: str
    base: dict
    per_sample: list[list[float]]
    base_nll: float | None = None
    order: list[int] = field(default_factory=list)

    @property
    def mean(self) -> list[float]:
        return [sum(c) / len(c) for c in zip(*self.per_sample, strict=True)]

    @property
    def spread(self) -> list[float]:
        cols = list(zip(*self.per_sample, strict=True))
        out = []
        for c in cols:
            m = sum(c) / len(c)
            out.append(math.sqrt(sum((x - m) ** 2 for x in c) / (len(c) - 1)) if len(c) > 1 else 0.0)
        return out

    def ranking(self) -> list[int]:
        """Layers, the most in need of full attention first (ties: lower index first)."""
        if self.order:
            return list(self.order)
        mean = self.mean
        return sorted(range(len(mean)), key=lambda i: (-mean[i], i))

    def to_dict(self) -> dict:
        return dict(method=self.method, base=self.base, mean=self.mean, spread=self.spread, order=self.ranking(),
                    base_nll=self.base_nll, samples=len(self.per_sample))  # fmt: skip


def _with_layers(base: SWAAConfig, layers) -> SWAAConfig:
    return replace(base, non_sliding_layers=sorted(set(base.non_sliding_layers) | set(layers)))


def gain_scores(model, cals, base: SWAAConfig, *, progress: Progress | None = None, cancel=None,
                backend: str = "auto") -> LayerScores:  # fmt: skip
    """Fall in answer NLL (nats per token) when only layer l keeps full attention on top of ``base``."""
    runner = LayerRunner(model, backend)
    n = len(runner.layers)
    total, done = len(cals) * (n + 1), 0
    rows, bases = [], []
    for cal in cals:
        check_cancel(cancel)
        base_nll, states = runner.record(cal, base)
        done += 1
        row = []
        for layer in range(n):
            check_cancel(cancel)
            if progress:
                progress(done, total, f"layer {layer} full, sample {len(rows) + 1}/{len(cals)}")
            row.append(base_nll - runner.nll_from(cal, _with_layers(base, [layer]), states, layer))
            done += 1
        rows.append(row)
        bases.append(base_nll)
    if progress:
        progress(total, total, "done")
    return LayerScores("gain", base.to_dict(), rows, base_nll=sum(bases) / len(bases))


def greedy_scores(model, cals, base: SWAAConfig, budget: int, *, progress: Progress | None = None, cancel=None,
                  backend: str = "auto", candidates: Sequence[int] | None = None) -> LayerScores:  # fmt: skip
    """Forward selection: ``budget`` rounds, each adding the layer whose going full lowers mean held-in NLL most.

    ``per_sample[s][l]`` is the NLL fall layer l gave in the round it was added (0 for layers never added);
    ``candidates`` restricts the layers tried (e.g. the top of :func:`gain_scores`)."""
    runner = LayerRunner(model, backend)
    n = len(runner.layers)
    pool = list(range(n) if candidates is None else candidates)
    chosen: list[int] = []
    gains = [[0.0] * n for _ in cals]
    total = sum(len(cals) * (len(pool) - r + 1) for r in range(min(budget, len(pool))))
    done, first = 0, None
    for _ in range(min(budget, len(pool))):
        current = _with_layers(base, chosen)
        recorded = []
        for cal in cals:
            check_cancel(cancel)
            recorded.append(runner.record(cal, current))
            done += 1
        if first is None:
            first = sum(r[0] for r in recorded) / len(recorded)
        best, best_drop, best_row = None, -math.inf, None
        for layer in (x for x in pool if x not in chosen):
            row = []
            for cal, (nll, states) in zip(cals, recorded, strict=True):
                check_cancel(cancel)
                if progress:
                    progress(done, total, f"round {len(chosen) + 1}: layer {layer}")
                row.append(nll - runner.nll_from(cal, _with_layers(current, [layer]), states, layer))
                done += 1
            if sum(row) / len(row) > best_drop:
                best, best_drop, best_row = layer, sum(row) / len(row), row
        chosen.append(best)
        for s, g in enumerate(best_row):
            gains[s][best] = g
    if progress:
        progress(total, total, "done")
    return LayerScores("greedy", base.to_dict(), gains, base_nll=first, order=chosen)


class _MassRecorder:
    """Stands in for the attention recorder list: reduces each layer's probabilities to the largest (over heads)
    mass that the last ``queries`` queries put on earlier keys ``kind`` hides from them, instead of keeping them."""

    def __init__(self, kind: MaskKind, queries: int, out: list, layer: int):
        self.kind, self.queries, self.out, self.layer = kind, queries, out, layer

    def append(self, probs: torch.Tensor) -> None:
        # the queries that predict the answer: the last prompt token and every answer token but the last
        p = probs[0, :, -self.queries - 1 : -1, :].float()  # (heads, q, k)
        n_k = p.shape[-1]
        q_pos = torch.arange(n_k - self.queries - 1, n_k - 1, device=p.device)[:, None]
        k_pos = torch.arange(n_k, device=p.device)[None, :]
        # as a sliding query sees them (not full: the mass is what the kind's own rule hides)
        seen = self.kind.visible(q_pos, k_pos, torch.tensor(True), torch.tensor(False))
        outside = (k_pos <= q_pos) & ~seen
        mass = (p * outside).sum(-1).mean(-1)  # per head, averaged over the answer-predicting queries
        self.out[self.layer] = float(mass.max())


@torch.no_grad()
def mass_scores(model, cals, base: SWAAConfig, *, progress: Progress | None = None, cancel=None) -> LayerScores:
    """Largest over heads of the full-attention probability that the answer-predicting queries (the last prompt
    token and the answer tokens but the last) put on keys that ``base``'s mask kind hides from them (outside the
    window and the sinks, or the chunk and the sinks); one forward per sample, every layer on the reference (eager)
    kernel. Raises ValueError for a full-attention ``base`` (it hides nothing)."""
    kind = base.kind
    if kind is None:
        raise ValueError("Attention mass outside the window needs a sliding base config; this one is full attention.")
    modules = attention_modules(model)
    rows = []
    for k, cal in enumerate(cals):
        check_cancel(cancel)
        if progress:
            progress(k, len(cals), f"attention of sample {k + 1}/{len(cals)}")
        row = [0.0] * len(modules)
        install(model, SWAAConfig(sliding_window_size=1), "auto", all_full=True)
        try:
            for i, m in enumerate(modules):
                m._swaa_recorder = _MassRecorder(kind, len(cal.target), row, i)
            model(input_ids=cal.ids.to(next(model.parameters()).device), use_cache=False, logits_to_keep=1)
        finally:
            remove_swaa(model)
        rows.append(row)
    if progress:
        progress(len(cals), len(cals), "done")
    return LayerScores("mass", base.to_dict(), rows)


def nll_under(model, cals, config: SWAAConfig | None, *, backend: str = "auto", cancel=None) -> list[float]:
    """NLL per answer token of every sample under ``config`` (one full forward each)."""
    runner = LayerRunner(model, backend)
    out = []
    for cal in cals:
        check_cancel(cancel)
        out.append(runner.record(cal, config, keep_states=False)[0])
    return out
