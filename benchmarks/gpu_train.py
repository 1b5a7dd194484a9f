"""GPU benchmark of one LoRA training step with SWAA on a Qwen3-4B-shaped random model (bf16, no download).

    PYTHONUNBUFFERED=1 python benchmarks/gpu_train.py --reps 2 --profile-train

Section (guarded: a failure is recorded with its traceback):
- train:       seconds per optimizer step and peak memory at --train-prompts, full attention vs SWA (with and
               without the mixed FA-decode mask); --profile-train prints the CUDA kernel table of the mixed step.

A short Markdown table is printed last; full results go to $OUT/gpu_train.json (or --json).
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_common as common  # noqa: E402
from gpu_common import SUMMARY, first_call_seconds, gib, qwen3_4b, sync, timed  # noqa: E402

from swaa_core import SWAAConfig, swaa  # noqa: E402

ARGS = None


def training_batch(ids: torch.Tensor, prompt_tokens: int, cfg) -> dict:
    """One example (1, prompt + answer) with labels on the answer only; FA decode also needs where the prompt ends
    (its answer queries attend to everything)."""
    labels = ids.clone()
    labels[:, :prompt_tokens] = -100
    batch = dict(input_ids=ids, labels=labels)
    if cfg is not None and cfg.force_fa_decode:
        batch["swaa_prompt_lengths"] = torch.tensor([prompt_tokens])
    return batch


def train_step(peft_model, opt, batch: dict) -> None:
    peft_model(**batch).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def run_train(out: dict):
    """LoRA r=16 on q/k/v (swaa_core's defaults), gradient checkpointing, batch 1, one example of --train-prompts
    tokens + 64 answer tokens with labels on the answer; configurations in turns; seconds per optimizer step (median
    after warm-up) and peak GPU memory. Same attention path as swaa_core.train.lora.train_lora (which wraps it in a
    transformers Trainer)."""
    from peft import get_peft_model

    from swaa_core.train.lora import TrainSettings, _training_mode, lora_config

    model = qwen3_4b()
    peft_model = get_peft_model(model, lora_config(TrainSettings()))
    base = peft_model.get_base_model()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    W, K, answer = ARGS.window, ARGS.sinks, 64
    configs = {
        "full (sdpa)": None,
        f"SWA W{W} K{K} + FA decode (mixed mask)": SWAAConfig(
            sliding_window_size=W, keep_first=K, force_fa_decode=True
        ),
        f"SWA W{W} K{K}": SWAAConfig(sliding_window_size=W, keep_first=K),
    }
    rows = out["rows"] = {}
    with _training_mode(base, True):
        peft_model.train()
        for n in ARGS.train_prompts:
            ids = torch.randint(0, 150000, (1, n + answer), device="cuda")
            steps = {
                label: functools.partial(train_step, peft_model, opt, training_batch(ids, n, cfg))
                for label, cfg in configs.items()
            }
            samples = {label: [] for label in configs}
            peaks = {label: 0.0 for label in configs}
            for label, cfg in configs.items():
                with swaa(base, cfg):
                    first = first_call_seconds(steps[label])
                    steps[label]()
                print(n, label, "first step", round(first, 1), "s", flush=True)
            for _ in range(ARGS.reps):
                for label, cfg in configs.items():
                    with swaa(base, cfg):
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats()
                        samples[label].append(timed(steps[label], reps=1, warmup=0)[0])
                        peaks[label] = max(peaks[label], gib(torch.cuda.max_memory_allocated()))
            full = statistics.median(samples["full (sdpa)"])
            rows[n] = {
                label: dict(
                    s_per_step=round(statistics.median(t), 3),
                    times=[round(x, 3) for x in t],
                    speedup_vs_full=round(full / statistics.median(t), 2),
                    peak_gib=peaks[label],
                )
                for label, t in samples.items()
            }
            print(n, json.dumps(rows[n]), flush=True)
            for label, r in rows[n].items():
                SUMMARY.append(
                    (
                        f"LoRA step {n // 1024}K+{answer}",
                        f"{label}: {r['s_per_step']} s ({r['speedup_vs_full']}x), peak {r['peak_gib']} GiB",
                    )
                )
        if ARGS.profile_train:
            cfg = list(configs.values())[1]
            n = ARGS.train_prompts[0]
            batch = training_batch(torch.randint(0, 150000, (1, n + answer), device="cuda"), n, cfg)
            with swaa(base, cfg), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                peft_model(**batch).loss.backward()
                sync()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15)
            print(table, flush=True)
            out["profile_mixed"] = table
    del peft_model, base, model, opt
    torch.cuda.empty_cache()


def parse(argv=None):
    p = common.base_parser(__doc__, ["train"])
    p.add_argument("--train-prompts", type=int, nargs="+", default=[16384, 32768])
    p.add_argument("--profile-train", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    global ARGS
    ARGS = parse(argv)
    common.start(ARGS, "gpu_train")
    with common.section("train") as out:
        run_train(out)
    return common.finish()


if __name__ == "__main__":
    sys.exit(main())
