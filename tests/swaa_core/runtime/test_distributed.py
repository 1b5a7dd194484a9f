"""Several processes under torchrun (gloo on CPU): a sweep or an evaluation shared out between 2 processes gives
exactly the rows of one process, a killed multi-process sweep resumes without losing or repeating runs, and a
2-process DDP fine-tune saves one adapter that loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.tiny_models import build_tiny_model

from swaa_core.eval.sweep import merge_parts, part_path
from swaa_core.runtime.distributed import Launch
from swaa_core.runtime.jsonl import read_jsonl

ROOT = Path(__file__).resolve().parents[3]


def measured(column: str) -> bool:
    """Columns a run measures rather than computes (times, memory): they differ between any two runs."""
    return column.endswith("_s") or "memory" in column or column == "finished_at"


def env() -> dict:
    # This checkout first (not an installed copy); one thread per process so 1- and 2-process runs do the same
    # float operations in the same order.
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def swaa_command(processes: int, *argv: str) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "swaa_core", *argv]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "swaa_core", *argv]  # fmt: skip


def swaa(processes: int, *argv: str) -> subprocess.CompletedProcess:
    result = subprocess.run(swaa_command(processes, *argv), env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def computed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not measured(k)} for row in rows]


def sweep_args(model: str, out: Path, lengths=("200", "300"), samples: str = "2") -> list[str]:
    return ["sweep", "--model", model, "--device", "cpu", "--task", "passkey", "--lengths", *lengths, "--depths",
            "0.5", "--samples", samples, "-r", "swa", "-r", "swa-fa-decode", "--window", "32", "-n", "3", "--quiet",
            "--out", str(out)]  # fmt: skip


def test_two_process_sweep_writes_the_rows_of_one_process(tiny_folder, tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    swaa(1, *sweep_args(tiny_folder, one), "--csv", str(tmp_path / "one.csv"))
    swaa(2, *sweep_args(tiny_folder, two), "--csv", str(tmp_path / "two.csv"))
    rows1, rows2 = read_jsonl(one), read_jsonl(two)
    assert len(rows1) == 3 * 2 * 2 == len({r["cell_id"] for r in rows2})  # 3 configs x 2 lengths x 2 samples
    assert computed(rows2) == computed(rows1)  # same cells, same order, same outputs, scores and log-likelihoods
    assert all(r["error"] is None for r in rows2) and {r["answer_logprob"] is not None for r in rows2} == {True}
    # no part file left; each output keeps its (released) lock file beside it, as filelock leaves them
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "one.csv", "one.jsonl", "one.jsonl.lock", "two.csv", "two.jsonl", "two.jsonl.lock"
    ]  # fmt: skip
    import pandas as pd

    csv1, csv2 = (pd.read_csv(tmp_path / f) for f in ("one.csv", "two.csv"))
    csv1, csv2 = (df.drop(columns=[c for c in df.columns if measured(c)]) for df in (csv1, csv2))
    pd.testing.assert_frame_equal(csv1, csv2)


def test_two_process_eval_reports_the_runs_of_one_process(tiny_folder, tmp_path):
    """`--processes 2` starts torchrun itself; the samples are shared out and the main process reports them all."""
    args = ["eval", "--model", tiny_folder, "--device", "cpu", "--task", "needle", "--length", "250", "--depth",
            "0.3", "--samples", "3", "-r", "swa", "--window", "32", "-n", "3", "--quiet"]  # fmt: skip
    swaa(1, *args, "--out", str(tmp_path / "one.jsonl"))
    result = swaa(1, *args, "--out", str(tmp_path / "two.jsonl"), "--json", "--processes", "2")  # starts torchrun
    assert "x 2 config(s)" in result.stderr and "on 2 processes" in result.stderr
    rows1, rows2 = read_jsonl(tmp_path / "one.jsonl"), read_jsonl(tmp_path / "two.jsonl")
    assert len(rows1) == 3 * 2 and computed(rows2) == computed(rows1)
    assert [r["meta"]["sample_index"] for r in rows2] == [0, 0, 1, 1, 2, 2]
    printed = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]

    def key(r):
        return r["label"], r["output_text"], round(r["answer_logprob"], 6)  # the .jsonl export keeps 10 digits

    assert list(map(key, printed)) == list(map(key, rows2))  # printed once, by the main process only


def test_killed_two_process_sweep_resumes_without_losing_or_repeating_runs(tiny_folder, tmp_path):
    out, reference = tmp_path / "killed.jsonl", tmp_path / "reference.jsonl"
    args = sweep_args(tiny_folder, out, lengths=("300", "400", "500"), samples="3")  # 27 runs
    proc = subprocess.Popen(swaa_command(2, *args), env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if all(len(read_jsonl(part_path(out, r))) >= 2 for r in range(2)):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the sweep ended before it could be killed"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers, no chance to merge
        proc.wait()
    before = [row for r in range(2) for row in read_jsonl(part_path(out, r))]
    assert 4 <= len(before) < 27 and not out.exists()

    swaa(2, *args)
    rows = read_jsonl(out)
    ids = [r["cell_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 27
    assert not part_path(out, 0).exists() and not part_path(out, 1).exists()
    by_id = {r["cell_id"]: r for r in rows}
    assert all(by_id[r["cell_id"]] == r for r in before)  # runs finished before the kill were kept, not rerun
    swaa(1, *sweep_args(tiny_folder, reference, lengths=("300", "400", "500"), samples="3"))
    ref = read_jsonl(reference)
    assert sorted(map(json.dumps, computed(rows))) == sorted(map(json.dumps, computed(ref)))


def test_merge_skips_rows_already_merged_and_keeps_grid_order(tmp_path):
    out = tmp_path / "runs.jsonl"
    rows = [{"cell_id": c, "output_text": c * 2} for c in "abcdef"]
    order = {c: i for i, c in enumerate("abcdef")}
    out.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[4]) + "\n")
    # A crash after the merged file replaced the old one but before the parts were deleted: row e is in both.
    part_path(out, 0).write_text("".join(json.dumps(r) + "\n" for r in (rows[4], rows[2])))
    part_path(out, 1).write_text(json.dumps(rows[3]) + "\n" + json.dumps(rows[1]) + "\n" + '{"cell_id": "f", "outp')
    (tmp_path / "runs.jsonl.partial-notes").write_text("not a part file")
    assert merge_parts(out, order) == 3
    assert [r["cell_id"] for r in read_jsonl(out)] == ["a", "e", "b", "c", "d"]
    assert not part_path(out, 0).exists() and not part_path(out, 1).exists()
    assert (tmp_path / "runs.jsonl.partial-notes").exists()
    assert merge_parts(out, order) == 0


def test_share_interleaves_and_covers_every_item_once():
    items = list(range(11))
    shares = [Launch(rank=r, world=3).share(items) for r in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert Launch().share(items) == items and Launch().gather("x") == ["x"]


def test_two_process_ddp_finetune_equals_one_process_with_the_whole_batch(tiny_folder, tmp_path):
    """DDP with one example per process must train exactly as one process with both examples in its batch (gradients
    averaged across processes); one process with only the first example trains differently (the check has teeth)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from swaa_core.train.adapters import load_adapter, read_adapter_info

    records = [{"prompt": "The grass is green. " * 20 + f"The code is {i}{i}{i}. What is the code?",
                "response": f"The code is {i}{i}{i}."} for i in (1, 2)]  # fmt: skip
    for name, rows in (("both", records), ("first", records[:1])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Warm-up makes step 1 a no-op (lr 0); step 2 then moves every LoRA B weight by about lr.
    common = ["finetune", "--model", tiny_folder, "--device", "cpu", "--recipe", "swa-fa-decode", "--window", "16",
              "--steps", "2", "--lr", "1e-2", "--dropout", "0", "--quiet"]  # fmt: skip
    swaa(2, *common, "--data", str(tmp_path / "both.jsonl"), "--out", str(tmp_path / "ddp"))
    swaa(1, *common, "--data", str(tmp_path / "both.jsonl"), "--batch-size", "2", "--out", str(tmp_path / "one"))
    swaa(1, *common, "--data", str(tmp_path / "first.jsonl"), "--out", str(tmp_path / "alone"))
    ddp, one, alone = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("ddp", "one", "alone"))
    lora_b = [k for k in ddp if "lora_B" in k]
    assert lora_b and all(ddp[k].abs().max() > 1e-3 for k in lora_b)
    assert all(torch.allclose(ddp[k], one[k], atol=1e-6) for k in ddp)
    assert not all(torch.allclose(ddp[k], alone[k], atol=1e-6) for k in lora_b)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())

    info = read_adapter_info(tmp_path / "ddp")
    assert info.training["processes"] == 2 and info.swaa_config.force_fa_decode
    model, cfg = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_folder), tmp_path / "ddp")
    assert cfg == info.swaa_config
    loaded = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    assert len(loaded) == len(lora_b) and all(v.abs().max() > 1e-3 for v in loaded.values())


