"""Training under SWA: self-distillation data and LoRA fine-tuning with SWAA active during training.

Kept apart because training is the one optional, heavy step (peft, long runs) that nothing else depends on; it uses
the engine, the models and the eval layer, never the CLI. ``distill`` (the full-attention model answers prompts; the
answers become training data), ``lora`` (LoRA SFT under SWA), ``adapters`` (adapter folders that carry their SWAA
config), ``evaluate`` (before/after scores) and ``finetune`` (the whole recipe). The names below are the public
training API; the ``swaa distill`` / ``swaa finetune`` subcommands live in :mod:`swaa_core.cli`.
"""

from .adapters import SWAA_FILE, AdapterError, AdapterInfo, find_adapters, load_adapter, read_adapter_info, save_adapter
from .distill import DistillDataError, Progress, distill, load_jsonl
from .evaluate import EvalSummary, evaluate_accuracy
from .finetune import FinetuneReport, finetune_pipeline
from .lora import FinetuneResult, TrainSettings, build_examples, make_example, train_lora

__all__ = [
    "SWAA_FILE",
    "AdapterError",
    "AdapterInfo",
    "DistillDataError",
    "EvalSummary",
    "FinetuneReport",
    "FinetuneResult",
    "Progress",
    "TrainSettings",
    "build_examples",
    "distill",
    "evaluate_accuracy",
    "find_adapters",
    "finetune_pipeline",
    "load_adapter",
    "load_jsonl",
    "make_example",
    "read_adapter_info",
    "save_adapter",
    "train_lora",
]
