"""LoRA SFT under SWA (the paper's fifth strategy): training examples, the mixed training mask, the Trainer run.

Training runs with SWAA applied, so the adapter learns to work with the attention it will meet at inference. Under
``force_fa_decode`` the paper trains with a mixed mask: prompt tokens use SWA, answer tokens attend to everything,
exactly as prefill + FA decode do at inference. Every batch therefore passes ``swaa_prompt_lengths`` to the model
(see docs/architecture.md). The loss covers answer tokens only.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, replace

import torch

from ..engine.config import SWAAConfig
from ..engine.families import attention_modules
from ..engine.patch import swaa
from .distill import DistillDataError, Progress, ProgressFn, encode_prompt, normalize_record
from .settings import TrainSettings

IGNORE = -100  # label value the loss skips (transformers' convention)


@dataclass
class FinetuneResult:
    model: torch.nn.Module  # the PeftModel; the base model object now holds the LoRA layers too
    losses: list[float]  # training loss per optimizer step
    steps: int
    seconds: float
    examples: int
    stopped_early: bool
    swaa_config: SWAAConfig | None
    settings: TrainSettings

    def summary(self) -> dict:
        return {
            "steps": self.steps,
            "examples": self.examples,
            "seconds": round(self.seconds, 1),
            "first_loss": self.losses[0] if self.losses else None,
            "last_loss": self.losses[-1] if self.losses else None,
            "losses": [round(x, 4) for x in self.losses],
            "stopped_early": self.stopped_early,
            "settings": asdict(self.settings),
        }


# --------------------------------------------------------------------------- examples
def make_example(prompt_ids: list[int], response_ids: list[int]) -> dict:
    """Token ids with labels on the response only; ``prompt_length`` marks where decode-like tokens start."""
    if not response_ids:
        raise DistillDataError("A training example has an empty response.")
    return {
        "input_ids": list(prompt_ids) + list(response_ids),
        "labels": [IGNORE] * len(prompt_ids) + list(response_ids),
        "prompt_length": len(prompt_ids),
    }


def build_examples(records, tokenizer, max_length: int | None = None) -> tuple[list[dict], int]:
    """Tokenize prompt/response records the way generation sees them: the rendered chat prompt (+ answer prefix),
    then the response, then end-of-turn when the response was finished. Returns (examples, skipped as too long)."""
    examples, skipped = [], 0
    for n, raw in enumerate(records, 1):
        record = normalize_record(raw, where=f"record {n}")
        prompt_ids = encode_prompt(
            tokenizer, record["prompt"], record.get("answer_prefix") or "", bool(record.get("cot"))
        )
        response_ids = tokenizer(record["response"], add_special_tokens=False)["input_ids"]
        if record.get("finished", True) and tokenizer.eos_token_id is not None:
            response_ids = response_ids + [tokenizer.eos_token_id]
        example = make_example(prompt_ids, response_ids)
        if max_length is not None and len(example["input_ids"]) > max_length:
            skipped += 1
            continue
        examples.append(example)
    return examples, skipped


def collate(batch: list[dict], pad_id: int = 0, prompt_lengths: bool = True) -> dict[str, torch.Tensor]:
    """Right-pad a batch. Padding is masked out of attention (2-D mask) and out of the loss (label -100)."""
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[row, :n] = torch.tensor(b["input_ids"])
        labels[row, :n] = torch.tensor(b["labels"])
        mask[row, :n] = 1
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if prompt_lengths:
        out["swaa_prompt_lengths"] = torch.tensor([b["prompt_length"] for b in batch], dtype=torch.long)
    return out


# --------------------------------------------------------------------------- training
LORA_SHAPE = ("lora_r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora")  # what an adapter fixes


def continued_settings(peft_model, settings: TrainSettings) -> TrainSettings:
    """``settings`` for a run that continues ``peft_model``'s active adapter, whose LoRA shape (:data:`LORA_SHAPE`)
    it keeps: those fields become the adapter's, so the run's record says what was trained. Raises ValueError naming
    each shape setting that was changed from its default to another value than the adapter's (it could not apply),
    and when none of the adapter's weights is trainable (``load_adapter(..., trainable=True)``)."""
    cfg = peft_model.peft_config[peft_model.active_adapter]
    if not hasattr(cfg, "r"):
        raise ValueError(f"The adapter is a {type(cfg).__name__}; training continues LoRA adapters only.")
    targets = cfg.target_modules if isinstance(cfg.target_modules, str) else sorted(cfg.target_modules)  # a regex
    actual = dict(lora_r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
                  use_rslora=cfg.use_rslora)  # fmt: skip
    default = TrainSettings()

    def same(a, b) -> bool:
        if isinstance(a, (list, tuple, set)) and isinstance(b, (list, tuple, set)):
            return sorted(a) == sorted(b)
        return a == b

    clashes = [f"{name}={getattr(settings, name)!r} (the adapter's: {actual[name]!r})" for name in LORA_SHAPE
               if not same(getattr(settings, name), getattr(default, name))
               and not same(getattr(settings, name), actual[name])]  # fmt: skip
    if clashes:
        raise ValueError(
            f"This run continues an adapter, which keeps its LoRA shape; these settings cannot apply: "
            f"{', '.join(clashes)}. Leave them at their defaults, or train a new adapter on the base model."
        )
    if not any(p.requires_grad for name, p in peft_model.named_parameters() if "lora_" in name):
        raise ValueError(
            "The adapter's weights are frozen, so training would change nothing: load it with "
            "load_adapter(..., trainable=True) to continue training it."
        )
    return replace(settings, **actual)


