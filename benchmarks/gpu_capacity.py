"""Serving capacity on one GPU: the largest batch per recipe from the capacity model (swaa_core.models.capacity),
checked by running ``fast_generate`` at that batch, and the time to serve N requests at it against batch 1.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_capacity.py --out $OUT/gpu_capacity.json

Llama-3.1-8B-shaped model with random weights (bf16), W=2048 (--sinks: sink recipes only, none here), the paper's
recipes (full, SWA, SWA + FA decode, 1/4 FA layers + FA decode, 1/2 FA layers, 1/2 FA layers + FA decode), prompts of
--contexts tokens plus --new-tokens new ones. Recipes take turns inside every repeat. Sections (each guarded):
- decode:  the serving capacity, ``capacity(prefill="row")`` (one request prefilled at a time; the batch's fixed
           buffers beside it). Prefilling the largest batch of 128K prompts takes minutes, so the buffers are filled
           synthetically: a --short-prompt prompt per row with ``max_new_tokens`` = context - short prompt, which allocates the very
           buffers of the full context (the fixed-buffer step reads every slot under a mask, filled or not), stopped
           after --steps decode steps by a stopping criterion (one host read per step). Batches: the largest, the
           one serving --requests requests (at most the largest) and 1. Reports: fits, peak allocated against the
           model's prediction for that run, decode tokens/s against the bandwidth roofline.
- batched: ``fast_generate`` on real prompts of the context, prefilled as --prefill says ("row": one request at a
           time into the batch's buffers, a server's way; "batch": one forward of every row), at
           min(--requests, ``capacity(prefill=...)``) rows and at 1 row, generating all --new-tokens tokens
           (--batched-steps N: stopped after N decode steps instead). Reports fits, peak against prediction,
           prefill, setup (cache move, warm-up, capture) and step times, and the time to serve --requests requests
           of prompt + new tokens: waves x (prefill + setup + (new - 1) steps), every wave timed as the measured one.
Results go to --out (the app's capacity view reads docs/results/gpu_capacity*.json). ``--smoke`` runs a tiny model
on the CPU against a made-up 10 MiB card (no peak memory there): a check that the script runs, not a measurement.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_common as common  # noqa: E402
from gpu_common import SUMMARY, gib  # noqa: E402
from transformers import StoppingCriteria, StoppingCriteriaList  # noqa: E402

from swaa_core import swaa  # noqa: E402
from swaa_core.engine.fast_decode import fast_generate  # noqa: E402
from swaa_core.eval.recipes import resolve_recipe  # noqa: E402
from swaa_core.models.capacity import GPU, capacity, custom_gpu  # noqa: E402
from swaa_core.models.memory import model_shape  # noqa: E402

RECIPES = ("full", "swa", "swa-fa-decode", "swa-quarter-fa-fa-decode", "swa-half-fa", "swa-half-fa-fa-decode")
BANDWIDTH = {"H200": 4.3e12, "H100": 3.0e12}  # measured copy rates (FACTS), by card name
ARGS = None


def card(smoke: bool = False) -> GPU:
    """The GPU this runs on, as the capacity model sees it (``smoke``: a made-up 10 MiB card)."""
    if smoke:
        return custom_gpu(0.01)
    props = torch.cuda.get_device_properties(0)
    bandwidth = next((bw for key, bw in BANDWIDTH.items() if key in props.name), 3.0e12)
    return GPU(props.name, props.total_memory, bandwidth, 700e12, "this card's total_memory; FACTS copy rate")


def build_model():
    return common.tiny_llama() if ARGS.smoke else common.llama8b(ARGS.layers)


def recipes(layers: int) -> dict:
    return {name: resolve_recipe(name, layers, window=ARGS.window, keep_first=ARGS.sinks) for name in RECIPES}


class StopAt(StoppingCriteria):
    """Every row stops once the sequences hold ``length`` tokens. Not MaxLengthCriteria: fast_generate runs inside
    transformers' generate, which refuses a second criterion of a type it builds itself (from max_new_tokens)."""

    def __init__(self, length: int):
        self.length = length

    def __call__(self, input_ids, scores, **kwargs):
        done = input_ids.shape[1] >= self.length
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def run_once(model, cfg, rows: int, prompt: int, new: int, steps: int | None, prefill: str = "batch") -> dict:
    """fast_generate on ``rows`` prompts of ``prompt`` random tokens with buffers for ``prompt + new`` slots, stopped
    after ``steps`` decode steps (None: all ``new`` tokens, no host read per step); what it measured, or why it did
    not fit."""
    device = next(model.parameters()).device
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    gen = torch.Generator(device).manual_seed(rows * 7919 + prompt)
    ids = torch.randint(0, model.config.vocab_size - 1, (rows, prompt), device=device, generator=gen)
    stop = None if steps is None else StoppingCriteriaList([StopAt(prompt + 3 + steps)])  # + warm-up
    start = time.perf_counter()
    try:
        with swaa(model, cfg):
            r = fast_generate(model, ids, max_new_tokens=new, eos_token_id=[], stopping_criteria=stop, prefill=prefill)
    except torch.OutOfMemoryError as e:
        return {"fits": False, "error": str(e).splitlines()[0]}
    except ValueError as e:  # the fixed path's refusal before its prefill: buffers beyond the free memory
        if "would not fit" not in str(e):
            raise
        return {"fits": False, "error": str(e).splitlines()[0], "refused": True}
    finally:
        del ids
    out = {
        "fits": True,
        "wall_s": round(time.perf_counter() - start, 2),
        "prefill_s": round(r.prefill_s, 3),
        "setup_s": round(r.setup_s, 3),
        "decode_steps": r.decode_steps,
        "step_ms": round(1000 * r.decode_s / r.decode_steps, 3) if r.decode_steps else None,
        "tokens_per_s": round(rows * r.tokens_per_s, 1),
        "cuda_graph": r.cuda_graph,
        "kv_gib": gib(sum(r.kv_cache_bytes_per_layer)),
    }
    if device.type == "cuda":
        out["peak_gib"] = gib(torch.cuda.max_memory_allocated())
        out["reserved_peak_gib"] = gib(torch.cuda.max_memory_reserved())
    return out


