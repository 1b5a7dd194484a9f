"""Training under SWA: self-distillation data and LoRA fine-tuning with SWAA active during training.

Kept apart because training is the one optional, heavy step (peft, long runs) that nothing else depends on; it uses
the engine, the models and the eval layer. ``distill`` (the full-attention model answers prompts; the answers become
training data) and ``finetune`` (LoRA SFT under SWA, adapters that carry their SWAA config, the ``distill`` /
``finetune`` subcommands).
"""
