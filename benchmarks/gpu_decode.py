"""Decode speed on the GPU: eager ``generate`` and the CUDA-graph path, SWAA configurations against full attention.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_decode.py --sections kernels graph eager hf_static end_to_end

Llama-3.1-8B-shaped model with random weights (bf16, batch 1), W=2048, 128 sinks. Configurations take turns inside
every repeat, so drift of the host hits them alike; every decode figure covers the same number of generated tokens.
Sections (each guarded: a failure is recorded and the next one runs):
- kernels:    one decode query against L keys: SDPA without a mask (GQA), SDPA with the query heads of a KV group
              folded into the query axis and a mask, and the static path's SDPA with a mask and GQA, at L = sinks + W
              and the prompt lengths.
- graph:      ``fast_generate`` (fixed buffers, one decode step captured in a CUDA graph): tokens/s at each prompt
              length, first-call cost (cache move + warm-up + capture), and whether its tokens equal the eager
              static path's.
- compiled:   the CUDA-graph step eager against compiled by inductor (``fast_generate(compile=True)``), full and SWA
              decode: ms per token, first-call cost, a second prompt in the same bucket, greedy tokens compared.
- eager:      plain ``model.generate``; per-token time from a streamer's timestamps (prefill excluded). Beside
              the SWAA configurations: full attention as transformers runs it, the same without SDPA's cuDNN kernel,
              and as SWAA's runner runs every column (its growing cache; transformers' decode steps without cuDNN;
              SWAA's dispatcher picks its own kernels: the flash kernel, or cuDNN over bucketed keys when masked).
              --shapes fresh (default) starts every run at key lengths no earlier run met, as real use does.
              --batch N generates N rows, the later ones shorter and left-padded, so every decode step is masked.
- hf_static:  full attention through transformers' own compiled path (``cache_implementation="static"``).
- end_to_end: a long prompt plus --e2e-tokens new tokens, total seconds: transformers' stock generate, then per
              configuration eager (as the runner runs them: ``decode_kernels``), graph and compiled (first call and
              a warm second request); then --e2e-requests requests of --e2e-batch-prompt + --e2e-tokens
              tokens through the graph path at the capacity model's largest batch and at batch 1 (each run generates
              every token; the serve time is waves x the measured wave: gpu_capacity.serve).
- public:     what a user gets from ``model.generate`` after ``apply_swaa`` (default-routed to the fixed-buffer path on
              CUDA), greedy and sampled, beside the forced eager path and ``fast_generate`` (gpu_decode_public.py).
- profile:    where an eager step's time goes, per configuration at the first prompt length: torch.profiler's host
              and device totals per step, the CUDA runtime calls that block the host (synchronisations, copies
              between host and device), the busiest host ops, and every synchronising call's Python line (CUDA sync
              debug mode).
- host_reads: ms per decode step when the stop is read from the device every token (sampling from the global RNG
              with an end of sequence) against every 16 (a seeded generator), SWA decode, graph path.
Results go to $OUT/gpu_decode.json (or --json); the plumbing is gpu_common's.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_common as common  # noqa: E402
from gpu_common import SUMMARY, Stamps, gib, llama8b  # noqa: E402
from gpu_decode_public import run_public  # noqa: E402

from swaa_core import SWAAConfig, kv_cache_bytes, remove_swaa, swaa  # noqa: E402
from swaa_core.engine.compiled_step import FROZEN_FUSED, inductor_backend  # noqa: E402
from swaa_core.engine.fast_decode import fast_generate  # noqa: E402
from swaa_core.engine.kernels.sdpa import decode_sdpa  # noqa: E402
from swaa_core.eval.decoding import decode_kernels, shared_cache  # noqa: E402

ARGS = None


CONFIG_NAMES = ("full", "SWA decode", "FA decode", "1/2 FA layers + FA decode")
STOCK = "transformers generate (stock)"  # end_to_end's baseline row


def configs(layers: int) -> dict:
    W, K = ARGS.window, ARGS.sinks
    return {
        "full": None,
        "SWA decode": SWAAConfig(sliding_window_size=W, keep_first=K),
        "FA decode": SWAAConfig(sliding_window_size=W, keep_first=K, force_fa_decode=True),
        "1/2 FA layers + FA decode": SWAAConfig(
            sliding_window_size=W,
            keep_first=K,
            force_fa_decode=True,
            non_sliding_layers=SWAAConfig.fa_layers("1/2", layers),
        ),
    }


def prompt(n: int, seed: int = 7) -> torch.Tensor:
    return torch.randint(0, 128000, (1, n), device="cuda", generator=torch.Generator("cuda").manual_seed(seed))


def batch(n: int, rows: int) -> dict:
    """``rows`` prompts, the first of n tokens, each later one a third shorter than the one before, left-padded to n
    (as a tokenizer pads a batch for generation): generate's input_ids and attention_mask."""
    ids = prompt(n).expand(rows, n).clone()
    mask = torch.ones_like(ids)
    for r in range(1, rows):
        mask[r, : n - round(n * (2 / 3) ** r)] = 0
    ids[mask == 0] = 0
    return dict(inputs=ids, attention_mask=mask) if rows > 1 else dict(inputs=ids)


