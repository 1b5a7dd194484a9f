"""LoRA training under SWAA on a Qwen3-4B-shaped random model (bf16, no download): the benchmark's own training step
beside the public path, ``swaa_core.train.train_lora`` (what ``swaa finetune`` runs: peft wrapping, the collator, a
transformers Trainer), so that the two cannot drift apart again (issue 32).

    PYTHONUNBUFFERED=1 python benchmarks/gpu_train.py                                  # 16K + 32K, ~6 min, H100
    PYTHONUNBUFFERED=1 python benchmarks/gpu_train.py --train-prompts 16384 --profile  # + allocations at the peak
    python benchmarks/gpu_train.py --shape tiny --train-prompts 300 --window 32 --sinks 4 --reps 1   # CPU smoke

For each prompt length (plus 64 answer tokens, labels on the answer), configurations in turns (full attention,
SWA + sinks + FA decode, SWA + sinks), both paths with gradient checkpointing and LoRA r=16 on q/k/v:
- step:       the benchmark's own step (forward with labels, backward, AdamW step), one warm-up, --reps timed;
- train_lora: one ``train_lora`` call with its default TrainSettings, continuing the same PeftModel, --train-warmup
              + --reps steps; seconds per step from its progress reports (the Trainer reads the loss every step).
Per path and configuration: seconds per step (median after warm-up), peak memory over the timed steps
(``torch.cuda.max_memory_allocated``), and what the forward leaves for the backward (allocated at the end of the
model's forward minus at its start; the largest over the timed steps).
--profile: the CUDA allocator's history over one train_lora step per configuration at the first length, and the
largest allocations alive at that step's peak, grouped by the Python frame that made them.
--profile-train: the CUDA kernel table of one mixed-mask step.

A short Markdown table is printed last; full results go to $OUT/gpu_train.json (or --json).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_common as common  # noqa: E402
from gpu_common import DEVICE, SUMMARY, first_call_seconds, gib, qwen3_4b, sync, timed  # noqa: E402

from swaa_core import SWAAConfig, swaa  # noqa: E402
from swaa_core.train.lora import TrainSettings, _training_mode, lora_config, make_example, train_lora  # noqa: E402

ARGS = None
ANSWER = 64
ON_CUDA = DEVICE == "cuda"


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


class ForwardKeeps:
    """GPU bytes allocated when the model's forward ends minus when it starts, the largest since ``reset``: what the
    forward leaves for the backward (saved activations, checkpoint inputs, logits and loss). Gradient checkpointing's
    recomputation runs layer by layer and does not call the model's forward again."""

    def __init__(self, model):
        self.most = self._start = 0
        self._handles = [model.register_forward_pre_hook(self._begins), model.register_forward_hook(self._ends)]

    def _begins(self, *_):
        self._start = allocated()

    def _ends(self, *_):
        self.most = max(self.most, allocated() - self._start)

    def close(self):
        for h in self._handles:
            h.remove()


def allocated() -> int:
    return torch.cuda.memory_allocated() if ON_CUDA else 0


def reset_peak() -> None:
    if ON_CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib():
    return gib(torch.cuda.max_memory_allocated()) if ON_CUDA else None


def build_model():
    if ARGS.shape == "4b":
        return qwen3_4b()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers.tiny_models import build_tiny_model

    return build_tiny_model("qwen3", layers=2, vocab_size=1000, hidden_size=64, num_attention_heads=4, head_dim=16)


def configs() -> dict:
    W, K = ARGS.window, ARGS.sinks
    return {
        "full (sdpa)": None,
        f"SWA W{W} K{K} + FA decode (mixed mask)": SWAAConfig(
            sliding_window_size=W, keep_first=K, force_fa_decode=True
        ),
        f"SWA W{W} K{K}": SWAAConfig(sliding_window_size=W, keep_first=K),
    }