# ---------------------------------------------------------------------- one model over several devices


def test_device_map_auto_loads_and_runs_where_it_can(tiny_folder):
    """Without CUDA, device_map='auto' means the CPU: the model loads and runs exactly as with device='cpu'."""
    from swaa_core import SWAAConfig
    from swaa_core.eval.runner import run_one
    from swaa_core.models.loaded import ModelLoadError
    from swaa_core.models.loading import load_model

    spread = load_model(tiny_folder, device_map="auto", reuse=False)
    plain = load_model(tiny_folder, device="cpu", reuse=False)
    cfg = SWAAConfig(sliding_window_size=16, keep_first=2, force_fa_decode=True)
    prompt = "The grass is green. " * 15 + "What colour is the grass?"
    a, b = (run_one(m, prompt, cfg, max_new_tokens=4, score_logprob=False) for m in (spread, plain))
    assert a.error is None and a.output_text == b.output_text and a.kv_cache_bytes == b.kv_cache_bytes
    with pytest.raises(ModelLoadError, match="contradict"):
        load_model(tiny_folder, device="cpu", device_map="auto")
    with pytest.raises(ModelLoadError, match="not supported"):
        load_model(tiny_folder, device_map="balanced")


def spread_tiny(layers: int = 4):
    """A tiny model with the device map accelerate writes for two GPUs (first half of the layers on GPU 0)."""
    model = build_tiny_model("llama", layers=layers)
    half = layers // 2
    model.hf_device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": 1, "lm_head": 1}
    model.hf_device_map.update({f"model.layers.{i}": int(i >= half) for i in range(layers)})
    return model


