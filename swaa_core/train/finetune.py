"""LoRA fine-tuning under SWA (the paper's fifth strategy), and adapters that carry their SWAA config.

Training runs with SWAA applied, so the adapter learns to work with the attention it will meet at inference. Under
``force_fa_decode`` the paper trains with a mixed mask: prompt tokens use SWA, answer tokens attend to everything,
exactly as prefill + FA decode do at inference. Every batch therefore passes ``swaa_prompt_lengths`` to the model
(see docs/architecture.md). The loss covers answer tokens only.

An adapter folder holds peft's files plus ``swaa_config.json``, one entry of an upstream settings file::

    {"swaa_config": {"sliding_window_size": 256, ...}, "model_list": ["<base model>"], "training": {...}}
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..engine.config import SWAAConfig, SWAAConfigError
from ..engine.patch import attention_modules, swaa
from ..eval.tasks import make_samples
from ..runtime.distributed import current, map_shared
from ..runtime.jsonl import save_jsonl
from .distill import (
    DistillDataError,
    Progress,
    ProgressFn,
    distill,
    encode_prompt,
    filter_records,
    load_jsonl,
    normalize_record,
)

SWAA_FILE = "swaa_config.json"
IGNORE = -100  # label value the loss skips (transformers' convention)


class AdapterError(ValueError):
    """An adapter that cannot be saved or loaded, with the reason."""


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
def _quiet_peft():
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
        model.config.use_cache = use_cache
        model.eval()


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
) -> FinetuneResult:
    """LoRA SFT of ``model`` (a transformers causal LM, or a PeftModel to continue) with ``swaa_config`` active in
    the attention during training. ``examples`` come from :func:`build_examples` / :func:`make_example`.

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
    with _quiet_peft():
        peft_model = model if isinstance(model, PeftModel) else get_peft_model(model, lora_config(settings))
    base = peft_model.get_base_model()
    pad_id = base.config.pad_token_id if base.config.pad_token_id is not None else 0
    mixed = swaa_config is not None and not swaa_config.is_full_attention and bool(swaa_config.force_fa_decode)
    losses: list[float] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="swaa-finetune-") as tmp:  # Trainer wants a folder; we save nothing there
        trainer = Trainer(
            model=peft_model,
            args=_training_args(TrainingArguments, tmp, settings, base.device),
            train_dataset=examples,
            data_collator=lambda batch: collate(batch, pad_id, prompt_lengths=mixed),
            callbacks=[_trainer_callback(on_progress, cancel, losses, progress)],
        )
        # Trainer's own bar / printer write a dict per step; ours shows the loss in the bar instead.
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        with swaa(base, swaa_config), _training_mode(base, settings.gradient_checkpointing):
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


def _training_args(TrainingArguments, output_dir: str, s: TrainSettings, device):
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=s.max_steps if s.max_steps is not None else -1,
        num_train_epochs=s.epochs,
        learning_rate=s.learning_rate,
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        warmup_steps=s.warmup_ratio,  # a float below 1 is a fraction of the steps
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