def check(model, name, cfg, rows, prompt, new, *, predicted_from, steps: int | None) -> dict:
    """One run and the model's figures for it: ``predicted_from`` is the Capacity whose buffers the run allocates."""
    result = {"recipe": name, "config": cfg.to_dict() if cfg else None, "batch": rows, "prompt": prompt, "new": new,
              "prefill": predicted_from.prefill}  # fmt: skip
    result |= run_once(model, cfg, rows, prompt, new, steps, predicted_from.prefill)
    result["predicted_peak_gib"] = gib(predicted_from.peak_bytes(rows))
    result["roofline_tokens_per_s"] = round(rows / predicted_from.step_seconds(rows), 1)  # rows may exceed max_batch
    if result.get("peak_gib"):
        result["peak_vs_predicted"] = round(result["peak_gib"] / result["predicted_peak_gib"], 3)
    if result.get("step_ms"):
        result["pct_of_roofline"] = round(100 * result["tokens_per_s"] / result["roofline_tokens_per_s"], 1)
    print({k: v for k, v in result.items() if k != "config"}, flush=True)
    return result


def run_decode(out: dict, model, shape, gpu):
    rows_out, new, short = out.setdefault("rows", []), ARGS.new_tokens, ARGS.short_prompt
    for context in ARGS.contexts:
        plans = {}
        for name, cfg in recipes(shape.num_layers).items():
            serving = capacity(shape, cfg, gpu, prompt_tokens=context, new_tokens=new, prefill="row", label=name)
            # what the synthetic run allocates: a short prompt, buffers for the whole context
            run = capacity(shape, cfg, gpu, prompt_tokens=short, new_tokens=context + new - short, prefill="batch")
            batches = sorted({serving.max_batch, min(ARGS.requests, serving.max_batch), 1} - {0}, reverse=True)
            plans[name] = (cfg, serving, run, batches)
            out.setdefault("model", []).append({"context": context, **serving.row(ARGS.requests)})
        for rep in range(ARGS.reps):
            for name, (cfg, serving, run, batches) in plans.items():
                for b in batches:
                    r = check(model, name, cfg, b, short, context + new - short, predicted_from=run, steps=ARGS.steps)
                    r |= {"section": "decode", "context": context, "rep": rep, "model_max_batch": serving.max_batch}
                    rows_out.append(r)
    _summary(out, "decode")