# --------------------------------------------------------------------------- kernels
def attention_variants(L: int, H: int = 32, Hkv: int = 8, D: int = 128) -> dict:
    q = torch.randn(1, H, 1, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, Hkv, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mask = torch.ones(1, 1, 1, L, dtype=torch.bool, device="cuda")
    mask[..., L - 7 :] = False
    return {
        "sdpa gqa, no mask": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
        "folded query heads, masked": lambda: F.scaled_dot_product_attention(
            q.view(1, Hkv, H // Hkv, D), k, v, attn_mask=mask
        ),
        "static path: sdpa gqa, masked": lambda: decode_sdpa(q, k, v, mask, D**-0.5, fixed_shape=True),
    }


def run_kernels(out: dict):
    from triton.testing import do_bench

    rows = out["rows"] = {}
    for L in [ARGS.sinks + ARGS.window, *ARGS.prompts]:
        rows[L] = {}
        for name, fn in attention_variants(L).items():  # microseconds; a kernel that fails leaves the others' rows
            try:
                rows[L][name] = round(do_bench(fn) * 1e3, 1)
            except Exception as e:  # noqa: BLE001 - recorded and reported, as the sections' guards do
                rows[L][name] = f"failed: {repr(e)[:200]}"
        print(L, rows[L], flush=True)
    SUMMARY.append(("decode attention, us per layer", json.dumps(rows)))


# --------------------------------------------------------------------------- CUDA-graph path
@torch.no_grad()
def run_graph(out: dict, model):
    cfgs = configs(model.config.num_hidden_layers)
    rows = out["rows"] = {}
    for n in ARGS.prompts:
        ids = prompt(n)
        rows[n] = {label: {"tok_s": [], "setup_s": []} for label in cfgs}
        for rep in range(ARGS.reps):
            for label, cfg in cfgs.items():
                with swaa(model, cfg):
                    r = fast_generate(model, ids, max_new_tokens=ARGS.new_tokens, eos_token_id=[], cuda_graph=True)
                rows[n][label]["tok_s"].append(round(r.tokens_per_s, 1))
                rows[n][label]["setup_s"].append(round(r.setup_s, 2))
                rows[n][label]["prefill_s"] = round(r.prefill_s, 3)
                if rep == 0 and n <= ARGS.check_up_to:
                    with swaa(model, cfg):
                        eager = fast_generate(model, ids, max_new_tokens=24, eos_token_id=[], cuda_graph=False)
                    k = eager.sequences.shape[1]
                    rows[n][label]["graph_equals_eager_24"] = bool((eager.sequences == r.sequences[:, :k]).all())
                del r
                torch.cuda.empty_cache()
        for label, row in rows[n].items():
            row["tok_s_median"] = statistics.median(row["tok_s"])
            row["ms_per_token"] = round(1e3 / row["tok_s_median"], 2)
            SUMMARY.append(
                (f"graph decode {n // 1024}K", f"{label}: {row['tok_s_median']} tok/s, setup {row['setup_s']}")
            )
        print(n, rows[n], flush=True)
        del ids


@torch.no_grad()
def run_host_reads(out: dict, model):
    """What reading the stop every token costs (``fast_generate``'s rule for sampling from the global RNG with an end
    of sequence, a streamer, or the caller's own processor), against reading it every ``CHECK_EVERY`` tokens: the same
    sampled step with the global RNG and with a ``generator``, SWA decode, graph path, ``min_new_tokens`` = all, so
    every run makes the same steps. Greedy without an end of sequence beside them."""
    cfg = configs(model.config.num_hidden_layers)["SWA decode"]
    n_new, eos = ARGS.new_tokens, [model.config.eos_token_id]
    modes = {
        "greedy, no eos (read every 16)": dict(eos_token_id=[]),
        "sampled, generator (read every 16)": dict(eos_token_id=eos, do_sample=True, generator="seeded"),
        "sampled, global RNG + eos (read every token)": dict(eos_token_id=eos, do_sample=True),
    }
    rows = out["rows"] = {}
    with swaa(model, cfg):
        for n in ARGS.prompts:
            ids, rows[n] = prompt(n), {label: [] for label in modes}
            for _ in range(ARGS.reps):
                for label, kw in modes.items():
                    if kw.get("generator"):
                        kw = {**kw, "generator": torch.Generator("cuda").manual_seed(0)}
                    r = fast_generate(model, ids, max_new_tokens=n_new, min_new_tokens=n_new, **kw)
                    rows[n][label].append(round(r.decode_s / r.decode_steps * 1e3, 3))
            for label, times in rows[n].items():
                SUMMARY.append((f"host reads {n // 1024}K", f"{label}: {statistics.median(times):.3f} ms/token"))
            print(n, rows[n], flush=True)


# --------------------------------------------------------------------------- eager generate
def paired_ratio(times: list[float], base: list[float]) -> float:
    """Median over rounds of time / base time in the same round. The host's slow spells last whole rounds (single
    runs range from 23 to 48 ms), so a ratio taken inside each round cancels them, where a ratio of medians does not."""
    return round(statistics.median(t / b for t, b in zip(times, base, strict=True)), 3)


@torch.no_grad()
def run_eager(out: dict, model):
    # "full" runs on transformers' own cache; every other row, and "full, shared cache", on the cache the app and the
    # CLI give every column (SWAA's growing layers): the pair shows what the cache alone changes
    # "full": transformers' stock path; "full, flash SDPA": the same with decode steps off SDPA's cuDNN kernel (which
    # builds a graph per new key length); "full, shared cache": the runner's full column (SWAA's growing cache, too)
    cfgs = {"full, shared cache": None, "full, flash SDPA": None, **configs(model.config.num_hidden_layers)}
    rows = out["rows"] = {}
    out["shapes"], out["batch"] = ARGS.shapes, ARGS.batch
    for n in ARGS.prompts:
        samples = {label: [] for label in cfgs}
        kv = {}
        for rep in range(ARGS.reps + 1):
            for i, label in enumerate(cfgs):
                # fresh: every run meets key lengths no earlier run met, as a user's next prompt does; cuDNN's graph
                # cache would otherwise hide what a new length costs
                fresh = (rep * len(cfgs) + i) * (ARGS.new_tokens + 1) if ARGS.shapes == "fresh" else 0
                with swaa(model, cfgs[label]), _sdpa_policy(label, model):
                    stamps = Stamps()
                    result = model.generate(
                        **batch(n + fresh, ARGS.batch),
                        pad_token_id=0,
                        max_new_tokens=ARGS.new_tokens,
                        min_new_tokens=ARGS.new_tokens,
                        do_sample=False,
                        streamer=stamps,
                        return_dict_in_generate=True,
                        **({} if label in ("full", "full, flash SDPA") else shared_cache(model)),
                    )
                if rep:  # the first round is warm-up
                    samples[label].append(stamps.per_token() * 1e3)
                kv[label] = gib(sum(kv_cache_bytes(result.past_key_values)))
                del result
                torch.cuda.empty_cache()
        full = statistics.median(samples["full"])
        rows[n] = {
            label: dict(
                ms_median=round(statistics.median(s), 2),
                ms_min=round(min(s), 2),
                ms=[round(x, 2) for x in s],
                vs_full=round(statistics.median(s) / full, 3),
                vs_full_paired=paired_ratio(s, samples["full"]),
                kv_gib=kv[label],
            )
            for label, s in samples.items()
        }
        for label, r in rows[n].items():
            SUMMARY.append(
                (
                    f"eager decode {n // 1024}K" + (f", {ARGS.batch} left-padded rows" if ARGS.batch > 1 else ""),
                    f"{label}: {r['ms_median']} ms/token ({r['vs_full_paired']}x full's, paired by round)",
                )
            )
        print(n, rows[n], flush=True)


def _sdpa_policy(label: str, model):
    """Every row but transformers' stock "full" runs as the runner runs its columns (``decode_kernels``: transformers'
    own decode steps without SDPA's cuDNN kernel; SWAA's dispatcher chooses its own)."""
    return contextlib.nullcontext() if label == "full" else decode_kernels(model)


@torch.no_grad()
def run_hf_static(out: dict, model):
    """transformers' best path for full attention: static cache, compiled decode step (its automatic compile)."""
    remove_swaa(model)
    rows = out["rows"] = {}
    for n in ARGS.hf_prompts:
        ids = prompt(n)
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, cache_implementation="static")
        first = time.perf_counter() - start
        per = []
        for _ in range(2):
            stamps = Stamps()
            model.generate(
                ids,
                max_new_tokens=ARGS.new_tokens,
                min_new_tokens=ARGS.new_tokens,
                do_sample=False,
                cache_implementation="static",
                streamer=stamps,
            )
            per.append(stamps.per_token() * 1e3)
        rows[n] = dict(first_call_s=round(first, 1), ms_per_token=[round(x, 2) for x in per])
        SUMMARY.append(
            (f"transformers static+compile {n // 1024}K", f"full: {min(per):.2f} ms/token, first {first:.0f} s")
        )
        print(n, rows[n], flush=True)
        torch.cuda.empty_cache()


def _timed_generate(fn) -> tuple[float, object]:
    seconds, result = common.timed_call(fn)
    return round(seconds, 2), result


def _parts(r) -> dict:
    return dict(prefill=round(r.prefill_s, 2), setup=round(r.setup_s, 2), decode=round(r.decode_s, 2))


@torch.no_grad()
def run_end_to_end(out: dict, model):
    """Modes per configuration (--e2e-modes): ``eager`` (``generate`` as the runner runs it), ``graph``
    (``fast_generate``, eager step in a CUDA graph), ``compiled`` (the step compiled by inductor, then captured: its
    first call, compilation included, and a second request of the same length, which reuses the compiled step as a
    server's later requests do), ``frozen`` (the same with ``compiled_step.FROZEN_FUSED``, the fastest step measured;
    a second copy of the fused weights). ``stock`` is one more row: transformers' own ``generate`` on the model without SWAA
    (dynamic cache, its default kernels), the baseline a user starts from."""
    n, new = max(ARGS.prompts), ARGS.e2e_tokens
    ids, again = prompt(n, seed=8), prompt(n, seed=9)
    rows = out["rows"] = {}
    greedy = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False)
    if "stock" in ARGS.e2e_modes:
        rows[STOCK] = {"stock_s": _timed_generate(lambda: model.generate(ids, **greedy))[0]}
        print(rows, flush=True)
        torch.cuda.empty_cache()
    cfgs = configs(model.config.num_hidden_layers)
    for label in ARGS.e2e_configs or cfgs:
        row = rows[label] = {}
        with swaa(model, cfgs[label]):
            if "eager" in ARGS.e2e_modes:
                with decode_kernels(model):  # as the runner runs every column on the eager path
                    row["eager_s"] = _timed_generate(
                        lambda: model.generate(ids, cache_implementation="dynamic", **greedy)
                    )[0]
            if "graph" in ARGS.e2e_modes:
                row["graph_s"], r = _timed_generate(
                    lambda: fast_generate(model, ids, max_new_tokens=new, eos_token_id=[])
                )
                row["graph_parts"] = _parts(r)
            for mode, backend in (("compiled", True), ("frozen", inductor_backend(**FROZEN_FUSED))):
                if mode not in ARGS.e2e_modes:
                    continue
                for key, x in ((f"{mode}_first_call", ids), (mode, again)):
                    row[f"{key}_s"], r = _timed_generate(
                        lambda x=x, b=backend: fast_generate(model, x, max_new_tokens=new, eos_token_id=[], compile=b)
                    )
                    row[f"{key}_parts"] = _parts(r)
        print(label, row, flush=True)
        torch.cuda.empty_cache()
    full_times = [v for k, v in rows.get("full", {}).items() if k.endswith("_s") and "first" not in k]
    for row in list(rows.values()):
        for key in [k for k in row if k.endswith("_s") and "first" not in k]:
            if full_times:  # the project's fastest full-attention path, warm
                row[key.removesuffix("_s") + "_vs_fastest_full"] = round(min(full_times) / row[key], 2)
            if STOCK in rows and key != "stock_s":
                row[key.removesuffix("_s") + "_vs_stock"] = round(rows[STOCK]["stock_s"] / row[key], 2)
    if ARGS.e2e_requests:  # many requests at the largest batch that fits (gpu_capacity.py: the model, the runs)
        import gpu_capacity

        for label in ARGS.e2e_configs or cfgs:
            served = gpu_capacity.serve(model, cfgs[label], ARGS.e2e_batch_prompt, new, ARGS.e2e_requests,
                                        gpu=gpu_capacity.card(), label=label)  # fmt: skip
            rows[label]["batched"] = {"requests": ARGS.e2e_requests, "prompt": ARGS.e2e_batch_prompt,
                                      "serve_s_by_batch": served["serve_s"], "runs": served["runs"]}  # fmt: skip
    SUMMARY.append((f"end to end {n // 1024}K + {new}", json.dumps(rows)))
    print(rows, flush=True)


SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy", "cudaMemcpyAsync")


def _sync_sites(model, ids) -> dict:
    """Python lines (innermost frame in swaa_core or transformers) of every call that synchronises with the device."""
    import traceback
    import warnings

    sites: dict[str, int] = {}

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack() if "swaa_core" in f.filename or "transformers" in f.filename]
        where = f"{frames[-1].filename.split('site-packages/')[-1]}:{frames[-1].lineno}" if frames else filename
        sites[where] = sites.get(where, 0) + 1

    shown = warnings.showwarning
    warnings.showwarning = record
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            model.generate(ids, max_new_tokens=9, min_new_tokens=9, do_sample=False, cache_implementation="dynamic")
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = shown
    return {k: round(v / 9, 2) for k, v in sorted(sites.items(), key=lambda kv: -kv[1])}  # per step (prefill incl.)


class ProfiledSteps(Stamps):
    """Stamps that run ``profiler`` over the decode steps only (from the first generated token to the end)."""

    def __init__(self, profiler):
        super().__init__()
        self.profiler = profiler

    def put(self, value):
        super().put(value)
        if len(self.times) == 2:
            torch.cuda.synchronize()
            self.profiler.start()

    def end(self):
        torch.cuda.synchronize()
        self.profiler.stop()


@torch.no_grad()
def run_profile(out: dict, model):
    from torch.profiler import ProfilerActivity, profile

    n, steps = ARGS.prompts[0], 17
    ids = prompt(n)
    rows = out["rows"] = {}
    cfgs = {"full, shared cache": None, **configs(model.config.num_hidden_layers)}
    for label, cfg in cfgs.items():
        cache = (lambda: {}) if label == "full" else (lambda: shared_cache(model))  # as in the eager section
        with swaa(model, cfg), _sdpa_policy(label, model):
            model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, **cache())  # warm-up
            prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            stamps = ProfiledSteps(prof)
            model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, streamer=stamps, **cache())
            decode_steps = steps - 1
            events = prof.key_averages()
            device_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
            syncs = {e.key: e.count for e in events if e.key in SYNC_CALLS}
            top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:16]
            rows[label] = dict(
                ms_per_token_profiled=round(stamps.per_token() * 1e3, 2),
                device_ms_per_step=round(device_us / 1e3 / decode_steps, 2),
                blocking_calls_per_step={k: round(v / decode_steps, 1) for k, v in syncs.items()},
                launches_per_step=round(
                    sum(e.count for e in events if e.key.startswith(("cudaLaunch", "cuLaunch"))) / decode_steps, 1
                ),
                top_host_ops_us_per_step=[
                    (e.key, round(e.self_cpu_time_total / decode_steps), round(e.count / decode_steps, 1)) for e in top
                ],
                sync_sites_per_step=_sync_sites(model, ids),
            )
        print(label, json.dumps(rows[label]), flush=True)
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- compiled step (issue 29)
@torch.no_grad()
def run_compiled(out: dict, model):
    """ms per token of the CUDA-graph step, eager (``compile=False``) against inductor-compiled, full attention and SWA
    decode in turns; first-call cost (setup_s: cache move, warm-up steps with compilation, capture) of the first
    compiled call and of another prompt in the same 256-slot bucket; whether the greedy tokens agree."""
    cfgs = {k: v for k, v in configs(model.config.num_hidden_layers).items() if k in ("full", "SWA decode")}
    rows = out["rows"] = {}
    kw = dict(max_new_tokens=ARGS.new_tokens, eos_token_id=[], do_sample=False)
    for n in ARGS.prompts:
        ids, other = prompt(n), prompt(n - 5, seed=8)
        rows[n] = {}
        for label, cfg in cfgs.items():
            row = rows[n][label] = {"graph_ms": [], "compiled_ms": []}
            with swaa(model, cfg):
                first, again = (fast_generate(model, x, compile=True, **kw) for x in (ids, other))
                row["first_call_setup_s"], row["same_bucket_setup_s"] = round(first.setup_s, 2), round(again.setup_s, 2)
                for _ in range(ARGS.reps):
                    for mode in ("graph", "compiled"):
                        r = fast_generate(model, ids, compile=mode == "compiled", **kw)
                        row[f"{mode}_ms"].append(round(1e3 / r.tokens_per_s, 3))
                        row[f"{mode}_tokens"] = r.sequences[0, n:].tolist()
            row["greedy_tokens_equal"] = row.pop("graph_tokens") == row.pop("compiled_tokens")
            for mode in ("graph", "compiled"):
                row[f"{mode}_ms_median"] = statistics.median(row[f"{mode}_ms"])
            SUMMARY.append((f"compiled decode {n // 1024}K", f"{label}: graph {row['graph_ms_median']} ms, compiled "
                            f"{row['compiled_ms_median']} ms, first call {row['first_call_setup_s']} s"))  # fmt: skip
            torch.cuda.empty_cache()
        print(n, rows[n], flush=True)


