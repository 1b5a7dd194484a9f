"""The training stack's options as plain values, importable without torch or peft (the `swaa` command builds its
parser from them): the LoRA hyper-parameters, which distilled answers to keep, the file an adapter's SWAA config is
stored in."""

from __future__ import annotations

from dataclasses import dataclass, field

SWAA_FILE = "swaa_config.json"  # beside an adapter's own files: the attention it was trained under
KEEP_CHOICES = ("correct", "judged-correct", "all")  # which distilled answers become training data


@dataclass
class TrainSettings:
    """LoRA SFT hyper-parameters. Defaults follow the paper's script (r 16, alpha 32, rsLoRA, q/k/v, lr 1e-4)."""

    max_steps: int | None = None  # None: train for ``epochs`` passes over the data
    epochs: float = 1.0
    learning_rate: float = 1e-4
    batch_size: int = 1
    grad_accum: int = 1
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])
    use_rslora: bool = True
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    max_length: int | None = None  # longer examples are skipped (cutting the prompt could cut the fact it asks about)
    gradient_checkpointing: bool = True
    seed: int = 0

    def check(self) -> TrainSettings:
        positive = {"epochs": self.epochs, "learning_rate": self.learning_rate, "batch_size": self.batch_size}
        positive.update(grad_accum=self.grad_accum, lora_r=self.lora_r, lora_alpha=self.lora_alpha)
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}.")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (or None to train by epochs), got {self.max_steps}.")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if not self.target_modules:
            raise ValueError("target_modules is empty: name the linear layers LoRA adapts, e.g. q_proj,k_proj,v_proj.")
        return self