def run_batched(out: dict, model, shape, gpu):
    rows_out, n = out.setdefault("rows", []), ARGS.requests
    for context in ARGS.contexts:
        for name, cfg in recipes(shape.num_layers).items():
            rows = serve(model, cfg, context, ARGS.new_tokens, n, gpu=gpu, label=name, steps=ARGS.batched_steps or None,
                         prefill=ARGS.prefill)  # fmt: skip
            out.setdefault("model", []).append(rows.pop("model"))
            rows_out.extend(rows["runs"])
            if rows.get("serve_s"):
                SUMMARY.append((f"serve {n} x {_k(context)}+{ARGS.new_tokens} {name}", _serve_text(rows)))


def serve(model, cfg, prompt: int, new: int, requests: int, *, gpu: GPU, label: str, steps: int | None = None,
          prefill: str = "row") -> dict:  # fmt: skip
    """``requests`` requests of ``prompt`` + ``new`` tokens through ``fast_generate`` (``prefill``: "row", each
    request of a wave prefilled alone into the wave's buffers, or "batch", the wave in one forward), at the model's largest batch for that (at most ``requests``) and at batch 1, each run
    generating all ``new`` tokens (``steps``: stopped after that many decode steps); the serve time is waves x
    (prefill + setup + (new - 1) steps) of the measured wave. Returns {"model": the model's row, "runs": the two
    runs, "serve_s": {batch: s}}."""
    shape = model_shape(model)
    cap = capacity(shape, cfg, gpu, prompt_tokens=prompt, new_tokens=new, prefill=prefill, label=label)
    out = {"model": {"context": prompt, **cap.row(requests)}, "runs": [], "serve_s": {}}
    for b in sorted({min(requests, cap.max_batch), 1} - {0}, reverse=True):
        r = check(model, label, cfg, b, prompt, new, predicted_from=cap, steps=steps)
        r |= {"section": "batched", "context": prompt, "model_max_batch": cap.max_batch}
        if r.get("step_ms"):
            wave = r["prefill_s"] + r["setup_s"] + (new - 1) * r["step_ms"] / 1000
            r["serve_s"] = out["serve_s"][b] = round(math.ceil(requests / b) * wave, 1)
            r["serve_model_s"] = round(cap.serve_seconds(requests, b), 1)
        out["runs"].append(r)
    return out


def _serve_text(rows: dict) -> str:
    times = rows["serve_s"]
    return ", ".join(f"batch {b}: {s} s" for b, s in times.items())