def lora_config(settings: TrainSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=list(settings.target_modules),
        use_rslora=settings.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


@contextlib.contextmanager
def quiet_peft():
    """peft reads transformers' deprecated ``is_gradient_checkpointing``; the warning is noise to our users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


@contextlib.contextmanager
def _training_mode(model, checkpointing: bool):
    """Gradient checkpointing (non-reentrant, so frozen inputs need no grad hook) and no KV cache while training;
    the model's previous settings come back afterwards."""
    use_cache = model.config.use_cache
    model.config.use_cache = False
    had_grad_hook = _input_grad_hook(model)
    # transformers 5.2x renamed gradient checkpointing to activation checkpointing; older 5.x has only the old name.
    renamed = hasattr(model, "activation_checkpointing_enable")
    if checkpointing and renamed:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        if checkpointing:
            (model.activation_checkpointing_disable if renamed else model.gradient_checkpointing_disable)()
        if _input_grad_hook(model) and not had_grad_hook:  # enabling checkpointing added it; disabling leaves it
            model.disable_input_require_grads()  # else it would count as a caller's hook (no CUDA graph after)
        model.config.use_cache = use_cache
        model.eval()


def _input_grad_hook(model) -> bool:
    """Whether transformers' ``enable_input_require_grads`` hook is on ``model`` (its name varies across 5.x)."""
    return bool(getattr(model, "_require_grads_hooks", None)) or hasattr(model, "_require_grads_hook")


def _trainer_callback(on_progress: ProgressFn | None, cancel: threading.Event | None, losses: list[float], progress):
    """Records the loss per step, drives our own progress bar (loss in its postfix), reports, and stops on cancel."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    start = time.perf_counter()
    bar = None

    class _Report(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            nonlocal bar
            if progress:  # created here: only now does the Trainer know the number of steps
                bar = tqdm(total=state.max_steps, desc="LoRA SFT", unit="step")

        def on_train_end(self, args, state, control, **kw):
            if bar is not None:
                bar.close()

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs:
                return
            losses.append(float(logs["loss"]))
            if bar is not None:
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
            if on_progress is not None:
                msg = f"step {state.global_step}/{state.max_steps}, loss {losses[-1]:.4f}"
                elapsed = time.perf_counter() - start
                on_progress(Progress("train", state.global_step, state.max_steps, elapsed, losses[-1], msg))
            self._stop_if_cancelled(control)  # logging comes after on_step_end: a cancel from the report stops here

        def on_step_end(self, args, state, control, **kw):
            if bar is not None:
                bar.update(1)
            self._stop_if_cancelled(control)

        @staticmethod
        def _stop_if_cancelled(control):
            if cancel is not None and cancel.is_set():
                control.should_training_stop = True

    return _Report()


def train_lora(
    model,
    examples: list[dict],
    swaa_config: SWAAConfig | None,
    settings: TrainSettings | None = None,
    *,
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> FinetuneResult:
    """LoRA SFT of ``model`` (a transformers causal LM, or a PeftModel to continue) with ``swaa_config`` active in
    the attention during training, computed by ``backend`` (as in :func:`swaa_core.apply_swaa`). ``examples`` come
    from :func:`build_examples` / :func:`make_example`.

    The LoRA layers are injected into ``model`` in place (peft's behaviour), so the caller's model object runs with
    the adapter afterwards; the returned ``result.model`` is the PeftModel for saving. The model's SWAA state before
    the call is restored afterwards, and it is left in eval mode."""
    from peft import PeftModel, get_peft_model
    from transformers import Trainer, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    settings = (settings or TrainSettings()).check()
    if not examples:
        raise DistillDataError("No training examples (all were filtered out or longer than max_length).")
    if swaa_config is not None:
        swaa_config.validate(len(attention_modules(model)))
    set_seed(settings.seed)
    if isinstance(model, PeftModel):
        settings = continued_settings(model, settings)
    with quiet_peft():
        peft_model = model if isinstance(model, PeftModel) else get_peft_model(model, lora_config(settings))
    base = peft_model.get_base_model()
    pad_id = base.config.pad_token_id if base.config.pad_token_id is not None else 0
    mixed = swaa_config is not None and not swaa_config.is_full_attention and bool(swaa_config.force_fa_decode)
    losses: list[float] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="swaa-finetune-") as tmp:  # Trainer wants a folder; we save nothing there
        trainer = Trainer(
            model=peft_model,
            args=_training_args(TrainingArguments, tmp, settings, base.device, len(examples)),
            train_dataset=examples,
            data_collator=lambda batch: collate(batch, pad_id, prompt_lengths=mixed),
            callbacks=[_trainer_callback(on_progress, cancel, losses, progress)],
        )
        # Trainer's own bar / printer write a dict per step; ours shows the loss in the bar instead.
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        with swaa(base, swaa_config, backend=backend), _training_mode(base, settings.gradient_checkpointing):
            trainer.train()
    state = trainer.state
    return FinetuneResult(
        model=peft_model,
        losses=losses,
        steps=state.global_step,
        seconds=time.perf_counter() - start,
        examples=len(examples),
        stopped_early=state.global_step < state.max_steps,
        swaa_config=swaa_config,
        settings=settings,
    )


def warmup_steps(s: TrainSettings, examples: int, world: int = 1) -> int:
    """``warmup_ratio`` of the optimizer steps each of ``world`` processes runs (its share of the examples, as
    Trainer's distributed sampler deals them), rounded down: a linear warm-up's first step runs at learning rate 0,
    so a short run gets none (transformers rounds a fraction up, and a 1-step run then trained nothing)."""
    per_epoch = math.ceil(math.ceil(math.ceil(examples / world) / s.batch_size) / s.grad_accum)
    total = s.max_steps if s.max_steps is not None else math.ceil(per_epoch * s.epochs)
    return int(s.warmup_ratio * total)


def _training_args(TrainingArguments, output_dir: str, s: TrainSettings, device, examples: int):
    args = _arguments(TrainingArguments, output_dir, s, device)
    args.warmup_steps = warmup_steps(s, examples, args.world_size)
    return args


def _arguments(TrainingArguments, output_dir: str, s: TrainSettings, device):
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=s.max_steps if s.max_steps is not None else -1,
        num_train_epochs=s.epochs,
        learning_rate=s.learning_rate,
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        lr_scheduler_type="linear",
        max_grad_norm=s.max_grad_norm,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,  # keeps swaa_prompt_lengths, which the forward signature does not name
        dataloader_num_workers=0,
        seed=s.seed,
        use_cpu=torch.device(device).type == "cpu",
        # Under torchrun / accelerate launch the Trainer wraps the model in DDP; every LoRA weight takes part in
        # every forward pass, so DDP need not search the graph for unused ones.
        ddp_find_unused_parameters=False,
    )
