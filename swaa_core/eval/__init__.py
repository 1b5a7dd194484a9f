"""Evaluating SWAA recipes: prompts and tasks in, configurations side by side, scored results and timings out.

Kept apart because it uses the engine and the models but is used by the app and the CLI alike. ``tasks`` (long-context
task builders, one file per kind, and dataset records), ``scoring`` (exact / contains match, answer log-likelihood),
``runner`` (one prompt or task set under several configs), ``harness`` (what surrounds one generate call: streaming,
timers, peak memory, cancellation, error text), ``results`` (per-run columns, summaries, export), ``sweep`` (configs
x lengths x depths x samples, resumable), ``recipes`` (the paper's named presets and user recipes), ``cot``
(chain-of-thought switch and reasoning/answer split) and ``latency`` (like-for-like timing and decode-speed curves).
"""