def _k(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens % 1024 == 0 else str(tokens)


def _summary(out: dict, section: str):
    for r in out["rows"]:
        if r["section"] == section and r["batch"] == r["model_max_batch"]:
            text = (
                "did not fit" if not r["fits"] else f"{r['tokens_per_s']} tok/s, {r.get('pct_of_roofline')}% roofline"
            )
            SUMMARY.append((f"{section} {_k(r['context'])} {r['recipe']} x{r['batch']}", text))


def model_table() -> str:
    """The capacity model's table for the 8B shape on an H100 and an H200 (docs/benchmarks.md): no GPU needed."""
    from swaa_core.models.capacity import GPUS
    from swaa_core.models.registry import get_model_entry

    shape, n, new = model_shape(get_model_entry("meta-llama/Llama-3.1-8B-Instruct")), ARGS.requests, ARGS.new_tokens
    lines = []
    for gpu in GPUS.values():
        head = [
            f"{_k(c)}: {m}"
            for c in ARGS.contexts
            for m in ("seqs (row / batch prefill)", "tok/s", f"serve {n} s", f"serve {n} s at batch 1")
        ]
        card = f"{gpu.name} ({gpu.memory_bytes / 2**30:.1f} GiB, {gpu.bandwidth / 1e12:.1f} TB/s)"
        lines += [f"\n{card}, +{new} tokens\n",
                  "| recipe | " + " | ".join(head) + " |", "|---" * (1 + len(head)) + "|"]  # fmt: skip
        for name, cfg in recipes(shape.num_layers).items():
            cells = []
            for c in ARGS.contexts:
                row, batch = (
                    capacity(shape, cfg, gpu, prompt_tokens=c, new_tokens=new, prefill=m) for m in ("row", "batch")
                )
                cells += _cells(row, batch, n)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cells(row, batch, n: int) -> list[str]:
    """Sequences, tokens/s and serve seconds with row / batch prefill, then the serve seconds at batch 1."""
    pair = [(c.max_batch, c.tokens_per_s(), c.serve_seconds(n, min(n, c.max_batch))) for c in (row, batch)]
    (rb, rt, rs), (bb, bt, bs) = pair
    return [f"{rb} / {bb}", f"{rt:,.0f} / {bt:,.0f}", f"{rs:.0f} / {bs:.0f}", f"{row.serve_seconds(n, 1):.0f}"]


def parse(argv=None):
    p = common.base_parser(__doc__, ["decode", "batched"])
    p.set_defaults(reps=1)
    p.add_argument("--out", default=None, help="JSON results (default: --json, else $OUT/gpu_capacity.json)")
    p.add_argument("--contexts", type=int, nargs="+", default=[32768, 131072], help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--steps", type=int, default=24, help="decode section: timed decode steps per run")
    p.add_argument("--batched-steps", type=int, default=0, help="batched section: stop after N steps (0: all)")
    p.add_argument("--prefill", choices=["row", "batch"], default="row", help="batched section: how a wave prefills")
    p.add_argument("--short-prompt", type=int, default=512, help="decode section: prompt tokens per row")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU, made-up 10 MiB card")
    p.add_argument("--model-table", action="store_true", help="print the capacity model's tables and exit (no GPU)")
    args = p.parse_args(argv)
    if args.model_table:  # the tables of docs/benchmarks.md: the 8B shape, both prefill modes, printed
        used = {"model_table", "contexts", "new_tokens", "requests", "window", "sinks"}
        ignored = [f"--{k.replace('_', '-')}" for k, v in vars(args).items() if k not in used and v != p.get_default(k)]
        if ignored:
            p.error(f"--model-table prints the model's tables (the 8B shape, both prefill modes) and takes --contexts, "
                    f"--new-tokens, --requests, --window and --sinks only; not {', '.join(ignored)}.")  # fmt: skip
    if args.smoke:
        args.contexts, args.short_prompt, args.window, args.sinks = [256], 64, 32, 4
        args.new_tokens, args.steps = min(args.new_tokens, 16), min(args.steps, 4)
    args.json = args.out or args.json
    return args


def main(argv=None):
    global ARGS
    ARGS = parse(argv)
    if ARGS.model_table:
        print(model_table())
        return 0
    common.start(ARGS, "gpu_capacity")
    model = build_model()
    shape, gpu = model_shape(model), card(ARGS.smoke)
    common.RESULTS["capacity"] = {
        "machine": {"gpu": gpu.name, "memory_gib": gib(gpu.memory_bytes), "bandwidth": gpu.bandwidth},
        "model": "Llama-3.1-8B shape, random weights, bf16" if not ARGS.smoke else "tiny Llama (smoke)",
        "shape": {"num_layers": shape.num_layers, "num_kv_heads": shape.num_kv_heads, "head_dim": shape.head_dim,
                  "hidden_size": shape.hidden_size, "intermediate_size": shape.intermediate_size,
                  "vocab_size": shape.vocab_size},
        "window": ARGS.window, "sinks": ARGS.sinks, "new_tokens": ARGS.new_tokens, "requests": ARGS.requests,
    }  # fmt: skip
    runs = {"decode": run_decode, "batched": run_batched}
    for name in ARGS.sections:
        with common.section(name) as out:
            runs[name](out, model, shape, gpu)
    return common.finish()


if __name__ == "__main__":
    sys.exit(main())
