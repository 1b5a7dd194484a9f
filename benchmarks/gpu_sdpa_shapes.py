"""What a new shape costs at each of SWAA's SDPA call sites, with SDPA's default kernel choice and with cuDNN left out.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_sdpa_shapes.py                # about 2 minutes on an H200
    python benchmarks/gpu_sdpa_shapes.py --small --calls 2                 # a quick check that it runs (CPU too)

On Hopper and Blackwell GPUs, SDPA tries cuDNN first, and cuDNN builds an execution graph for every new shape:
41-55 ms of host time per new key length for one decode step on an H200 (torch 2.11, docs/benchmarks.md). A call site
that meets a new shape at every call pays that every time. For every site and both policies ("default": SDPA's own
choice; "no cuDNN": ``CudnnSdpaOff`` held), this times --calls calls, each at a shape no earlier call had
(synchronised wall time, so a graph build shows), and one shape repeated (GPU time, warm). The policies use disjoint
lengths, so neither meets a graph the other built.

Sites (8B attention shape: 32 query / 8 KV heads, head dim 128, bf16; W=2048, 128 sinks):
- decode: one query against L keys, transformers' SDPA call (GQA) and SWAA's decode step (over keys its growing cache
  made; masked, the padded-batch step, which reads keys to a multiple of 256 slots where SDPA runs it on cuDNN),
  unmasked and masked (a left-padded batch of 2);
- blocked: SWAA's O(n W) path for 4 and 8 queries against L keys (assisted decoding's verification, short chunks);
- prefill: a full layer's causal SDPA (``causal_sdpa``) at the --prefill lengths;
- training: the same, forward and backward.
Results go to $OUT/gpu_sdpa_shapes.json (or --json); the plumbing is gpu_common's.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_common as common  # noqa: E402
from gpu_common import DEVICE, SUMMARY  # noqa: E402

from swaa_core.engine import backends  # noqa: E402
from swaa_core.engine.attention import LayerPlan, _padded_decode_step  # noqa: E402
from swaa_core.engine.cache import SWAACacheLayer  # noqa: E402
from swaa_core.engine.kernels.sdpa import causal_sdpa, decode_sdpa, without_cudnn_sdpa  # noqa: E402

ARGS = None
POLICIES = {"default": contextlib.nullcontext, "no cuDNN": without_cudnn_sdpa}


def shapes() -> dict:
    if ARGS.small:
        return dict(H=4, Hkv=2, D=16, L=300, prefill=[128, 256], window=32, sinks=4, dtype=torch.float32)
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    return dict(
        H=32, Hkv=8, D=128, L=ARGS.keys, prefill=ARGS.prefill, window=ARGS.window, sinks=ARGS.sinks, dtype=dtype
    )


def sites(s: dict) -> dict:
    """name -> make(length) -> a call at that key length (inputs built before the timing starts)."""
    H, Hkv, D, dt = s["H"], s["Hkv"], s["D"], s["dtype"]
    scale = D**-0.5

    def rand(*shape, grad=False):
        return torch.randn(*shape, device=DEVICE, dtype=dt).requires_grad_(grad)

    def decode(masked: bool, swaa_step: bool):
        def make(n):
            B = 2 if masked else 1
            q, k, v = rand(B, H, 1, D), rand(B, Hkv, n, D), rand(B, Hkv, n, D)
            padding = torch.ones(B, n, dtype=torch.long, device=DEVICE)
            padding[1:, : n // 3] = 0  # row 1 is left-padded
            if not swaa_step:
                mask = padding.bool()[:, None, None, :] if masked else None
                return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
            layer = SWAACacheLayer(0)
            with torch.no_grad():  # keys as SWAA's growing cache hands them out: views into a buffer with room
                k, v = layer.update(k, v)
            if not masked:
                return lambda: decode_sdpa(q, k, v, None, scale)
            # a full layer (only padding is masked), without a forward's context: each call builds its mask, as the
            # first layer of a decode step does
            plan = LayerPlan(0, None, False, "flex")
            return lambda: _padded_decode_step(plan, None, layer, q, k, v, padding, layer.view, True, scale)

        return make

    def blocked(queries: int):
        def make(n):
            case = dict(n=n, window=s["window"], keep_first=s["sinks"], q_len=queries)
            q, k, v, g = common.make_case(H=H, Hkv=Hkv, D=D, dtype=dt, **case)
            return lambda: backends.blocked(q, k, v, g, scale)

        return make

    def causal(train: bool):
        def make(n):
            q, k, v, g = common.make_case(n=n, window=None, H=H, Hkv=Hkv, D=D, dtype=dt)
            if not train:
                return lambda: causal_sdpa(q, k, v, g, scale, 0.0)
            q, k, v = (t.requires_grad_(True) for t in (q, k, v))
            return lambda: causal_sdpa(q, k, v, g, scale, 0.0).float().sum().backward()

        return make

    return {
        "decode, transformers' SDPA call": (decode(False, False), "keys"),
        "decode, SWAA's step": (decode(False, True), "keys"),
        "decode masked, SDPA (GQA + mask)": (decode(True, False), "keys"),
        "decode masked, SWAA's step": (decode(True, True), "keys"),
        "blocked, 4 queries": (blocked(4), "keys"),
        "blocked, 8 queries": (blocked(8), "keys"),
        "prefill, causal SDPA": (causal(False), "prefill"),
        "training, causal SDPA fwd+bwd": (causal(True), "prefill"),
    }


def wall_ms(fn) -> float:
    return 1e3 * common.first_call_seconds(fn)  # synchronised: a graph built on the host shows


def repeated_ms(fn) -> float:
    """GPU time of a call at a shape already met (CUDA events); wall time on a CPU, for --small."""
    fn()
    return common.kernel_ms(fn) if DEVICE == "cuda" else statistics.median(wall_ms(fn) for _ in range(5))


def run(out: dict):
    s = shapes()
    rows = out["rows"] = []
    for name, (make, axis) in sites(s).items():
        lengths = [s["L"]] if axis == "keys" else s["prefill"]
        make(lengths[0] - 8)()  # library start-up (handles, workspaces) at a length no timed call uses
        for base in lengths:
            for p, (policy, context) in enumerate(POLICIES.items()):
                # disjoint lengths per policy and call: every call below meets a shape nothing before it met
                fresh = [base + 8 * (1 + p * (ARGS.calls + 1) + i) for i in range(ARGS.calls)]
                with context():
                    try:
                        calls = [make(n) for n in fresh]
                        new_ms = [wall_ms(c) for c in calls]
                        warm_ms = repeated_ms(make(base))
                        row = dict(site=name, length=base, policy=policy, new_shape_ms=[round(x, 3) for x in new_ms])
                        row.update(
                            new_shape_ms_median=round(statistics.median(new_ms), 3), repeated_ms=round(warm_ms, 4)
                        )
                    except Exception as e:  # a kernel that cannot run this case is reported, the others still run
                        row = dict(site=name, length=base, policy=policy, error=f"{type(e).__name__}: {str(e)[:200]}")
                rows.append(row)
                print(row, flush=True)
                SUMMARY.append(
                    (
                        f"{name} at {base}, {policy}",
                        row.get("error")
                        or f"new shape {row['new_shape_ms_median']} ms per call; repeated shape {row['repeated_ms']} ms",
                    )
                )
                if DEVICE == "cuda":
                    torch.cuda.empty_cache()


def parse(argv=None):
    p = common.base_parser(__doc__, ["shapes"])
    p.add_argument("--keys", type=int, default=32768, help="key length of the decode and blocked sites")
    p.add_argument("--prefill", type=int, nargs="+", default=[8192, 32768])
    p.add_argument("--calls", type=int, default=5, help="calls at new shapes per site and policy")
    p.add_argument("--small", action="store_true", help="tiny shapes: a check that the script runs, on any device")
    return p.parse_args(argv)


def main(argv=None):
    global ARGS
    ARGS = parse(argv)
    common.start(ARGS, "gpu_sdpa_shapes")
    with common.section("shapes") as out:
        run(out)
    return common.finish()


if __name__ == "__main__":
    sys.exit(main())
