"""Training under SWA: self-distillation data and LoRA fine-tuning with SWAA active during training.

Kept apart because training is the one optional, heavy step (peft, long runs) that nothing else depends on; it uses
the engine, the models and the eval layer, never the CLI. ``distill`` (the full-attention model answers prompts; the
answers become training data), ``lora`` (LoRA SFT under SWA), ``adapters`` (adapter folders that carry their SWAA
config), ``evaluate`` (before/after scores) and ``finetune`` (the whole recipe). The names below are the public
training API; the ``swaa distill`` / ``swaa finetune`` subcommands live in :mod:`swaa_core.cli`. The distillation
function is ``swaa_core.train.distill.distill``: in this package the name ``distill`` is its module, which a lazily
exported function of the same name could not shadow reliably.
"""

from ..runtime.lazy import lazy_exports

# Imported on first use: the training stack (torch, peft) loads when training runs, not when the `swaa` command
# builds its parser.
_EXPORTS = {
    **dict.fromkeys(
        (
            "SWAA_FILE",
            "AdapterError",
            "AdapterInfo",
            "find_adapters",
            "load_adapter",
            "read_adapter_info",
            "save_adapter",
        ),
        ".adapters",
    ),
    **dict.fromkeys(("DistillDataError", "Progress", "load_jsonl"), ".distill"),
    **dict.fromkeys(("EvalSummary", "evaluate_accuracy"), ".evaluate"),
    **dict.fromkeys(("FinetuneReport", "finetune_pipeline"), ".finetune"),
    **dict.fromkeys(("FinetuneResult", "TrainSettings", "build_examples", "make_example", "train_lora"), ".lora"),
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


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