def parse(argv=None):
    p = common.base_parser(
        __doc__, ["kernels", "graph", "compiled", "eager", "hf_static", "end_to_end", "public", "profile", "host_reads"]
    )
    p.set_defaults(reps=5)
    p.add_argument("--prompts", type=int, nargs="+", default=[8192, 32768, 131072])
    p.add_argument("--hf-prompts", type=int, nargs="+", default=[32768])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument(
        "--shapes",
        choices=["fresh", "repeated"],
        default="fresh",
        help="eager: every run at new key lengths (prompt + new tokens + 1 per earlier run), or all at the same ones",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        help="eager: rows per generate; the later ones shorter and left-padded (masked decode steps)",
    )
    p.add_argument("--e2e-tokens", type=int, default=512)
    p.add_argument(
        "--e2e-modes",
        nargs="+",
        default=["stock", "graph", "compiled"],
        choices=["stock", "eager", "graph", "compiled", "frozen"],
    )
    p.add_argument(
        "--e2e-configs", nargs="+", default=None, choices=CONFIG_NAMES, help="end_to_end: configurations (default: all)"
    )
    p.add_argument("--e2e-requests", type=int, default=16, help="end_to_end: requests served batched (0: none)")
    p.add_argument("--e2e-batch-prompt", type=int, default=32768, help="end_to_end: prompt tokens of each request")
    p.add_argument("--check-up-to", type=int, default=32768, help="longest prompt whose graph tokens are compared")
    return p.parse_args(argv)


def main(argv=None):
    global ARGS
    ARGS = parse(argv)
    common.start(ARGS, "gpu_decode")
    torch._dynamo.config.recompile_limit = 64  # one compilation per (config, bucket): more than dynamo's default 8
    if "kernels" in ARGS.sections:
        with common.section("kernels") as out:
            run_kernels(out)
    runs = {
        "graph": run_graph,
        "compiled": run_compiled,
        "eager": run_eager,
        "hf_static": run_hf_static,
        "end_to_end": run_end_to_end,
        "public": lambda out, model: run_public(out, model, ARGS, SUMMARY, prompt),
        "profile": run_profile,
        "host_reads": run_host_reads,
    }
    wanted = [s for s in ARGS.sections if s in runs]
    if wanted:
        model = llama8b(ARGS.layers)
        for name in wanted:
            with common.section(name) as out:
                runs[name](out, model)
    return common.finish()


if __name__ == "__main__":
    sys.exit(main())