def own_steps(peft_model, opt, base, n: int, ids, keeps: ForwardKeeps) -> dict:
    """The benchmark's own step, configurations in turns: one warm-up (first call timed apart), then --reps. A
    configuration that runs out of memory gets an error row and leaves the turns."""
    steps = {
        label: functools.partial(train_step, peft_model, opt, training_batch(ids, n, cfg))
        for label, cfg in configs().items()
    }
    samples, peaks, kept, failed = {label: [] for label in steps}, {}, {}, {}
    with _training_mode(base, True):
        peft_model.train()
        for label, cfg in configs().items():
            with swaa(base, cfg), out_of_memory(failed, label, peft_model):
                first = first_call_seconds(steps[label])
                steps[label]()
                print(n, "step", label, "first call", round(first, 1), "s", flush=True)
        for _ in range(ARGS.reps):
            for label, cfg in configs().items():
                if label in failed:
                    continue
                with swaa(base, cfg), out_of_memory(failed, label, peft_model):
                    reset_peak()
                    keeps.most = 0
                    samples[label].append(timed(steps[label], reps=1, warmup=0)[0])
                    peaks[label] = max(peaks.get(label) or 0, peak_gib()) if ON_CUDA else None
                    kept[label] = max(kept.get(label, 0), keeps.most)
    return {label: failed.get(label) or row(samples[label], peaks[label], kept[label]) for label in samples}


def public_path(peft_model, n: int, ids, keeps: ForwardKeeps) -> dict:
    """``train_lora`` with default TrainSettings, one call per configuration (in turns), continuing the PeftModel."""
    example = make_example(ids[0, :n].tolist(), ids[0, n:].tolist())
    rows = {}
    for label, cfg in configs().items():
        warm, marks = ARGS.train_warmup, []

        def report(p, warm=warm, marks=marks):
            sync()
            marks.append(time.perf_counter())
            if p.step == warm:  # the timed steps start here: peak and forward figures cover them only
                reset_peak()
                keeps.most = 0

        with out_of_memory(rows, label, peft_model):
            train_lora(
                peft_model,
                [example],
                cfg,
                TrainSettings(max_steps=warm + ARGS.reps),
                on_progress=report,
                progress=False,
            )
            times = [b - a for a, b in zip(marks[warm - 1 : -1], marks[warm:], strict=True)]
            rows[label] = row(times, peak_gib(), keeps.most)
        print(n, "train_lora", label, json.dumps(rows[label]), flush=True)
    return rows


@contextlib.contextmanager
def out_of_memory(rows: dict, label: str, peft_model):
    """Records a configuration that runs out of GPU memory as ``rows[label]`` (with the peak it reached) and frees
    what its step left, so that the other configurations still run."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        rows[label] = dict(error=f"out of memory: {str(e)[:160]}", peak_gib=peak_gib())
        print(label, rows[label]["error"], flush=True)
        peft_model.zero_grad(set_to_none=True)
        reset_peak()


def row(times: list[float], peak, kept: int) -> dict:
    return dict(
        s_per_step=round(statistics.median(times), 3),
        times=[round(t, 3) for t in times],
        peak_gib=peak,
        forward_keeps_gib=gib(kept) if ON_CUDA else None,
    )


def run_train(out: dict):
    """Both paths at every --train-prompts length; the speedups are against full attention on the same path."""
    from peft import get_peft_model

    model = build_model()
    peft_model = get_peft_model(model, lora_config(TrainSettings()))
    base = peft_model.get_base_model()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    keeps = ForwardKeeps(base)
    out["device"] = torch.cuda.get_device_name() if ON_CUDA else "cpu"
    rows = out["rows"] = {}
    vocab = base.config.vocab_size
    for n in ARGS.train_prompts:
        ids = torch.randint(0, vocab, (1, n + ANSWER), device=DEVICE)
        rows[n] = {
            "step": own_steps(peft_model, opt, base, n, ids, keeps),
            "train_lora": public_path(peft_model, n, ids, keeps),
        }
        summarize(n, rows[n])
    if ARGS.profile and ON_CUDA:
        n = ARGS.train_prompts[0]
        ids = torch.randint(0, vocab, (1, n + ANSWER), device=DEVICE)
        out["profile"] = profile_public_path(peft_model, n, ids)
    if ARGS.profile_train and ON_CUDA:
        out["profile_mixed"] = kernel_table(peft_model, base, ARGS.train_prompts[0])
    keeps.close()


def summarize(n: int, by_path: dict) -> None:
    print(n, json.dumps(by_path), flush=True)
    for path, rows in by_path.items():
        full = rows["full (sdpa)"].get("s_per_step")
        for label, r in rows.items():
            if "error" in r or full is None:
                SUMMARY.append((f"{path} {n // 1024}K+{ANSWER}", f"{label}: {r.get('error', 'full attention failed')}"))
                continue
            r["speedup_vs_full"] = round(full / r["s_per_step"], 2)
            text = f"{label}: {r['s_per_step']} s ({r['speedup_vs_full']}x), peak {r['peak_gib']} GiB"
            SUMMARY.append((f"{path} {n // 1024}K+{ANSWER}", f"{text}, forward keeps {r['forward_keeps_gib']} GiB"))


def profile_public_path(peft_model, n: int, ids, top: int = 12) -> dict:
    """One train_lora step per configuration under the allocator's history; the allocations alive at its peak."""
    example = make_example(ids[0, :n].tolist(), ids[0, n:].tolist())
    tables = {}
    for label, cfg in configs().items():
        torch.cuda.memory._record_memory_history(stacks="python", max_entries=1_000_000)
        try:
            train_lora(peft_model, [example], cfg, TrainSettings(max_steps=1), progress=False)
            snapshot = torch.cuda.memory._snapshot()
        finally:
            torch.cuda.memory._record_memory_history(enabled=None)
        tables[label] = live_at_peak(snapshot, top)
        print(f"\n{n} train_lora {label}: allocations made during the step, alive at its peak", flush=True)
        for line in tables[label]["top"]:
            print(f"  {line['mib']:10.1f} MiB  x{line['count']:<5d} {line['where']}", flush=True)
    return tables


