"""Issue 32's protocol, a fresh model per configuration: does fine-tuning under SWAA through ``train_lora`` peak
above full attention, or leave a model alive after it is dropped?

    PYTHONUNBUFFERED=1 python benchmarks/gpu_train_fresh.py [PROMPT_TOKENS]    # default 16384; ~70 s on an H100

Qwen3-4B-shaped model (random weights, bf16, 36 layers), one example of PROMPT_TOKENS + 64 answer tokens
(``make_example``). Per configuration, in the order full, SWA 2048 + 128 sinks + FA decode, SWA 2048 + 128 sinks,
full again: a new model, ``train_lora`` for 2 warm-up steps, then 4 steps continuing the PeftModel (default
TrainSettings); peak = ``torch.cuda.max_memory_allocated`` over those 4 steps. Then every reference is dropped: the
GPU memory still allocated and whether the model or the PeftModel is still alive (with what refers to it) are
printed. A "full again" peak above the first "full" would mean an earlier configuration left memory behind.
"""

from __future__ import annotations

import gc
import json
import sys
import weakref
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_common import qwen3_4b  # noqa: E402

from swaa_core import SWAAConfig  # noqa: E402
from swaa_core.train.lora import TrainSettings, make_example, train_lora  # noqa: E402

GIB = 2**30
CONFIGS = [
    ("full", None),
    ("SWA 2048 + 128 sinks + FA decode", SWAAConfig(sliding_window_size=2048, keep_first=128, force_fa_decode=True)),
    ("SWA 2048 + 128 sinks", SWAAConfig(sliding_window_size=2048, keep_first=128)),
    ("full again", None),
]


def main(n: int) -> None:
    ids = torch.randint(0, 151936, (n + 64,), generator=torch.Generator().manual_seed(0)).tolist()
    example = make_example(ids[:n], ids[n:])
    for label, cfg in CONFIGS:
        before = torch.cuda.memory_allocated()
        model = qwen3_4b()
        model_ref = weakref.ref(model)
        result = train_lora(model, [example], cfg, TrainSettings(max_steps=2), progress=False)
        torch.cuda.reset_peak_memory_stats()
        result = train_lora(result.model, [example], cfg, TrainSettings(max_steps=4), progress=False)
        peak = torch.cuda.max_memory_allocated()
        peft_ref = weakref.ref(result.model)
        del model, result
        gc.collect()
        torch.cuda.empty_cache()
        row = dict(config=label, prompt_tokens=n, allocated_before_gib=round(before / GIB, 3),
                   peak_gib=round(peak / GIB, 3), left_after_gib=round(torch.cuda.memory_allocated() / GIB, 3),
                   model_alive=model_ref() is not None, peft_alive=peft_ref() is not None)  # fmt: skip
        print(json.dumps(row), flush=True)
        for holder in gc.get_referrers(model_ref()) if model_ref() is not None else []:
            print("   held by:", type(holder).__name__, str(holder)[:200], flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 16384)
