"""Training options under more conditions (from a review, 2026-12-06): warm-up as a share of the steps each process
of a distributed run takes, a regex-targeted adapter continued, a finetune rerun after a run that stopped before
training, and --length named as the option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers.tiny_models import build_tiny_model

from swaa_core import SWAAConfig
from swaa_core.train.lora import TrainSettings, make_example, train_lora

ROOT = Path(__file__).resolve().parents[3]
CFG = SWAAConfig(sliding_window_size=5, keep_first=2, force_fa_decode=True)


def examples(n=4):
    g = torch.Generator().manual_seed(0)
    return [make_example(torch.randint(3, 97, (20,), generator=g).tolist(), [5, 6, 7]) for _ in range(n)]


PROBE = r"""
import json, sys
import torch, transformers
from helpers.tiny_models import build_tiny_model
from swaa_core import SWAAConfig
from swaa_core.runtime.distributed import current
import swaa_core.train.lora as L

seen = {"lrs": []}
orig = L._trainer_callback


def recording(*a, **k):  # the module's own callback, also noting the scheduler's lr at every step
    cb = orig(*a, **k)

    def on_step_begin(args, state, control, lr_scheduler=None, **kw):
        seen["lrs"].append(lr_scheduler.get_last_lr()[0])
        seen["max_steps"] = state.max_steps

    cb.on_step_begin = on_step_begin
    return cb


L._trainer_callback = recording
launch = current("cpu")
g = torch.Generator().manual_seed(0)
ex = [L.make_example(torch.randint(3, 97, (20,), generator=g).tolist(), [5, 6, 7]) for _ in range(40)]
s = L.TrainSettings(warmup_ratio=0.25, learning_rate=1e-3, gradient_checkpointing=False)
L.train_lora(build_tiny_model("llama"), ex, SWAAConfig(sliding_window_size=5, keep_first=2, force_fa_decode=True), s,
             progress=False)
if launch.is_main:
    lrs = seen["lrs"]
    print("RESULT", json.dumps({"max_steps": seen["max_steps"], "peak_step": lrs.index(max(lrs))}))
"""


def test_ddp_epoch_run_warms_up_warmup_ratio_of_its_steps(tmp_path):
    """Under torchrun each process's dataloader holds 1/world of the data, so Trainer runs ceil(N/world) steps;
    warmup_steps() counts N (every example on every process). 2 processes, 40 examples, warmup_ratio 0.25: the run
    has 20 steps and must peak at step 5 (before the commit: ceil(0.25*20) = 5); it peaks at 10 (half the run).
    With 8 processes and the default 0.05, 40% of every epoch-based run is warm-up; with >= 20 it never peaks."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.split("RESULT", 1)[1])
    assert result["max_steps"] == 20
    assert result["peak_step"] == int(0.25 * result["max_steps"]), result


def test_continuing_a_regex_targeted_adapter_records_its_targets():
    """peft's target_modules may be a regex string; continued_settings does sorted(cfg.target_modules) and records
    the string's characters: ['(', ')', '*', '.', ...] lands in the run's settings (swaa_config.json "training")."""
    from peft import LoraConfig, get_peft_model

    regex = r".*\.(q_proj|v_proj)"
    pm = get_peft_model(build_tiny_model("llama"), LoraConfig(r=4, lora_alpha=8, target_modules=regex,
                                                               task_type="CAUSAL_LM"))  # fmt: skip
    result = train_lora(pm, examples(), CFG, TrainSettings(max_steps=1), progress=False)
    recorded = result.summary()["settings"]["target_modules"]
    assert recorded in (regex, [regex]), recorded


def test_finetune_rerun_with_keep_all_as_the_message_says(cli, tmp_path, capsys):
    """A distilling run that finds no right answer writes OUT/distill.jsonl, then stops with "Use --keep all to
    train on them anyway". Doing that (same command plus --keep all) is now refused: "--out ... already holds an
    earlier run's distill.jsonl" -- the advice cannot be followed, and the distilled data cannot be reused either
    (--data OUT/distill.jsonl --out OUT is refused the same way). Same after a crash or Ctrl-C during training."""
    out = tmp_path / "o"
    args = ["finetune", "--samples", "2", "--length", "80", "--max-new-tokens", "3", "--recipe", "swa-fa-decode",
            "--window", "4", "--steps", "1", "--out", str(out), "-q"]  # fmt: skip
    assert cli(args) == 1
    err = capsys.readouterr().err
    assert "--keep all" in err and (out / "distill.jsonl").is_file()
    rc = cli([*args, "--keep", "all"])
    err = capsys.readouterr().err
    assert rc == 0, err


def test_finetune_length_too_small_names_the_option(cli, tmp_path, capsys):
    """OPTION_WORDS gained length_tokens -> --length, but the TaskError from make_samples is not a DistillDataError,
    so finetune's except never rewrites it: `swaa finetune --length 10` still says length_tokens."""
    rc = cli(["finetune", "--length", "10", "--samples", "1", "--recipe", "swa-fa-decode", "--window", "4",
              "--out", str(tmp_path / "o"), "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "--length" in err and "length_tokens" not in err, err
