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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.attention import float64_attention, with_engine_hints  # noqa: E402, F401 - the tests' float64 oracle
from helpers.attention import make_case as _test_case  # noqa: E402

from swaa_core.engine import backends  # noqa: E402
from swaa_core.models.capacity import pairs_visited  # noqa: E402, F401 (the prefill benchmarks' pair count)

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
    return timed_call(fn)[0]


def timed_call(fn) -> tuple[float, object]:
    """Wall seconds of one call of ``fn``, synchronised before and after, and what it returned."""
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - start, result


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not bool(torch.isfinite(out).all()):
        return float("nan")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


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
def make_case(*, dtype, B=1, H=32, Hkv=8, D=128, pads=(), **case):
    """The tests' random case (``helpers.attention.make_case``: q, k, v and their MaskGeometry) at benchmark head
    sizes on this machine's device; an unpadded case carries the host-known facts the engine sets for it (they route
    it to the fast paths)."""
    q, k, v, g = _test_case(dtype=dtype, B=B, H=H, Hkv=Hkv, D=D, pads=pads, device=DEVICE, **case)
    return q, k, v, (g if pads else with_engine_hints(g))


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


def tiny_llama(layers: int = 4):
    """A tiny random Llama on the CPU, fp32: what the scripts' --smoke runs (a check that they run, not a measurement)."""
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=224, num_hidden_layers=layers, head_dim=16,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")  # fmt: skip
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(cfg).eval()


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


class Stamps:
    """A streamer that records when each token arrives (generate reads a device flag every step, so the host
    time of a put is the step's end). times[0] is the prompt, times[1] token 1 (the prefill's)."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass

    def gaps_ms(self) -> list[float]:
        """Milliseconds between consecutive generated tokens."""
        return [1e3 * (b - a) for a, b in zip(self.times[1:], self.times[2:], strict=False)]

    def per_token(self) -> float:
        """Seconds per decode step: the median gap between consecutive tokens, so that a hiccup of the host
        (a page fault, another process) moves it less than a mean would."""
        return statistics.median(self.gaps_ms()) / 1e3
