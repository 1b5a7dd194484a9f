"""Long-context evaluation tasks, sized in tokens of the model's own tokenizer and deterministic from a seed.

Synthetic kinds follow the passkey test and RULER (needle, multi-key, multi-value, variable tracking, common-word
frequency); ``doc_qa`` wraps a user's document and question; :func:`load_dataset_records` reads evaluation sets in
the upstream format (records with ``prompt``, ``question``, ``answer``).

``length_tokens`` is the token count of :attr:`TaskSample.prompt` (the user message; the chat template adds a few
dozen tokens around it). ``depth`` is the fraction of the haystack's tokens that come before the needle.

One file per kind (``passkey``, ``needle``, ``multi_key``, ``multi_value``, ``variable_tracking``, ``common_words``,
``doc_qa``), ``registry`` (kinds by name, :func:`make_task`, :func:`make_samples`), ``haystack`` (filler fitted to
a token budget, needles placed by depth), ``base`` (:class:`TaskSample`, :class:`TaskError`, token counting) and
``dataset`` (upstream-format files and Hub datasets).
"""

from .base import TaskError, TaskSample, count_tokens, needle_distance, run_meta
from .dataset import load_dataset_records
from .haystack import FILLER
from .registry import TASK_KINDS, make_samples, make_task

__all__ = [
    "FILLER",
    "TASK_KINDS",
    "TaskError",
    "TaskSample",
    "count_tokens",
    "needle_distance",
    "run_meta",
    "load_dataset_records",
    "make_samples",
    "make_task",
]