# --------------------------------------------------------------------------- adapters
def save_adapter(
    peft_model,
    path: str | Path,
    swaa_config: SWAAConfig | None,
    *,
    base_model: str | None = None,
    training: dict | None = None,
) -> Path:
    """Save the LoRA adapter (peft's files) and ``swaa_config.json`` beside it. ``base_model`` is the name users
    load the base with (a Hub id or the embedded model's name); it replaces peft's record of a local path."""
    from peft import PeftModel

    if not isinstance(peft_model, PeftModel):
        raise AdapterError("save_adapter needs the PeftModel returned by train_lora (result.model).")
    path = Path(path)
    peft_model.save_pretrained(str(path))
    adapter_file = path / "adapter_config.json"
    adapter = json.loads(adapter_file.read_text(encoding="utf-8"))
    if base_model is not None:  # after saving: peft looks the base up by this name while it saves
        adapter["base_model_name_or_path"] = base_model
        adapter_file.write_text(json.dumps(adapter, indent=2) + "\n", encoding="utf-8")
    base = adapter.get("base_model_name_or_path")
    config = swaa_config or SWAAConfig()
    entry = {"swaa_config": config.to_dict(), "model_list": [base] if base else [], "training": training or {}}
    (path / SWAA_FILE).write_text(json.dumps(entry, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (path / "README.md").write_text(_model_card(base, config, training or {}), encoding="utf-8")
    return path


def _model_card(base: str | None, config: SWAAConfig, training: dict) -> str:
    """A short Hub model card (replaces peft's template, which would record a local base-model path)."""
    head = ["---", "library_name: peft", "tags: [lora, swaa, sliding-window-attention]"]
    if base:
        head.append(f"base_model: {json.dumps(base)}")
    summary = {k: training[k] for k in ("steps", "examples", "first_loss", "last_loss") if k in training}
    return "\n".join(
        head
        + [
            "---",
            "",
            f"# LoRA adapter trained under SWAA ({config.describe()})",
            "",
            "Fine-tuned with sliding window attention active (Sliding Window Attention Adaptation, arXiv 2512.10411).",
            f"Use it under the same attention settings, stored in `{SWAA_FILE}`:",
            "",
            "```python",
            "from swaa_core import apply_swaa, load_model",
            "from swaa_core.train.finetune import load_adapter",
            "",
            "loaded = load_model(...)  # the base model",
            'model, cfg = load_adapter(loaded.model, "<this folder or Hub id>")',
            "apply_swaa(model, cfg)",
            "```",
            "",
            f"Training summary: `{json.dumps(summary)}`" if summary else "",
            "",
        ]
    )


@dataclass
class AdapterInfo:
    swaa_config: SWAAConfig | None  # None: the folder has no swaa_config.json (not trained by this tool)
    base_models: list[str]
    training: dict


def read_adapter_info(path_or_hub_id: str | Path) -> AdapterInfo:
    """The SWAA config, base model and training summary stored beside an adapter (local folder or Hub repo)."""
    text = _read_sidecar(str(path_or_hub_id))
    if text is None:
        return AdapterInfo(None, [], {})
    try:
        data = json.loads(text)
        config = SWAAConfig.from_dict(data["swaa_config"])
    except (json.JSONDecodeError, KeyError, TypeError, SWAAConfigError) as e:
        raise AdapterError(f"{SWAA_FILE} of adapter {path_or_hub_id} is unreadable: {e}") from None
    return AdapterInfo(config, [str(m) for m in data.get("model_list", [])], data.get("training", {}))


def _read_sidecar(where: str) -> str | None:
    local = Path(where)
    if local.is_dir():
        if not (local / "adapter_config.json").is_file():
            raise AdapterError(f"{local} is not a LoRA adapter folder (no adapter_config.json).")
        sidecar = local / SWAA_FILE
        return sidecar.read_text(encoding="utf-8") if sidecar.is_file() else None
    if local.exists() or where.count("/") != 1:
        raise AdapterError(f"Adapter {where!r} is neither a local adapter folder nor a Hub id such as 'user/name'.")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(where, SWAA_FILE)).read_text(encoding="utf-8")
    except EntryNotFoundError:
        return None
    except Exception as e:  # offline, unknown repo, no access: all mean the same to the user
        raise AdapterError(f"Could not fetch adapter {where!r} from the Hugging Face Hub: {e}") from None


def find_adapters(root: str | Path) -> list[tuple[Path, AdapterInfo]]:
    """LoRA adapter folders under ``root`` (an adapter_config.json inside), with what each was trained for; for
    pickers in the app. Unreadable ones are skipped."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for config_file in sorted(root.rglob("adapter_config.json")):
        try:
            found.append((config_file.parent, read_adapter_info(config_file.parent)))
        except AdapterError:
            continue
    return found


def load_adapter(
    model, path_or_hub_id: str | Path, *, merge: bool = False, trainable: bool = False, adapter_name: str = "default"
):
    """Attach a LoRA adapter (local folder or Hub id) to ``model``; returns ``(model, swaa_config)``.

    ``swaa_config`` is the SWAAConfig the adapter was trained for (None when the adapter has no swaa_config.json).
    Apply it yourself: ``apply_swaa(model, cfg)``. With ``merge=True`` the LoRA weights are folded into the base
    weights and the plain transformers model comes back (faster; the adapter cannot be switched off then). Without
    merging, the LoRA layers live in ``model`` in place, so the original object runs with the adapter too.
    ``trainable=True`` keeps the LoRA weights trainable, to continue with :func:`train_lora`."""
    from peft import PeftModel

    info = read_adapter_info(path_or_hub_id)
    if info.swaa_config is not None:
        info.swaa_config.validate(len(attention_modules(model)))
    try:
        with _quiet_peft():
            peft_model = PeftModel.from_pretrained(
                model, str(path_or_hub_id), adapter_name=adapter_name, is_trainable=trainable
            )
    except (ValueError, RuntimeError, OSError) as e:
        base = f" (trained on {', '.join(info.base_models)})" if info.base_models else ""
        raise AdapterError(f"Adapter {path_or_hub_id} does not fit this model{base}: {e}") from None
    peft_model.eval()
    return (peft_model.merge_and_unload() if merge else peft_model), info.swaa_config


# --------------------------------------------------------------------------- the whole recipe: data, train, evaluate
@dataclass
class EvalSummary:
    """Accuracy of one config on a task set, with the graded signal (reference log-likelihood) beside it."""

    label: str
    samples: int
    correct: int
    scored: int
    errors: int
    mean_logprob_per_token: float | None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.scored if self.scored else None

    def line(self) -> str:
        acc = "n/a" if self.accuracy is None else f"{self.correct}/{self.scored} = {self.accuracy:.0%}"
        lp = (
            ""
            if self.mean_logprob_per_token is None
            else f", reference log-prob/token {self.mean_logprob_per_token:.3f}"
        )
        err = f", {self.errors} errors" if self.errors else ""
        return f"{self.label}: accuracy {acc}{lp}{err}"


def evaluate_accuracy(
    loaded, samples, config: SWAAConfig | None, *, label: str, max_new_tokens: int = 24, cot: bool = False,
    on_progress: ProgressFn | None = None, cancel: threading.Event | None = None, progress: bool = True,
) -> EvalSummary:  # fmt: skip
    """Greedy answers through the runner (same prompts, scoring and SWAA path as ``swaa eval``)."""
    from tqdm.auto import tqdm

    from ..eval.runner import run_one

    def run(share):
        results, start = [], time.perf_counter()
        for i, sample in enumerate(tqdm(share, desc=f"eval: {label}", disable=not progress)):
            if cancel is not None and cancel.is_set():
                break
            # accuracy only: no extra tokens generated for like-for-like timing
            r = run_one(loaded, sample, config, max_new_tokens=max_new_tokens, cot=cot, warmup=i == 0, timing_tokens=0)
            results.append(r)
            if on_progress is not None:
                right = sum(bool(r.correct) for r in results)
                msg = f"{label}: {i + 1}/{len(share)}, {right} right"
                on_progress(Progress("eval", i + 1, len(share), time.perf_counter() - start, message=msg))
        return results

    launch = current()  # under a launcher each process answers its share of the samples
    results = map_shared(launch, run, samples)
    scored = [r for r in results if r.correct is not None]
    lps = [r.answer_logprob_per_token for r in results if r.answer_logprob_per_token is not None]
    return EvalSummary(
        label=label,
        samples=len(results),
        correct=sum(bool(r.correct) for r in scored),
        scored=len(scored),
        errors=sum(r.error is not None for r in results),
        mean_logprob_per_token=sum(lps) / len(lps) if lps else None,
    )


@dataclass
class FinetuneReport:
    adapter_path: Path | None
    swaa_config: SWAAConfig
    base_model: str
    records: int  # distillation records kept after filtering
    examples: int
    skipped_too_long: int
    train: FinetuneResult
    before: EvalSummary | None = None
    after: EvalSummary | None = None
    distill_path: Path | None = None

    def to_dict(self) -> dict:
        return {
            "swaa_config": self.swaa_config.to_dict(),
            "base_model": self.base_model,
            "records": self.records,
            "examples": self.examples,
            "skipped_too_long": self.skipped_too_long,
            **self.train.summary(),
            "eval_before": None if self.before is None else asdict(self.before),
            "eval_after": None if self.after is None else asdict(self.after),
            "date": time.strftime("%Y-%m-%d"),
            "machine": _machine(self.train.model),
            "processes": current().world,
        }


def _machine(model) -> str:
    import os
    import platform

    device = next(model.parameters()).device
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    return f"{where}; {platform.system()} {platform.machine()}; torch {torch.__version__}"


def finetune_pipeline(
    loaded,
    swaa_config: SWAAConfig,
    out_dir: str | Path | None,
    *,
    records: list[dict] | None = None,
    task: str = "needle",
    samples: int = 32,
    length_tokens: int = 1024,
    seed: int = 0,
    max_new_tokens: int = 24,
    keep: str = "correct",
    cot: bool = False,
    settings: TrainSettings | None = None,
    eval_samples: int = 0,
    eval_length: int | None = None,
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    progress: bool = True,
) -> FinetuneReport:
    """The paper's recipe end to end on a loaded model (:func:`swaa_core.load_model`): self-distil ``samples``
    prompts of ``task`` with full attention (or use ``records``), optionally score ``eval_samples`` held-out prompts
    under ``swaa_config``, LoRA-train under ``swaa_config``, score again, and save the adapter to ``out_dir``.

    The LoRA layers go into ``loaded.model`` in place: load a private copy (``load_model(..., reuse=False)``) when
    other code shares the model."""
    if swaa_config is None or swaa_config.is_full_attention:
        raise SWAAConfigError("Fine-tuning under SWA needs a sliding config (a window), not full attention.")
    model, tokenizer = loaded.model, loaded.tokenizer
    swaa_config.validate(len(attention_modules(model)))
    out = None if out_dir is None else Path(out_dir)
    settings = settings or TrainSettings()
    launch = current()  # under torchrun / accelerate launch: DDP, data and evaluations shared out
    progress = progress and launch.is_main
    held_out = []
    if eval_samples:
        seeds = range(seed + 100_000, seed + 100_000 + eval_samples)
        held_out = make_samples(task, tokenizer, length_tokens=eval_length or length_tokens, seeds=seeds)

    def score(label):
        return evaluate_accuracy(loaded, held_out, swaa_config, label=label, max_new_tokens=max_new_tokens, cot=cot,
                                 on_progress=on_progress, cancel=cancel, progress=progress)  # fmt: skip

    # One run at a time on this model: SWAA state and the LoRA layers live on it (the runner takes the same lock).
    with getattr(loaded, "lock", None) or contextlib.nullcontext():
        if records is None:
            prompts = make_samples(task, tokenizer, length_tokens=length_tokens, seeds=range(seed, seed + samples))
            records = distill_shared(model, tokenizer, prompts, max_new_tokens=max_new_tokens, cot=cot,
                                     on_progress=on_progress, cancel=cancel, progress=progress)  # fmt: skip
            distill_path = None if out is None else out / "distill.jsonl"
            if distill_path is not None and launch.is_main:
                save_jsonl(records, distill_path)
        else:
            distill_path = None
        kept = _kept_records(records, keep)
        examples, skipped = build_examples(kept, tokenizer, settings.max_length)
        before = score("before fine-tuning") if held_out else None
        result = train_lora(model, examples, swaa_config, settings, on_progress=on_progress, cancel=cancel,
                            progress=progress)  # fmt: skip
        after = score("after fine-tuning") if held_out else None
    name = loaded.info.name
    report = FinetuneReport(None, swaa_config, name, len(kept), len(examples), skipped, result, before, after)
    report.distill_path = distill_path
    if out is not None:
        report.adapter_path = out
        if launch.is_main:  # every process holds the same LoRA weights after DDP; one adapter is saved
            save_adapter(result.model, out, swaa_config, base_model=name, training=report.to_dict())
        launch.wait()
    return report


def distill_shared(model, tokenizer, prompts: list, **kw) -> list[dict]:
    """:func:`swaa_core.train.distill.distill` (every answer kept) with the prompts shared out between the processes of a
    launch; every process gets all records, in prompt order."""
    return map_shared(current(), lambda share: distill(model, tokenizer, share, keep="all", **kw), prompts)


def _kept_records(records: list[dict], keep: str) -> list[dict]:
    kept = filter_records(records, keep)
    if not kept:
        wrong = sum(r.get("judge") == 0 for r in records)
        raise DistillDataError(
            f"No training data left: {wrong} of {len(records)} full-attention answers were wrong and keep={keep!r} "
            "drops them. Use more or shorter prompts, a larger model, or keep='all' to train on them anyway."
        )
    return kept


# --------------------------------------------------------------------------- CLI: swaa distill / swaa finetune
FINETUNE_HELP = """\
LoRA fine-tuning under sliding window attention (the paper's fifth strategy).

What happens:
  1. data     self-distillation: the model answers long-context prompts with FULL attention; those answers
              become the targets (wrong ones are dropped where the reference is known). Or bring --data.
  2. before   (with --eval-samples) held-out prompts are answered under the SWA recipe and scored.
  3. train    LoRA SFT with the SWA recipe active in the attention. Under FA decode the mixed mask is used:
              prompt tokens slide, answer tokens see everything, exactly as at inference. Loss on answers only.
  4. after    the same held-out prompts again, now with the adapter.
  5. save     OUT/ holds the adapter, swaa_config.json (the recipe it was trained for, upstream format),
              distill.jsonl and a README; load it with swaa_core.train.finetune.load_adapter().
"""

FINETUNE_EXAMPLES = """\
examples:
  # the run in docs/results.md (SmolLM2-135M on CPU): 16 needle prompts of 512 tokens, window 64 + FA decode;
  # held-out needles went from 0/8 to 8/8 in 2 min 53 s on an idle 2-core CPU.
  swaa finetune --recipe swa-fa-decode --window 64 --samples 16 --length 512 --steps 24 --lr 5e-4 \\
      --eval-samples 8 --max-new-tokens 16 --out adapters/smollm2-needle-swa64

  # a quicker one (1 min 11 s there; held-out 0/4 -> 4/4)
  swaa finetune --recipe swa-fa-decode --window 64 --samples 8 --length 384 --steps 12 --lr 1e-3 \\
      --eval-samples 4 --max-new-tokens 12 --out adapters/quick

  # the paper's recipe on a GPU, your own data distilled first
  swaa distill --model Qwen/Qwen3-4B-Instruct-2507 --dataset my_eval.jsonl --out data.jsonl
  swaa finetune --model Qwen/Qwen3-4B-Instruct-2507 --data data.jsonl --recipe swa-half-fa-fa-decode \\
      --window 2048 --epochs 1 --out adapters/qwen3-4b-swa2k
"""


DISTILL_HELP = """\
Self-distillation data: the model's own greedy answers with FULL attention on long-context prompts
(built-in tasks or your dataset in the upstream format: records with prompt / question / answer).
Answers that miss a known reference are dropped (--keep). Output: JSONL with prompt, question, answer,
response, judge (1 right / 0 wrong / null unknown), ready for `swaa finetune --data`.
"""


def add_cli(subparsers) -> None:
    """Add the ``distill`` and ``finetune`` subcommands to the ``swaa`` command's subparsers."""
    import argparse

    fmt = argparse.RawDescriptionHelpFormatter
    d = subparsers.add_parser("distill", help="make self-distillation data (full-attention answers)",
                              description=DISTILL_HELP, formatter_class=fmt)  # fmt: skip
    _model_args(d)
    _data_args(d)
    d.add_argument("--keep", choices=("correct", "judged-correct", "all"), default="correct",
                   help="correct: drop known-wrong answers (default); judged-correct: only answers checked right; "
                        "all: keep everything")  # fmt: skip
    d.add_argument("--out", required=True, help="JSONL file to write")
    d.set_defaults(func=_cmd_distill)

    f = subparsers.add_parser("finetune", help="LoRA SFT under a SWA recipe; saves an adapter with its config",
                              description=FINETUNE_HELP, epilog=FINETUNE_EXAMPLES, formatter_class=fmt)  # fmt: skip
    _model_args(f)
    g = f.add_argument_group("attention during training (the recipe the adapter is for)")
    g.add_argument("--recipe", "-r", default="swa-sinks-fa-decode",
                   help="a recipe name (see `swaa recipes`) or inline JSON of the upstream fields "
                        "(default: swa-sinks-fa-decode)")  # fmt: skip
    g.add_argument("--window", "-w", type=int, help="sliding window in tokens (default: scaled to --length)")
    g.add_argument("--sinks", type=int, help="sink tokens kept visible (keep_first) for sink recipes (default 10)")
    g.add_argument("--recipes-file", help="your saved recipes (JSON; upstream settings files too), for --recipe NAME")
    data = f.add_argument_group("training data: --data FILE, or distil on the fly from a task")
    data.add_argument(
        "--data",
        help="JSONL from `swaa distill`, or upstream records (JSONL, JSON list, or the Parquet "
        "its self-distillation writes: prompt, response, judge)",
    )
    _data_args(data)
    data.add_argument("--keep", choices=("correct", "judged-correct", "all"), default="correct",
                      help="which distilled answers to train on (default: drop known-wrong ones)")  # fmt: skip
    t = f.add_argument_group("LoRA training")
    t.add_argument("--steps", type=int, help="optimizer steps (default: one pass over the data, see --epochs)")
    t.add_argument("--epochs", type=float, default=1.0, help="passes over the data when --steps is not given")
    t.add_argument("--lr", type=float, default=TrainSettings.learning_rate, help="learning rate (default 1e-4)")
    t.add_argument("--rank", type=int, default=TrainSettings.lora_r, help="LoRA rank r (default 16)")
    t.add_argument("--alpha", type=int, default=TrainSettings.lora_alpha, help="LoRA alpha (default 32)")
    t.add_argument("--dropout", type=float, default=TrainSettings.lora_dropout, help="LoRA dropout (default 0.05)")
    t.add_argument("--targets", default="q_proj,k_proj,v_proj", help="modules LoRA adapts, comma-separated")
    t.add_argument("--batch-size", type=int, default=1)
    t.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    t.add_argument("--max-length", type=int, help="skip examples longer than this many tokens")
    t.add_argument("--no-gradient-checkpointing", action="store_true",
                   help="faster, but keeps every layer's activations in memory")  # fmt: skip
    e = f.add_argument_group("before/after evaluation")
    e.add_argument(
        "--eval-samples",
        type=int,
        default=0,
        help="held-out prompts of --task scored under the recipe before and after training (0: skip)",
    )
    e.add_argument("--eval-length", type=int, help="their length in tokens (default: --length)")
    f.add_argument("--out", required=True, help="folder for the adapter")
    f.set_defaults(func=_cmd_finetune)


def _model_args(p) -> None:
    p.add_argument(
        "--model", "-m", help="embedded name, Hub id or local folder (default: embedded SmolLM2-135M-Instruct)"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1, auto: spread over every GPU (default: CUDA when present)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    from ..cli import add_launch_args

    add_launch_args(p)


def _data_args(p) -> None:
    p.add_argument("--task", default="needle", help="built-in task kind for prompts (default: needle)")
    p.add_argument(
        "--dataset", help="your dataset (upstream format .jsonl/.json/.parquet or a Hub id) instead of --task"
    )
    p.add_argument("--split", help="dataset split (file name part such as 'train')")
    p.add_argument("--samples", type=int, default=32, help="how many prompts (default 32)")
    p.add_argument("--length", type=int, default=1024, help="prompt length in tokens for --task (default 1024)")
    p.add_argument("--seed", type=int, default=0, help="first task seed (default 0)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="answer length limit (default 24)")
    p.add_argument("--cot", action="store_true", help="chain-of-thought prompts (thinking mode where the model has it)")


def _prompts(args, tokenizer) -> list:
    if args.dataset:
        from ..eval.tasks import load_dataset_records

        return load_dataset_records(args.dataset, split=args.split, limit=args.samples, tokenizer=tokenizer)
    return make_samples(
        args.task, tokenizer, length_tokens=args.length, seeds=range(args.seed, args.seed + args.samples)
    )


def _cmd_distill(args) -> int:
    from ..cli import relaunch

    if (code := relaunch(args)) is not None:
        return code
    launch, loaded = _launch_and_load(args)
    records = distill_shared(loaded.model, loaded.tokenizer, _prompts(args, loaded.tokenizer),
                             max_new_tokens=args.max_new_tokens, cot=args.cot,
                             progress=not args.quiet and launch.is_main)  # fmt: skip
    if not launch.is_main:
        return 0
    kept = filter_records(records, args.keep)
    path = save_jsonl(kept, args.out)
    right, wrong = sum(r["judge"] == 1 for r in records), sum(r["judge"] == 0 for r in records)
    print(f"{len(records)} answers with full attention: {right} right, {wrong} wrong, "
          f"{len(records) - right - wrong} without a reference; kept {len(kept)} ({args.keep}) -> {path}")  # fmt: skip
    return 0


def _launch_and_load(args):
    """This process's launch and the model on its device (see :mod:`swaa_core.runtime.distributed`)."""
    from .. import load_model

    launch = current(args.device)
    return launch, load_model(args.model, device=launch.device)


def _cmd_finetune(args) -> int:
    from ..cli import relaunch
    from ..eval.recipes import load_user_recipes, resolve_recipe

    if (code := relaunch(args)) is not None:
        return code
    user_recipes = load_user_recipes(args.recipes_file) if args.recipes_file else None
    launch, loaded = _launch_and_load(args)
    args.quiet = args.quiet or not launch.is_main
    n_layers = len(attention_modules(loaded.model))
    cfg = resolve_recipe(args.recipe, n_layers, window=args.window, keep_first=args.sinks,
                         context_tokens=args.length, user_recipes=user_recipes)  # fmt: skip
    if cfg is None:
        raise SWAAConfigError(f"Recipe {args.recipe!r} is full attention; fine-tuning under SWA needs a sliding one.")
    settings = TrainSettings(
        max_steps=args.steps, epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size,
        grad_accum=args.grad_accum, lora_r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
        target_modules=[m.strip() for m in args.targets.split(",") if m.strip()], max_length=args.max_length,
        gradient_checkpointing=not args.no_gradient_checkpointing, seed=args.seed,
    ).check()  # fmt: skip
    records = load_jsonl(args.data) if args.data else None
    if records is None and args.dataset:  # built-in tasks are distilled inside the pipeline
        records = distill_shared(loaded.model, loaded.tokenizer, _prompts(args, loaded.tokenizer),
                                 max_new_tokens=args.max_new_tokens, cot=args.cot, progress=not args.quiet)  # fmt: skip
        if launch.is_main:
            save_jsonl(records, Path(args.out) / "distill.jsonl")
    if launch.is_main:
        where = f" on {launch.world} processes (DDP)" if launch.distributed else ""
        print(f"Fine-tuning {loaded.info.name} under {cfg.describe()} ({cfg.to_json()}){where}")
    report = finetune_pipeline(
        loaded, cfg, args.out, records=records, task=args.task, samples=args.samples, length_tokens=args.length,
        seed=args.seed, max_new_tokens=args.max_new_tokens, keep=args.keep, cot=args.cot, settings=settings,
        eval_samples=args.eval_samples, eval_length=args.eval_length, progress=not args.quiet,
    )  # fmt: skip
    if launch.is_main:
        _print_report(report)
    return 0


def _print_report(report: FinetuneReport) -> None:
    train = report.train
    print(f"data: {report.records} records kept, {report.examples} examples ({report.skipped_too_long} too long)")
    if train.losses:
        print(f"train: {train.steps} steps in {train.seconds:.0f} s, loss {train.losses[0]:.4f} -> "
              f"{train.losses[-1]:.4f} (per step: {', '.join(f'{x:.3f}' for x in train.losses)})")  # fmt: skip
    for summary in (report.before, report.after):
        if summary is not None:
            print(summary.line())
    if report.adapter_path is not None:
        print(f"adapter saved to {report.adapter_path} (with {SWAA_FILE})")
