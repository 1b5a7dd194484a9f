"""Several GPUs of one machine: one model spread over them, and a sweep with one process per GPU (issue 17).

    python benchmarks/multi_gpu.py                  # everything, about 10 minutes on 2 H200s (check + sweep ~6, spread ~4)
    python benchmarks/multi_gpu.py --shape 8b       # a smaller spread model (faster; for a first look)
    python benchmarks/multi_gpu.py --sections check sweep    # skip the big model

Sections (each guarded: a failure prints its traceback and the next section runs):
  check   a small random Llama saved with a tokenizer, loaded by swaa_core.load_model on cuda:0 and with
          device="auto" (spread over the GPUs; split by hand when accelerate keeps so small a model on one GPU):
          outputs, answer log-likelihoods, KV bytes and prefill logits of both must be equal, for full attention and
          the SWAA recipes.
  spread  a Llama-3.1-70B-shaped model (random bf16 weights, built straight onto the GPUs, placed by accelerate's
          balanced device map as device_map="auto" does): full attention vs SWAA (W 2048, 128 sinks; and 1/2 FA
          layers + FA decode) at 32K and 128K prompts: TTFT, decode tokens/s, peak memory per GPU, KV bytes per GPU.
          Runs last; cases start only until --spread-deadline (the 128K ones come last).
  sweep   a Qwen3-4B-shaped random model (tokenizer vocabulary 400) saved to disk; `swaa sweep` of the paper's
          recipes on one process (twice: does it repeat itself?), then under torchrun with one process per GPU: wall
          times, and whether the merged JSONL holds exactly the one-process rows (timings and device names aside).

Results: tables on stdout; JSON and Markdown in $OUT (or --out) when set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from swaa_core.runtime.jsonl import read_jsonl  # noqa: E402 - after the path set-up above

START = time.monotonic()
RESULTS: dict = {"sections": {}}
MARKDOWN: list[str] = []
SHAPES = {  # Llama-3.1 shapes: layers, hidden, intermediate, query heads, KV heads
    "70b": (80, 8192, 28672, 64, 8),
    "8b": (32, 4096, 14336, 32, 8),
}


def measured(column: str) -> bool:
    """Columns a run measures rather than computes (times, memory): they differ between any two runs."""
    return column.endswith("_s") or "memory" in column or column in ("finished_at", "device")


def elapsed() -> float:
    return time.monotonic() - START


def say(*parts) -> None:
    print(f"[{elapsed():6.0f} s]", *parts, flush=True)


def table(title: str, header: list[str], rows: list[list]) -> None:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    MARKDOWN.extend([*lines, ""])
    print("\n" + "\n".join(lines) + "\n", flush=True)


def gib(n) -> str:
    return "–" if n is None else f"{n / 2**30:.2f}"


def sync_all() -> None:
    for i in range(torch.cuda.device_count()):
        torch.cuda.synchronize(i)


def configs(layers: int, window: int, sinks: int) -> dict:
    from swaa_core import SWAAConfig

    return {
        "full attention": None,
        f"SWA {window} + {sinks} sinks": SWAAConfig(sliding_window_size=window, keep_first=sinks),
        f"SWA {window} + {sinks} sinks, 1/2 FA layers + FA decode": SWAAConfig(
            sliding_window_size=window, keep_first=sinks, force_fa_decode=True,
            non_sliding_layers=SWAAConfig.fa_layers("1/2", layers),
        ),
    }  # fmt: skip


def save_small_model(folder: Path, *, layers: int, hidden: int, inter: int, heads: int, kv_heads: int,
                     family: str = "llama") -> Path:  # fmt: skip
    """A random model with the tests' tiny BPE tokenizer (vocabulary 400), saved as a model folder."""
    import transformers as tf
    from helpers.tiny_models import build_tiny_tokenizer  # the tests' tokenizer builder: no download needed

    tok = build_tiny_tokenizer()
    kind = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM)}[family]
    cfg = kind[0](vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=128 if hidden >= 2048 else 64,
                  max_position_embeddings=131072, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cuda:0"):
        model = kind[1](cfg).to(torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


# --------------------------------------------------------------------------- check: spread == single GPU
def section_check(args, tmp: Path) -> None:
    from swaa_core import swaa
    from swaa_core.eval.runner import run_one
    from swaa_core.eval.tasks import make_task
    from swaa_core.models.loading import load_model
    from swaa_core.models.memory import layer_devices, spans_devices

    folder = save_small_model(tmp / "small-llama", layers=8, hidden=1024, inter=2816, heads=16, kv_heads=4)
    single = load_model(folder, device="cuda:0", dtype="bfloat16", reuse=False)
    spread = load_model(folder, device="auto", dtype="bfloat16", reuse=False)
    how = "load_model(device='auto')"
    if not spans_devices(spread.model):
        from accelerate import dispatch_model

        say("accelerate kept the small model on one GPU; splitting its layers by hand over the GPUs")
        n_gpu, n_layers = torch.cuda.device_count(), 8
        dmap = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": n_gpu - 1, "lm_head": n_gpu - 1}
        dmap.update({f"model.layers.{i}": i * n_gpu // n_layers for i in range(n_layers)})
        spread = load_model(folder, device="cpu", dtype="bfloat16", reuse=False)
        spread.model = dispatch_model(spread.model, device_map=dmap)
        how = "dispatch_model with an explicit layer split"
    devices = layer_devices(spread.model)
    say(f"spread model ({how}): layers on {devices}")
    # passkey: its filler needs no word list (the GPU machines lack wonderwords, which the needle keys come from)
    sample = make_task("passkey", single.tokenizer, length_tokens=args.check_length, depth=0.3, seed=1)
    rows, ok = [], True
    for label, cfg in configs(8, 256, 16).items():
        a = run_one(single, sample, cfg, label=label, max_new_tokens=16, backend=args.backend)
        b = run_one(spread, sample, cfg, label=label, max_new_tokens=16, backend=args.backend)
        ids = torch.tensor([list(range(3, 403)) * (args.check_length // 400)], device="cuda:0") % 400
        with torch.no_grad():
            with swaa(single.model, cfg, backend=args.backend):
                la = single.model(ids).logits.float().cpu()
            with swaa(spread.model, cfg, backend=args.backend):
                lb = spread.model(ids).logits.float().cpu()
        diff = (la - lb).abs().max().item()
        same = a.error is None and b.error is None and a.output_text == b.output_text
        same = same and a.kv_cache_bytes == b.kv_cache_bytes and a.answer_logprob == b.answer_logprob
        ok = ok and same and diff == 0.0
        rows.append([label, repr(a.output_text[:30]), "yes" if a.output_text == b.output_text else "NO",
                     f"{a.answer_logprob} / {b.answer_logprob}", f"{a.kv_cache_bytes} / {b.kv_cache_bytes}",
                     f"{diff:.3g}", a.error or b.error or ""])  # fmt: skip
    table(f"Spread vs single GPU (8-layer random Llama, {args.check_length}-token needle prompt; {how})",
          ["config", "output (single GPU)", "same output", "answer log-lik. single / spread",
           "KV bytes single / spread", "max |logit diff|", "error"], rows)  # fmt: skip
    RESULTS["sections"]["check"] = {"identical": ok, "layer_devices": devices, "how": how, "rows": rows}
    say("check:", "IDENTICAL" if ok else "DIFFERENCES (see the table)")


# --------------------------------------------------------------------------- spread: a big model over the GPUs
def build_spread_model(shape: str):
    """Random bf16 weights written straight onto the GPU each module is placed on (no CPU copy, no disk)."""
    import transformers as tf
    from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
    from accelerate.utils import get_balanced_memory, set_module_tensor_to_device

    layers, hidden, inter, heads, kv_heads = SHAPES[shape]
    cfg = tf.LlamaConfig(vocab_size=128256, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=128,
                         max_position_embeddings=131072, attn_implementation="sdpa",
                         bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=False)  # fmt: skip
    with init_empty_weights(include_buffers=False):  # parameters on "meta"; the rotary buffers stay real
        model = tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    no_split = model._no_split_modules
    # What from_pretrained(device_map="auto") does: a balanced map over the visible GPUs.
    max_memory = get_balanced_memory(model, dtype=torch.bfloat16, no_split_module_classes=no_split)
    dmap = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=torch.bfloat16)
    torch.manual_seed(0)
    for name, param in list(model.named_parameters()):
        owner = max((k for k in dmap if k == "" or name == k or name.startswith(k + ".")), key=len)
        device = torch.device("cuda", dmap[owner]) if isinstance(dmap[owner], int) else torch.device(dmap[owner])
        value = torch.empty(param.shape, dtype=torch.bfloat16, device=device)
        if name.endswith("norm.weight"):
            value.fill_(1.0)
        else:
            value.normal_(0.0, 0.02)
        set_module_tensor_to_device(model, name, device, value=value, dtype=torch.bfloat16)
    model = dispatch_model(model, device_map=dmap)
    model.eval()
    return model, dmap


@torch.no_grad()
def measure(model, ids: torch.Tensor, cfg, new_tokens: int, backend: str) -> dict:
    from swaa_core import swaa
    from swaa_core.engine.cache import kv_cache_bytes
    from swaa_core.models.memory import layer_devices

    n_gpu = torch.cuda.device_count()
    torch.cuda.empty_cache()
    for i in range(n_gpu):
        torch.cuda.reset_peak_memory_stats(i)
    with swaa(model, cfg, backend=backend):
        sync_all()
        t0 = time.perf_counter()
        out = model(ids, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1:].argmax(-1)
        sync_all()
        ttft = time.perf_counter() - t0
        cache = out.past_key_values
        t1 = time.perf_counter()
        marker = torch.tensor([ids.shape[1]])  # the prompt ends here: FA decode applies to what follows
        for _ in range(new_tokens):
            out = model(token.to(ids.device), past_key_values=cache, use_cache=True, swaa_prompt_lengths=marker)
            token = out.logits[:, -1:].argmax(-1)
        sync_all()
        decode = time.perf_counter() - t1
    per_layer = kv_cache_bytes(cache)
    kv_per_gpu: dict[str, int] = {}
    for device, b in zip(layer_devices(model), per_layer, strict=True):
        kv_per_gpu[device] = kv_per_gpu.get(device, 0) + b
    peaks = [torch.cuda.max_memory_allocated(i) for i in range(n_gpu)]
    del out, cache
    return {"ttft_s": ttft, "decode_tokens_per_s": new_tokens / decode, "kv_bytes": sum(per_layer),
            "kv_per_gpu": kv_per_gpu, "peak_per_gpu": peaks}  # fmt: skip


def section_spread(args, tmp: Path) -> None:
    total = sum(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
    shape = args.shape or ("70b" if total > 200 * 2**30 else "8b")
    say(f"building a random Llama-3.1-{shape.upper()}-shaped model over {torch.cuda.device_count()} GPUs ...")
    model, dmap = build_spread_model(shape)
    gpus = sorted({v for v in dmap.values()}, key=str)
    layers = model.config.num_hidden_layers
    say(
        f"built; layers per device: { {g: sum(1 for k, v in dmap.items() if v == g and '.layers.' in k) for g in gpus} }"
    )
    cases = configs(layers, args.window, args.sinks)
    warm = torch.randint(0, 128000, (1, 4096), device="cuda:0")
    for cfg in cases.values():  # compile kernels, build block masks on every GPU once
        measure(model, warm, cfg, 2, args.backend)
    say("warm-up done")
    rows, data = [], []
    for n in args.lengths:
        ids = torch.randint(0, 128000, (1, n), device="cuda:0", generator=torch.Generator("cuda:0").manual_seed(n))
        for label, cfg in cases.items():
            if elapsed() > args.spread_deadline:
                rows.append([f"{n // 1024}K", label, "skipped: time budget"] + [""] * 4)
                continue
            try:
                m = measure(model, ids, cfg, args.new_tokens, args.backend)
            except torch.OutOfMemoryError as e:
                rows.append([f"{n // 1024}K", label, f"OOM: {str(e)[:80]}"] + [""] * 4)
                torch.cuda.empty_cache()
                continue
            data.append({"tokens": n, "config": label, **m})
            say(n, label, {k: v for k, v in m.items() if k != "kv_per_gpu"})
            rows.append([f"{n // 1024}K", label, f"{m['ttft_s']:.2f}", f"{m['decode_tokens_per_s']:.1f}",
                         " / ".join(gib(p) for p in m["peak_per_gpu"]), gib(m["kv_bytes"]),
                         " / ".join(f"{d}: {gib(b)}" for d, b in m["kv_per_gpu"].items())])  # fmt: skip
    table(f"Llama-3.1-{shape.upper()}-shaped random model spread over {len(gpus)} GPUs (bf16, batch 1, "
          f"{args.new_tokens} decode tokens, backend {args.backend})",
          ["prompt", "config", "TTFT (s)", "decode tok/s", "peak GiB per GPU", "KV GiB", "KV GiB per GPU"], rows)  # fmt: skip
    RESULTS["sections"]["spread"] = {"shape": shape, "device_map_layers": len(dmap), "runs": data, "rows": rows}
    del model
    torch.cuda.empty_cache()


# --------------------------------------------------------------------------- sweep: one process per GPU
def section_sweep(args, tmp: Path) -> None:
    n_gpu = torch.cuda.device_count()
    folder = save_small_model(tmp / "qwen3-4b-shape", layers=36, hidden=2560, inter=9728, heads=32, kv_heads=8,
                              family="qwen3")  # fmt: skip
    say("saved the Qwen3-4B-shaped model")
    grid = ["sweep", "--model", str(folder), "--task", "passkey", "--lengths", *map(str, args.sweep_lengths),
            "--depths", "0.5", "--samples", str(args.sweep_samples), "--window", "2048", "--keep-first", "128",
            "-n", "16", "--quiet", "--backend", args.backend]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    walls, outs = {}, {}
    # the one-process sweep runs twice: whether it repeats itself is the baseline the merged rows are judged by
    for run, procs in (("one", 1), ("one again", 1), ("many", n_gpu)):
        out = tmp / f"sweep-{run.replace(' ', '-')}.jsonl"
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] if procs > 1 else []
        device = ["--device", "cuda:0"] if procs == 1 else []
        command = [sys.executable, *launcher, "-m", "swaa_core", *grid, *device, "--out", str(out)]
        say(" ".join(command[1:]))
        t0 = time.perf_counter()
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.sweep_timeout)
        walls[run] = time.perf_counter() - t0
        if result.returncode not in (0, 1):
            print(result.stderr[-4000:], flush=True)
            raise RuntimeError(f"sweep on {procs} process(es) exited with {result.returncode}")
        outs[run] = read_jsonl(out, strict=True)
        say(f"{run}: {procs} process(es), {walls[run]:.1f} s, {len(outs[run])} rows")
    repeats, repeat_diffs = compare_rows(outs["one"], outs["one again"])
    same, differences = compare_rows(outs["one"], outs["many"])
    for line in repeat_diffs[:6]:
        say("one-process runs differ:", line)
    for line in differences[:12]:
        say("merged rows differ:", line)
    devices = sorted({r.get("device") for r in outs["many"]})
    table(f"`swaa sweep` of the paper's recipes, Qwen3-4B-shaped random model (lengths {args.sweep_lengths}, "
          f"{args.sweep_samples} samples, W 2048, 128 sinks)",
          ["run", "processes", "rows", "wall (s, loads included)", "speedup", "devices used",
           "rows equal to the first run (measured columns aside)"],
          [["one", 1, len(outs["one"]), f"{walls['one']:.1f}", "1.00x", "cuda:0", "–"],
           ["one again", 1, len(outs["one again"]), f"{walls['one again']:.1f}", "–", "cuda:0",
            "yes" if repeats else f"NO ({len(repeat_diffs)} differences)"],
           ["many", n_gpu, len(outs["many"]), f"{walls['many']:.1f}", f"{walls['one'] / walls['many']:.2f}x",
            ", ".join(devices), "yes" if same else f"NO ({len(differences)} differences)"]])  # fmt: skip
    RESULTS["sections"]["sweep"] = {"walls": walls, "rows": len(outs["one"]), "identical": same,
                                    "one_process_repeats": repeats, "devices": devices,
                                    "differences": differences[:50], "repeat_differences": repeat_diffs[:50]}  # fmt: skip


def compare_rows(one: list[dict], many: list[dict]) -> tuple[bool, list[str]]:
    """Whether the merged rows equal the one-process rows (measured columns aside, matched by cell id), and a line
    per differing cell and column."""
    key = lambda r: (r.get("cell_id"), r.get("label"))  # noqa: E731
    a, b = {key(r): r for r in one}, {key(r): r for r in many}
    lines = [f"{k}: only in the one-process run" for k in a.keys() - b.keys()]
    lines += [f"{k}: only in the merged run" for k in b.keys() - a.keys()]
    for k in sorted(a.keys() & b.keys(), key=str):
        for col in sorted(set(a[k]) | set(b[k])):
            if not measured(col) and a[k].get(col) != b[k].get(col):
                lines.append(f"{k} {col}: {str(a[k].get(col))[:60]!r} vs {str(b[k].get(col))[:60]!r}")
    return not lines and len(one) == len(many), lines


def save(args, failed: list[str]) -> None:
    """Write multi_gpu.json and multi_gpu.md to --out (nothing without one)."""
    RESULTS["failed_sections"], RESULTS["seconds"] = failed, round(elapsed(), 1)
    if not args.out:
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "multi_gpu.json").write_text(json.dumps(RESULTS, indent=2, default=str))
    header = f"{RESULTS['date']}, {len(RESULTS['gpus'])} x {RESULTS['gpus'][0]}\n\n"
    (out / "multi_gpu.md").write_text(header + "\n".join(MARKDOWN))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", default=["check", "sweep", "spread"], choices=["check", "spread", "sweep"])
    p.add_argument("--shape", choices=sorted(SHAPES), help="spread model shape (default: 70b when the GPUs hold it)")
    p.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--sinks", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--backend", default="auto")
    p.add_argument("--check-length", type=int, default=4000)
    p.add_argument("--sweep-lengths", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--sweep-samples", type=int, default=2)
    p.add_argument("--sweep-timeout", type=int, default=240)
    p.add_argument("--spread-deadline", type=float, default=420,
                   help="seconds after the start: no spread case starts later (default 420, for an 8-minute run)")  # fmt: skip
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for multi_gpu.json / .md (default: $OUT)")
    args = p.parse_args(argv)

    if not torch.cuda.is_available():
        print("No CUDA device: this benchmark needs GPUs.", flush=True)
        return 2
    n_gpu = torch.cuda.device_count()
    RESULTS.update(date=time.strftime("%Y-%m-%d %H:%M"), gpus=[torch.cuda.get_device_name(i) for i in range(n_gpu)],
                   torch=torch.__version__, python=platform.python_version(), args=vars(args))  # fmt: skip
    try:
        import transformers

        RESULTS["transformers"] = transformers.__version__
    except Exception:  # noqa: BLE001 - reporting only
        pass
    say(f"{n_gpu} GPU(s): {', '.join(RESULTS['gpus'])}; torch {torch.__version__}")
    if n_gpu < 2:
        say("only one GPU: the spread model sits on it and the sweep runs one process; numbers are not multi-GPU")
    failed = []
    with tempfile.TemporaryDirectory(prefix="multi-gpu-") as tmp:
        for name in args.sections:
            say(f"== section {name}")
            try:
                {"check": section_check, "spread": section_spread, "sweep": section_sweep}[name](args, Path(tmp))
            except Exception:  # noqa: BLE001 - every section is reported, whatever breaks
                failed.append(name)
                traceback.print_exc()
                RESULTS["sections"][name] = {"error": traceback.format_exc()[-3000:]}
            torch.cuda.empty_cache()
            save(args, failed)  # after every section: a run stopped by its time limit keeps what it measured
    say(f"done; failed sections: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
