"""Checking sampled tokens against a known distribution: a processor that pins the first tokens (so every row of a
batch reaches the same context) and a bound on the counts of n independent draws."""

from __future__ import annotations

import math

import torch
from transformers import LogitsProcessor


class ForceTokens(LogitsProcessor):
    """Leaves only ``tokens[i]`` possible at new token i (i counted from ``prompt_length``); later tokens are free."""

    def __init__(self, prompt_length: int, tokens: list[int]):
        self.prompt_length, self.tokens = prompt_length, tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        i = input_ids.shape[1] - self.prompt_length
        if i >= len(self.tokens):
            return scores
        forced = torch.full_like(scores, -math.inf)
        forced[:, self.tokens[i]] = 0.0
        return forced


def assert_drawn_from(tokens: torch.Tensor, p: torch.Tensor) -> None:
    """``tokens`` (n,): n independent draws from ``p`` (V,). Each token's count within 4.5 standard deviations (+1)
    of n * p, and Pearson's chi-square over the tokens expected at least 5 times below dof + 6 * sqrt(2 dof) (a
    tail probability far below 1e-6 for a true sample; a greedy answer, every draw on one token, is far above)."""
    n = tokens.numel()
    counts = torch.bincount(tokens.cpu(), minlength=p.numel()).double()
    expected = n * p.double().cpu()
    sd = (expected * (1 - p.double().cpu())).sqrt()
    worst = int(((counts - expected).abs() - 4.5 * sd).argmax())
    assert bool(((counts - expected).abs() <= 4.5 * sd + 1).all()), (
        f"token {worst}: {int(counts[worst])} draws, {float(expected[worst]):.1f} expected"
    )
    frequent = expected >= 5
    dof = int(frequent.sum()) - 1
    chi2 = float((((counts - expected) ** 2) / expected)[frequent].sum())
    assert dof >= 10, f"only {dof + 1} tokens are expected 5 times or more: too few draws for a chi-square"
    assert chi2 < dof + 6 * math.sqrt(2 * dof), f"chi-square {chi2:.1f} over {dof} degrees of freedom"
