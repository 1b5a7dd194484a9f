"""The app's endpoints through gradio_client against the launched app, with the real embedded SmolLM2 model.

References are independent of the app: plain transformers greedy generation for the full-attention column, the
task's known answer for the verdicts, and the KV cache size each config must hold computed from the model shape.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from swaa_core.tasks import make_task

pytestmark = pytest.mark.embedded

# Plain SWA with window 256 beside full attention, on a 512-token needle task whose fact sits at depth 0.25.
SWA_ONLY = dict(
    window=256, sinks=0, fa_mode="none", fa_layers=[], fad_mode="off", fad_layers=[], cot=False, adapter="",
    source="task", task="needle", length=512, depth=0.25, seed=0, document="", question="", answer="", prefix="",
    max_new_tokens=10, layer=0,
)  # fmt: skip


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def comparison(client):
    board, summary, _latency, _masks, _csv, results_json, _column, _layer = client.predict(
        **SWA_ONLY, api_name="/compare"
    )
    # The download button comes back as a component update (it also turns interactive): the file is its value.
    path = results_json["value"] if isinstance(results_json, dict) else results_json
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    return board, summary, rows


@pytest.fixture(scope="module")
def sample(loaded):
    return make_task("needle", loaded.tokenizer, length_tokens=512, depth=0.25, seed=0)


def test_both_columns_ran_with_their_configs(comparison):
    board, _summary, rows = comparison
    assert [r["label"] for r in rows] == ["Full attention", "SWA only (W=256)"]
    assert rows[0]["config"] == ""
    assert json.loads(rows[1]["config"]) == {
        "sliding_window_size": 256,
        "keep_first": 0,
        "force_fa_decode": False,
        "non_sliding_layers": [],
    }
    assert all(r["error"] is None and r["output_text"].strip() for r in rows)
    for i in range(2):
        assert f'data-testid="column-{i}"' in board
    assert board.count('data-testid="verdict"') == 2


def test_full_attention_column_is_plain_greedy_generation(comparison, sample, loaded):
    tok = loaded.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": sample.prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(text + sample.answer_prefix, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with loaded.lock, torch.no_grad():
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
    expected = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    full = comparison[2][0]
    assert full["prompt_tokens"] == ids.shape[1]
    assert full["output_text"] == expected


def test_verdicts_follow_the_known_answer(comparison, sample):
    board, _summary, rows = comparison
    for row in rows:
        found = re.search(rf"(?<!\d){sample.answer}(?!\d)", row["output_text"]) is not None
        assert row["correct"] is found, row
    marks = re.findall(r'data-testid="verdict">([^<]+)<', board)
    assert marks == ["✓ correct" if r["correct"] else "✗ incorrect" for r in rows]


def test_kv_cache_sizes_match_what_each_config_must_keep(comparison, loaded):
    info = loaded.info
    per_token_per_layer = 2 * info.num_kv_heads * info.head_dim * 4  # keys + values, float32
    full, swa = comparison[2]
    # the last generated token is never fed back; tokens generated past the answer for the timing are held too
    held = full["prompt_tokens"] + full["generated_tokens"] + full["timing_extra_tokens"] - 1
    assert full["kv_cache_bytes"] == info.num_layers * per_token_per_layer * held
    # Sliding layers without FA decode keep only a ring of the last W tokens (no sinks here).
    assert swa["kv_cache_bytes"] == info.num_layers * per_token_per_layer * 256


def test_metrics_are_consistent_timings(comparison):
    for row in comparison[2]:
        assert 0 < row["prefill_s"] <= row["ttft_s"] <= row["total_s"] <= row["timed_total_s"]
        assert row["decode_tokens_per_s"] > 0
        assert 1 <= row["generated_tokens"] <= 10
        # every column timed over the same 32 tokens, whatever the length of its answer
        assert (row["timed_tokens"], row["decode_tokens"]) == (32, 31)
        assert row["generated_tokens"] + row["timing_extra_tokens"] == 32


def test_decode_speed_is_measured_per_recipe_and_length(client):
    plot, note = client.predict(
        recipes=["full", "swa"], lengths=[256, 512], window=128, sinks=0, api_name="/decode_speed"
    )
    figure = json.loads(plot["plot"])
    lines = {trace["name"]: trace for trace in figure["data"]}
    assert set(lines) == {"Full attention", "SWA only (W=128)"}
    for trace in lines.values():
        assert trace["x"] == [256, 512] and all(y > 0 for y in trace["y"])
    assert "32 decode steps" in note and "Not measured" not in note


def test_summary_states_the_kv_saving(comparison):
    _board, summary, (full, swa) = comparison
    saved = 1 - swa["kv_cache_bytes"] / full["kv_cache_bytes"]
    assert f"{saved:.0%} smaller" in summary
    verdict = {(True, False): "**lost** the answer", (True, True): "kept it right", (False, False): "both wrong"}
    assert verdict.get((full["correct"], swa["correct"]), "found the answer") in summary


@pytest.fixture(scope="module")
def adapter_dir(loaded, tmp_path_factory):
    """A LoRA adapter on the embedded model with non-zero (random, seeded) weights, saved with its SWAA config."""
    import copy

    from peft import get_peft_model

    from swaa_core.config import SWAAConfig
    from swaa_core.finetune import TrainSettings, lora_config, save_adapter

    with loaded.lock:
        private = copy.deepcopy(loaded.model)
    peft_model = get_peft_model(private, lora_config(TrainSettings()))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    path = tmp_path_factory.mktemp("adapters") / "swa256-lora"
    return save_adapter(peft_model, path, SWAAConfig(sliding_window_size=256), base_model="smollm2-135m")


def test_adapter_sets_the_config_it_was_trained_for(client, adapter_dir):
    window, sinks, fa_mode, _fa, fad_mode, _fad = client.predict(str(adapter_dir), api_name="/adapter")
    assert (window, sinks, fa_mode, fad_mode) == (256, 0, "none", "off")


def test_adapter_runs_in_the_swaa_column_only(client, comparison, adapter_dir):
    _board, _summary, _lat, _masks, _csv, results_json, _col, _layer = client.predict(
        **{**SWA_ONLY, "adapter": str(adapter_dir)}, api_name="/compare"
    )
    path = results_json["value"] if isinstance(results_json, dict) else results_json
    full, tuned = json.loads(Path(path).read_text(encoding="utf-8"))
    base_full, base_swa = comparison[2]
    assert tuned["label"] == "SWA only (W=256) + LoRA"
    # The shared base model is untouched: the full-attention column reads exactly as before.
    assert full["output_text"] == base_full["output_text"]
    assert full["answer_logprob"] == pytest.approx(base_full["answer_logprob"], abs=1e-5)
    # The adapter's weights do act on the SWAA column.
    assert tuned["answer_logprob"] != pytest.approx(base_swa["answer_logprob"], abs=1e-3)


def _error_text(excinfo) -> str:
    text = str(excinfo.value)
    assert "Traceback" not in text and 'File "' not in text
    return text


def test_prompt_too_long_for_the_model_is_explained(client):
    with pytest.raises(AppError) as excinfo:
        client.predict(**{**SWA_ONLY, "length": 8192, "max_new_tokens": 64}, api_name="/compare")
    text = _error_text(excinfo)
    assert "too long" in text and "8,192-token context" in text


@pytest.mark.parametrize(
    "change, message",
    [
        ({"window": 12.5}, "The window size must be a whole number"),
        ({"source": "text", "document": "Some text."}, "Add a question"),
    ],
)
def test_bad_settings_are_explained(client, change, message):
    with pytest.raises(AppError) as excinfo:
        client.predict(**{**SWA_ONLY, **change}, api_name="/compare")
    assert message in _error_text(excinfo)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"swaa_config": {"sliding_window_size": 64, "non_sliding_layers": [3, 31]}}', "this model has 30 layers"),
        ('{"sliding_window_size": 64, "keep_first": -2}', "keep_first (sink tokens) must be a whole number >= 0"),
        ('{"sliding_window_size": 64,', "not valid JSON"),
        ('{"window": 64}', "Unknown SWAA config field(s) ['window']"),
    ],
)
def test_bad_pasted_config_is_explained(client, text, message):
    with pytest.raises(AppError) as excinfo:
        client.predict(text, api_name="/apply_config")
    assert message in _error_text(excinfo)


def test_pasted_config_sets_the_controls(client):
    text = '{"swaa_config": {"sliding_window_size": 128, "keep_first": 4, "force_fa_decode": [0, 2], "non_sliding_layers": [3, 7, 11, 15, 19, 23, 27]}}'
    window, sinks, fa_mode, fa_layers, fad_mode, fad_layers = client.predict(text, api_name="/apply_config")
    assert (window, sinks, fa_mode, fad_mode) == (128, 4, "1/4", "layers")
    assert fa_layers == [3, 7, 11, 15, 19, 23, 27]
    assert (fad_layers["value"] if isinstance(fad_layers, dict) else fad_layers) == [0, 2]


def test_unknown_model_is_explained(client):
    with pytest.raises(AppError) as excinfo:
        client.predict("no-such-org/no-such-model-xyz", api_name="/load_model")
    assert "no-such-org/no-such-model-xyz" in _error_text(excinfo)


def _pdf_with_text(text: str) -> bytes:
    """A one-page PDF drawing ``text`` in Helvetica, written by hand (no PDF library involved)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_uploaded_pdf_text_lands_in_the_document_box(client, tmp_path):
    pdf = tmp_path / "memo.pdf"
    pdf.write_bytes(_pdf_with_text("The vault code is 4417 and the lift is broken."))
    text = client.predict(handle_file(str(pdf)), "", api_name="/read_upload")
    assert "The vault code is 4417 and the lift is broken." in text


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("slides.pdf", b"PK\x03\x04 a zip archive, not a PDF", "slides.pdf is not a readable PDF"),
        ("empty.txt", b"  \n\n ", "empty.txt contains no text"),
    ],
)
def test_unreadable_upload_is_explained(client, tmp_path, name, content, message):
    bad = tmp_path / name
    bad.write_bytes(content)
    with pytest.raises(AppError) as excinfo:
        client.predict(handle_file(str(bad)), "kept text", api_name="/read_upload")
    assert message in _error_text(excinfo)


def test_stop_ends_a_long_run_and_keeps_what_finished(client):
    import time

    job = client.submit(**{**SWA_ONLY, "length": 1024, "max_new_tokens": 400}, api_name="/compare")
    deadline = time.monotonic() + 600
    while "generating…" not in (job.outputs()[-1][0] if job.outputs() else ""):
        assert time.monotonic() < deadline and not job.done(), "the run never started streaming"
        time.sleep(0.5)
    time.sleep(2)  # let a few tokens stream
    client.predict(api_name="/stop_run")
    board, _summary, _lat, _masks, _csv, results_json, _col, _layer = job.result(timeout=300)
    path = results_json["value"] if isinstance(results_json, dict) else results_json
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    assert rows[0]["label"] == "Full attention"
    assert rows[0]["error"].startswith("Cancelled") and rows[0]["generated_tokens"] < 400
    assert len(rows) == 1  # the SWA column never started
    assert board.count("is-cancelled") == 2  # both columns show as stopped
