"""The side-by-side comparison as data, shared by the page's Compare tab and the API's /compare: the request checked
once (RunOptions, Comparison.build), its columns streamed, its exports, and the attention its maps read.

All model work is swaa_core's (runner.run_one, capture_attention); nothing here knows about widgets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from swaa_core.engine.config import SWAAConfig
from swaa_core.eval.harness import ContextOverflowError, check_context
from swaa_core.eval.run_spec import RunSpec

from . import maps
from .board import ColumnView
from .columns import ColumnSpec, columns_for
from .model_service import ADAPTERS, loaded_model, num_layers
from .prompts import Prompt, model_input, model_input_tokens, token_count
from .runs import CANCELS, stream_columns
from .state import COT_LABEL, Strategy, checked_flag, decode_path_choice, max_new_tokens_of, seed_of
from .temp_files import write_temp

MAX_ATTENTION_TOKENS = 4096  # the reference kernel holds (heads, n, n) probabilities: ~600 MB at 4K for SmolLM2
# The page's CSV/JSON export of one comparison. Not swaa_core.eval.results.COLUMNS: those are a sweep file's, with
# the sweep's coordinates (cell id, window, length target, depth, ...), and without the reasoning text and the
# padding tokens of the timing that a visitor's export keeps.
# A figure a stopped column did not measure is null in the JSON, empty in the CSV, "–" on the page.
RESULT_FIELDS = (
    "label", "correct", "answer_text", "output_text", "reasoning_text", "answer_logprob", "prompt_tokens",
    "generated_tokens", "ttft_s", "prefill_s", "decode_tokens_per_s", "decode_tokens", "timed_tokens",
    "timed_total_s", "timing_extra_tokens", "decode_path", "decode_reason", "setup_s", "total_s", "kv_cache_bytes",
    "peak_memory_bytes", "backend", "cancelled", "error", "notes", "config",
)  # fmt: skip


@dataclass(frozen=True)
class RunOptions:
    """What a comparison runs with besides the strategy and the prompt (the widgets of the same names); :meth:`spec`
    makes the run value of them."""

    cot: bool = False
    adapter: str | None = ""
    max_new_tokens: int = 12
    pinned: list[dict] | None = None  # [{"label", "config", "adapter"}], checked by state.parse_pinned
    decode_path: str = "auto"  # every column's decode path: auto / fixed / eager (state.decode_path_choice)

    def spec(self) -> RunSpec:
        """The run value of these widgets (ValueError in the page's words for Max new tokens beyond the slider, or a
        decode path that is none of the choice's; RunSpec checks the rest). The other settings keep RunSpec's
        defaults, as ``swaa run`` does without its options."""
        max_new = max_new_tokens_of(self.max_new_tokens)
        return RunSpec(max_new_tokens=max_new, cot=checked_flag(self.cot, COT_LABEL),
                       decode_path=decode_path_choice(self.decode_path))  # fmt: skip


@dataclass
class Comparison:
    """One validated comparison request: the model, its columns (full attention first), the sample and the one run
    value every column runs under."""

    loaded: object
    config: SWAAConfig
    columns: list[ColumnSpec]
    sample: object
    spec: RunSpec
    seed: int

    @classmethod
    def build(cls, active_model, strategy: Strategy, prompt: Prompt, options: RunOptions) -> Comparison:
        """Raises ValueError with a message for the user when anything is out of range or the prompt does not fit
        the model."""
        spec = options.spec()
        loaded = loaded_model(active_model)
        n = num_layers(loaded)
        cfg = strategy.to_config(n)
        columns = columns_for(cfg, options.pinned, n, (options.adapter or "").strip())  # spaces only: no adapter
        if prompt.source == "task":  # a task asked longer than the context is refused before its haystack is built
            _check_tokens(loaded, prompt.task_length(), spec.max_new_tokens, from_task=True)
        sample = prompt.sample(loaded.tokenizer)
        request = cls(loaded, cfg, columns, sample, spec, seed_of(prompt.seed))
        _check_length(loaded, sample, spec.max_new_tokens, spec.cot, from_task=prompt.source == "task")
        return request

    def stream(self, session: str) -> Iterator[list[ColumnView]]:
        """The columns' views while they stream, the last time complete; the session's Stop button cancels."""
        cancel = CANCELS.start(session)
        try:
            yield from stream_columns(
                lambda name: ADAPTERS.get(self.loaded, name), self.sample, self.columns, spec=self.spec,
                seed=self.seed, cancel=cancel, registry=CANCELS,
            )  # fmt: skip
        finally:
            cancel.set()  # also stops the worker when the page closes mid-run
            CANCELS.finish(session, cancel)

    def rows(self, views: list[ColumnView]) -> list[dict]:
        spec = self.spec
        meta = {"model": self.loaded.name, "task": self.sample.task, "seed": self.seed, "cot": spec.cot,
                "max_new_tokens": spec.max_new_tokens, "decode_path_asked": spec.decode_path.value}  # fmt: skip
        return result_rows(views, meta)

    def last_run(self, views: list[ColumnView]) -> dict:
        """What the attention maps and mask pictures need of this run once it finished (JSON, kept in the page's
        state): the sample, the columns' configs and the prompt tokens the model read."""
        tokens = next((v.result.prompt_tokens for v in views if v.result and v.result.prompt_tokens), 0)
        return {
            "sample": self.sample.to_dict(),
            "columns": [(c.label, c.config.to_dict() if c.config else None) for c in self.columns],
            "prompt_tokens": tokens or model_input_tokens(self.loaded.tokenizer, self.sample, cot=self.spec.cot),
            "cot": self.spec.cot,  # the maps read what the run's model read
        }

    def shown_layer(self, current: int) -> int:
        """The layer the maps show after the run: the chosen one if it slides (the interesting case), else the first
        sliding layer after it."""
        if self.config.layer_slides(current):
            return current
        return next((i for i in range(current, current + 1000) if self.config.layer_slides(i)), current)


def _check_length(loaded, sample, max_new: int, cot: bool, *, from_task: bool) -> None:
    _check_tokens(loaded, model_input_tokens(loaded.tokenizer, sample, cot=cot), max_new, from_task=from_task)


def _check_tokens(loaded, n: int, max_new: int, *, from_task: bool) -> None:
    try:
        check_context(loaded.model, n, max_new, info=loaded.info)
    except ContextOverflowError as e:  # the same rule as every run; the page's own words and controls
        shorter = "Lower the task's Length" if from_task else "Shorten the text"
        raise ValueError(
            f"The prompt is too long for {loaded.name}: {n:,} prompt tokens + {max_new} new tokens exceed its "
            f"{e.limit:,}-token context by {n + max_new - e.limit:,} tokens. {shorter} or lower Max new "
            "tokens."
        ) from None


def result_rows(views: list[ColumnView], meta: dict) -> list[dict]:
    rows = []
    for view in views:
        if view.result is None:
            continue
        full = view.result.to_dict()
        row = {**meta, **{k: full.get(k) for k in RESULT_FIELDS}}
        row["config"] = json.dumps(row["config"]) if row["config"] is not None else ""
        rows.append(row)
    return rows


def export_files(rows: list[dict]) -> tuple[str | None, str | None]:
    """The results as CSV and JSON files (None, None when no column finished)."""
    import pandas as pd

    if not rows:
        return None, None
    csv = write_temp(pd.DataFrame(rows).to_csv(index=False), "swaa-results.csv")
    data = write_temp(json.dumps(rows, indent=2, default=str, ensure_ascii=False), "swaa-results.json")
    return csv, data


# ---------------------------------------------------------------- what the attention maps read
class PromptTooLongForMaps(ValueError):
    """The run's prompt is longer than the maps are drawn for (MAX_ATTENTION_TOKENS)."""


@dataclass
class AttentionMaps:
    """One layer's attention, full attention and one SWAA column, on the prompt the run's model read."""

    label: str  # the SWAA column's
    config: SWAAConfig
    layer: int
    full: maps.PooledAttention
    swaa: maps.PooledAttention
    needle_tokens: tuple[int, int] | None  # token span of the fact, where the task has one


def attention_maps(loaded, last_run: dict, column: int | None, layer: int) -> AttentionMaps:
    """Capture ``layer``'s attention probabilities under full attention and under the config of ``column`` (an index
    into ``last_run["columns"]``; None: the last one), on the chat-templated prompt the run read, pooled for the
    screen. PromptTooLongForMaps past MAX_ATTENTION_TOKENS."""
    from swaa_core import capture_attention
    from swaa_core.eval.tasks import TaskSample

    sample = TaskSample.from_dict(last_run["sample"])
    index = int(column) if column is not None else len(last_run["columns"]) - 1
    label, cfg_dict = last_run["columns"][index]
    cfg = SWAAConfig.from_dict(cfg_dict)
    rendered = model_input(loaded.tokenizer, sample, cot=bool(last_run.get("cot")))
    ids = loaded.tokenizer(rendered, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if ids.shape[1] > MAX_ATTENTION_TOKENS:
        raise PromptTooLongForMaps(
            f"The prompt has {ids.shape[1]:,} tokens; attention maps are drawn up to {MAX_ATTENTION_TOKENS:,}."
        )
    ids = ids.to(loaded.model.device)
    with loaded.lock:
        fa = maps.pool_attention(capture_attention(loaded.model, ids, layer, None).cpu())
        sw = maps.pool_attention(capture_attention(loaded.model, ids, layer, cfg).cpu())
    return AttentionMaps(label, cfg, layer, fa, sw, _needle_tokens(loaded.tokenizer, sample, rendered))


def _needle_tokens(tokenizer, sample, rendered: str) -> tuple[int, int] | None:
    """Token span of the fact in ``rendered``, the text the model read (chat template included), as the maps are."""
    offset = rendered.rfind(sample.prompt)
    if not sample.needle_char_span or offset < 0:
        return None
    a, b = (offset + i for i in sample.needle_char_span)
    start = token_count(tokenizer, rendered[:a])
    return start, start + max(1, token_count(tokenizer, rendered[a:b]))