def test_layer_devices_follow_the_device_map():
    from swaa_core.models.memory import layer_devices, spans_devices

    model = spread_tiny(4)
    assert spans_devices(model) and layer_devices(model) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    del model.hf_device_map
    assert not spans_devices(model) and layer_devices(model) == ["cpu"] * 4


def test_spread_run_is_refused_when_one_device_would_run_out(monkeypatch):
    """Each GPU holds the KV cache of its own layers: a run that fits in the sum of free memory but not on the GPU
    holding the full-attention layers is refused, naming that GPU; with the layers' caches bounded it passes."""
    import swaa_core.models.memory as memory
    from swaa_core import SWAAConfig

    model = spread_tiny(4)
    n = 20_000
    # Hand count: 2 KV heads x 8 dims x 4 bytes x (K and V) = 128 bytes per token per layer.
    per_layer_full = 128 * n
    est = memory.estimate_memory(model, n)
    assert est.kv_full_per_layer == (per_layer_full,) * 4
    room = (2 * per_layer_full + est.activation_bytes) / 0.9 + 1  # two layers' caches and the activations
    free = {"cuda:0": room, "cuda:1": room}
    monkeypatch.setattr(memory, "available_memory", lambda device: free[str(device)])
    memory.check_run_fits(model, n)
    free["cuda:1"] = room - per_layer_full  # GPU 1 cannot hold its two full-attention layers
    assert free["cuda:0"] + free["cuda:1"] > est.run_bytes(False)  # the sum of free memory would have passed
    with pytest.raises(memory.InsufficientMemoryError, match="cuda:1"):
        memory.check_run_fits(model, n)
    # Layers 2 and 3 slide without FA decode: they hold only sinks + window, and GPU 1 has room again.
    memory.check_run_fits(model, n, SWAAConfig(sliding_window_size=64, non_sliding_layers=[0, 1]))


def test_launch_refuses_device_choices_that_fight_one_process_per_device(monkeypatch):
    import swaa_core.runtime.distributed as distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "_current", None)
    with pytest.raises(distributed.LaunchError, match="spreads one model"):
        distributed.current("auto")
    with pytest.raises(distributed.LaunchError, match="one per device"):
        distributed.current("cuda:1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.current("cpu") == Launch(device="cpu")


def test_swaa_device_sets_the_default_device(monkeypatch):
    from swaa_core.models.loaded import ModelLoadError
    from swaa_core.models.loading import resolve_device

    monkeypatch.setenv("SWAA_DEVICE", "auto")
    assert resolve_device(None) == "cpu"  # "auto" without CUDA: the CPU
    assert resolve_device("cpu") == "cpu"  # an explicit device wins
    monkeypatch.setenv("SWAA_DEVICE", "tpu:9")
    with pytest.raises(ModelLoadError, match="Unknown device"):
        resolve_device(None)