def live_at_peak(snapshot: dict, top: int) -> dict:
    """Replays the allocator's trace: the blocks alive when the bytes allocated since recording began were largest."""
    live, now, peak, at_peak = {}, 0, 0, {}
    for trace in snapshot["device_traces"]:
        for e in trace:
            if e["action"] == "alloc":
                live[e["addr"]] = e
                now += e["size"]
                if now > peak:
                    peak, at_peak = now, dict(live)
            elif e["action"] == "free_completed" and e["addr"] in live:
                now -= live.pop(e["addr"])["size"]
    size, count = collections.Counter(), collections.Counter()
    for e in at_peak.values():
        size[made_by(e.get("frames", []))] += e["size"]
        count[made_by(e.get("frames", []))] += 1
    lines = [dict(where=w, mib=s / 2**20, count=count[w]) for w, s in size.most_common(top)]
    return dict(peak_gib=gib(peak), top=lines)


def made_by(frames: list[dict]) -> str:
    """The innermost frames outside torch itself (the code that asked), plus torch's checkpoint when it recomputes."""
    mine = [f for f in frames if "/torch/" not in f["filename"] or "checkpoint" in f["filename"]]
    return " <- ".join(f"{Path(f['filename']).name}:{f['line']} {f['name']}" for f in mine[:3]) or "?"


def kernel_table(peft_model, base, n: int) -> str:
    cfg = list(configs().values())[1]
    batch = training_batch(torch.randint(0, 150000, (1, n + ANSWER), device="cuda"), n, cfg)
    with _training_mode(base, True), swaa(base, cfg):
        peft_model.train()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            peft_model(**batch).loss.backward()
            sync()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15)
    print(table, flush=True)
    return table


def parse(argv=None):
    p = common.base_parser(__doc__, ["train"])
    p.set_defaults(reps=2)
    p.add_argument("--train-prompts", type=int, nargs="+", default=[16384, 32768])
    p.add_argument("--train-warmup", type=int, default=1, help="train_lora steps before the timed ones (>= 1)")
    p.add_argument("--shape", choices=["4b", "tiny"], default="4b", help="tiny: a 2-layer Qwen3 for a CPU smoke run")
    p.add_argument("--profile", action="store_true", help="allocations alive at the peak of a train_lora step")
    p.add_argument("--profile-train", action="store_true", help="CUDA kernel table of one mixed-mask step")
    args = p.parse_args(argv)
    if args.train_warmup < 1:
        p.error("--train-warmup must be >= 1 (the first step's time includes the Trainer's setup)")
    return args


def main(argv=None):
    global ARGS
    ARGS = parse(argv)
    common.start(ARGS, "gpu_train")
    with common.section("train") as out:
        run_train(out)
    return common.finish()


if __name__ == "__main__":
    sys.exit(main())
