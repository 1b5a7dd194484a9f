"""What the GPU benchmark scripts share: timing, guarded sections with a JSON record and a summary table, versions,
the float64 attention oracle with its random cases, and the random-weight model shapes (Llama-3.1-8B, Qwen3-4B).

The scripts (gpu_bench, gpu_prefill, gpu_train, gpu_decode) import this module; the tests keep their own helpers
and import nothing from benchmarks/, so a benchmark change cannot silently change what a test checks.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swaa_core.engine import backends  # noqa: E402
from swaa_core.engine.masks import NO_FULL, MaskGeometry  # noqa: E402

BF16_TOL = 1e-2  # METHOD.md: bf16 operands land between 1e-3 and 1e-2 relative error
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RESULTS: dict = {"sections": {}, "failures": []}
SUMMARY: list[tuple[str, str]] = []
JSON_PATH: Path | None = None  # set by start()


# --------------------------------------------------------------------------- timing
def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, reps: int = 3, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall seconds of ``reps`` synchronised calls after ``warmup`` calls (for long, whole-model runs)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def kernel_ms(fn) -> float:
    """Median milliseconds of a GPU call, timed with CUDA events by triton.testing.do_bench (warm-up excluded).

    The time budget scales with the call, so a 270 ms kernel still gets about ten timed repeats."""
    from triton.testing import do_bench

    estimate_ms = 1000 * first_call_seconds(fn)
    return float(
        do_bench(fn, warmup=max(25.0, 2 * estimate_ms), rep=max(300.0, 10 * estimate_ms), return_mode="median")
    )


def first_call_seconds(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not bool(torch.isfinite(out).all()):
        return float("nan")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def pairs_visited(n: int, window: int, sinks: int) -> int:
    """(query, key) pairs SWAA computes for an n-token prefill: window keys plus the sinks outside it."""
    i = torch.arange(n, dtype=torch.float64)
    in_window = torch.clamp(i + 1, max=window)
    extra_sinks = torch.clamp(torch.clamp(i + 1 - window, min=0), max=sinks)
    return int((in_window + extra_sinks).sum())


def gib(x: float) -> float:
    return round(x / 2**30, 3)


# --------------------------------------------------------------------------- sections, JSON, summary
def base_parser(doc: str, sections: list[str]) -> argparse.ArgumentParser:
    """The options every GPU script takes; ``sections`` are its choices and its default (all of them)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", default=sections, choices=sections)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--sinks", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", default=None)
    p.add_argument("--watchdog", type=float, default=0, help="print all stacks every N seconds (0: off)")
    return p


def start(args, name: str):
    """Start the watchdog, choose where the JSON goes (--json, else $OUT/<name>.json) and record args and versions."""
    global JSON_PATH
    if args.watchdog:
        faulthandler.dump_traceback_later(args.watchdog, repeat=True)
    out_dir = os.environ.get("OUT")
    JSON_PATH = Path(args.json) if args.json else (Path(out_dir) / f"{name}.json" if out_dir else None)
    RESULTS["args"] = {k: str(v) for k, v in vars(args).items()}
    RESULTS["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    RESULTS["versions"] = versions()


@contextlib.contextmanager
def section(name: str):
    start = time.perf_counter()
    print(f"\n=== {name} ===", flush=True)
    RESULTS["sections"][name] = out = {}
    try:
        yield out
    except Exception as e:  # every section runs even if one breaks; the failure is kept with its traceback
        tb = traceback.format_exc()
        print(tb, flush=True)
        out["error"] = f"{type(e).__name__}: {e}"
        RESULTS["failures"].append({"section": name, "error": out["error"], "traceback": tb})
        SUMMARY.append((name, f"FAILED: {out['error'][:200]}"))
    finally:
        out["seconds"] = round(time.perf_counter() - start, 1)
        write_json()


def write_json():
    if JSON_PATH:
        JSON_PATH.write_text(json.dumps(RESULTS, indent=1, default=str))


def finish() -> int:
    """Print the summary table; the exit status is 1 when a section failed."""
    print("\n| check | result |\n|---|---|")
    for name, text in SUMMARY:
        print(f"| {name} | {text} |")
    print(f"\nfailures: {len(RESULTS['failures'])}")
    return 1 if RESULTS["failures"] else 0


def versions() -> dict:
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    with contextlib.suppress(ImportError):
        import triton

        out["triton"] = triton.__version__
    out["kernels"] = backends.backend_status(DEVICE) if DEVICE == "cuda" else {}
    return out


# --------------------------------------------------------------------------- float64 oracle and random cases
def rule_mask(q_pos, kv_pos, kv_valid, q_full, window, keep_first):
    """docs/paper.md's rule, written here independently of swaa_core.engine.masks: (B, Q, KV) bool."""
    i, j = q_pos[:, :, None], kv_pos[:, None, :]
    seen = kv_valid[:, None, :] & (j <= i)
    if window is None:
        return seen
    return seen & ((i - j < window) | (j < keep_first) | q_full[:, :, None])


def float64_attention(q, k, v, mask, scale):
    """softmax(q k^T) v in float64 with GQA by repetition; rows that see no key give zeros. Returns (B, Q, H, D)."""
    groups = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(groups, 1)
    vv = v.double().repeat_interleave(groups, 1)
    scores = (q.double() @ kk.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    return (probs @ vv).transpose(1, 2)


def make_case(*, n, window, dtype, keep_first=0, B=1, H=32, Hkv=8, D=128, pads=(), q_len=None, full_tail=0, seed=0):
    """Random q (B, H, q_len, D), k and v (B, Hkv, n, D) in ``dtype`` and their MaskGeometry: ``pads`` left-pads
    each row, ``full_tail`` marks the last queries full (FA decode)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=device).manual_seed(seed)
    q_len = n if q_len is None else q_len

    def rand(*shape):
        return torch.randn(*shape, device=device, generator=gen, dtype=torch.float32).to(dtype)

    q, k, v = rand(B, H, q_len, D), rand(B, Hkv, n, D), rand(B, Hkv, n, D)
    valid = torch.ones(B, n, dtype=torch.bool, device=device)
    for b, pad in enumerate(pads):
        valid[b, :pad] = False
    real = valid.long().cumsum(-1) - 1
    q_full = torch.zeros(B, q_len, dtype=torch.bool, device=device)
    if full_tail:
        q_full[:, -full_tail:] = True
    g = MaskGeometry(real[:, n - q_len :], real, valid, q_full, window, keep_first)
    if not pads:  # the host-known facts the engine sets for an unpadded call (they route to the fast paths)
        g.keys_all_valid, g.offsets = True, (n - q_len, 0)
        g.full_from = n - full_tail if full_tail else NO_FULL
    return q, k, v, g


# --------------------------------------------------------------------------- random-weight model shapes
def llama8b(layers: int):
    import transformers as tf

    cfg = tf.LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        attn_implementation="sdpa",
        bos_token_id=128000,
        eos_token_id=128001,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        return tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()


def qwen3_4b(layers: int = 36):
    import transformers as tf

    cfg = tf.Qwen3Config(
        vocab_size=151936,
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        attn_implementation="sdpa",
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        return tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
