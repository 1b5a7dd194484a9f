"""The app's public API through gradio_client against the launched app, with the real embedded SmolLM2 model.

References are independent of the app: plain transformers greedy generation for the full-attention column, the
task's known answer for the verdicts, the KV cache size each config must hold computed from the model shape, and
each endpoint's own view_api() schema for what it takes and returns.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from app.api import ENDPOINTS
from swaa_core.eval.tasks import make_task

pytestmark = pytest.mark.embedded

# Plain SWA with window 256 beside full attention (no pinned column), on a 512-token needle task at depth 0.25.
DEFAULT_REASON = "eager: the CPU default (both paths timed on this kind of machine: docs/benchmarks.md)"
SWA_ONLY = dict(
    window=256, sinks=0, fa_layers="none", fa_decode="off", cot=False, adapter="", source="task", task="needle",
    length=512, depth=0.25, seed=0, max_new_tokens=10, pinned=[],
)  # fmt: skip
MIXED_SCRIPTS = "Café ☕ 🐈‍⬛ 東京の猫は三匹。 שלום עולם مرحبا بالعالم"


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def schema(client):
    return client.view_api(print_info=False, return_format="dict")


@pytest.fixture(scope="module")
def comparison(client):
    board, summary, results, _csv, results_json = client.predict(**SWA_ONLY, api_name="/compare")
    assert json.loads(Path(results_json).read_text(encoding="utf-8")) == results  # the file holds the same rows
    return board, summary, results


@pytest.fixture(scope="module")
def sample(loaded):
    return make_task("needle", loaded.tokenizer, length_tokens=512, depth=0.25, seed=0)


# ---------------------------------------------------------------- the schema
def test_the_api_is_exactly_the_named_endpoints(schema):
    assert sorted(schema["named_endpoints"]) == sorted(f"/{name}" for name in ENDPOINTS)
    assert not schema["unnamed_endpoints"]
    for name, endpoint in schema["named_endpoints"].items():
        assert endpoint["description"], f"{name} has no description"
        for item in endpoint["parameters"] + endpoint["returns"]:
            assert not item["label"].startswith(("value_", "parameter_")), f"{name}: unnamed {item['label']}"
        for param in endpoint["parameters"]:
            assert param["label"] == param["parameter_name"], name
    required = {
        name: [p["parameter_name"] for p in e["parameters"] if not p["parameter_has_default"]]
        for name, e in schema["named_endpoints"].items()
    }
    assert required == {f"/{n}": (["file"] if n == "read_upload" else []) for n in ENDPOINTS}


def _returns_match(returns: list[dict], values) -> None:
    values = values if isinstance(values, tuple) else (values,)
    assert len(values) == len(returns)
    for spec, value in zip(returns, values, strict=True):
        kind = spec["python_type"]["type"]
        if kind == "filepath":
            assert Path(value).is_file(), spec["label"]  # downloaded by the client: a file, not an update dict
        elif kind == "str":
            assert isinstance(value, str), spec["label"]
        elif kind == "bool":
            assert isinstance(value, bool), spec["label"]
        else:  # JSON
            assert isinstance(value, list | dict), spec["label"]


def test_every_endpoint_runs_from_its_own_schema(client, schema, tmp_path):
    """Each endpoint is called with its schema's defaults (smaller sizes where a default would take long) and its
    results are checked against the schema's return types."""
    upload = tmp_path / "notes.txt"
    upload.write_text(MIXED_SCRIPTS, encoding="utf-8")
    quicker = {"length": 256, "max_new_tokens": 3, "samples": 1, "depths": 2}
    outputs = {}
    for name, endpoint in schema["named_endpoints"].items():
        kwargs = {}
        for param in endpoint["parameters"]:
            key = param["parameter_name"]
            if param["python_type"]["type"] == "filepath":
                kwargs[key] = handle_file(str(upload))
            elif key in quicker and name != "/compare" or key == "max_new_tokens":
                kwargs[key] = quicker[key]
        if name == "/adapter_config":
            continue  # needs an adapter on disk: test_adapter_sets_the_config_it_was_trained_for
        outputs[name] = client.predict(**kwargs, api_name=name)
        _returns_match(endpoint["returns"], outputs[name])
    # /compare with the page's defaults shows what the page shows: full attention, the pinned plain SWA, the
    # current (recommended) config.
    board, _summary, results, _csv, _json = outputs["/compare"]
    assert [r["label"] for r in results] == [
        "Full attention", "SWA only (W=256)", "Recommended: 1/2 FA layers + FA decode + sinks (W=256, 10 sinks)",
    ]  # fmt: skip
    assert board.count('data-testid="verdict"') == 3
    assert outputs["/read_upload"] == MIXED_SCRIPTS
    assert outputs["/load_model"]["num_layers"] == 30
    assert outputs["/parse_config"] == {
        "window": 256, "sinks": 0, "fa_layers": "none", "fa_decode": "off",
        "config": {"sliding_window_size": 256, "keep_first": 0, "force_fa_decode": False, "non_sliding_layers": []},
        "not_applied": [], "note": "",
    }  # fmt: skip
    assert [row["recipe"] for row in outputs["/recipe_sweep"]] == ["Full attention", "SWA only (W=256)"]
    grids, _csv = outputs["/needle_sweep"]
    assert [len(g["accuracy"]) for g in grids] == [2, 2] and grids[0]["lengths"] == [256]
    assert outputs["/stop_run"] is False  # nothing was running


# ---------------------------------------------------------------- the comparison's numbers
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
    points, note = client.predict(
        recipes=["full", "swa"], lengths=["256", "512"], window=128, sinks=0, api_name="/decode_speed"
    )
    by_label = {}
    for p in points:
        assert p["error"] is None and p["ms_per_token"] > 0 and p["tokens_per_s"] > 0
        by_label.setdefault(p["label"], []).append(p["prompt_tokens"])
    assert by_label == {"Full attention": [256, 512], "SWA only (W=128)": [256, 512]}
    assert "32 decode steps" in note and "Not measured" not in note


@pytest.mark.parametrize(
    "asked", [{"decode_path": "fixed"}, {"static_cache": True}], ids=["decode_path", "static_cache"]
)
def test_fixed_buffer_decode_gives_the_same_answers_and_says_so(client, comparison, asked):
    """decode_path="fixed" (or the older static_cache=True): every column through swaa_core's fast_generate (its
    setup time, path and reason in each row); the default on this CPU is the eager path."""
    fixed = "fixed-buffer: asked for (cpu, batch 1, greedy)"
    _board, summary, rows, _csv, _json = client.predict(**SWA_ONLY, **asked, api_name="/compare")
    assert [r["output_text"] for r in rows] == [r["output_text"] for r in comparison[2]]
    assert [r["decode_path"] for r in comparison[2]] == ["dynamic cache"] * 2
    assert [r["decode_reason"] for r in comparison[2]] == [DEFAULT_REASON] * 2
    assert [(r["decode_path"], r["decode_reason"]) for r in rows] == [("fixed buffers", fixed)] * 2
    assert all(r["setup_s"] > 0 for r in rows)
    assert all((r["timed_tokens"], r["decode_path_asked"]) == (32, "fixed") for r in rows)
    assert f"Decode path: fixed buffers ({fixed}) in every column" in summary
    points, note = client.predict(
        recipes=["full", "swa"], lengths=["256"], window=128, sinks=0, **asked, api_name="/decode_speed"
    )
    assert [(p["decode_path"], p["decode_reason"], p["error"]) for p in points] == [("fixed buffers", fixed, None)] * 2
    assert all(p["ms_per_token"] > 0 and p["setup_s"] > 0 for p in points)
    assert f"Decode path: fixed buffers ({fixed}); setup per run" in note


def test_a_bad_decode_path_is_refused_by_name(client):
    with pytest.raises(Exception, match="Decode path must be one of auto"):
        client.predict(**SWA_ONLY, decode_path="graph", api_name="/compare")


def test_summary_states_the_kv_saving(comparison):
    _board, summary, (full, swa) = comparison
    saved = 1 - swa["kv_cache_bytes"] / full["kv_cache_bytes"]
    assert f"{saved:.0%} smaller" in summary
    verdict = {(True, False): "**lost** the answer", (True, True): "kept it right", (False, False): "both wrong"}
    assert verdict.get((full["correct"], swa["correct"]), "found the answer") in summary


def test_the_board_shows_the_prompt_tokens_the_model_read(comparison):
    board, _summary, rows = comparison
    shown = re.findall(r"<dd>(\d+) in / \d+ out", board)
    assert shown == [str(r["prompt_tokens"]) for r in rows]


# ---------------------------------------------------------------- adapters
@pytest.fixture(scope="module")
def adapter_dir(loaded, tmp_path_factory):
    """A LoRA adapter on the embedded model with non-zero (random, seeded) weights, saved with its SWAA config."""
    import copy

    from peft import get_peft_model

    from swaa_core.engine.config import SWAAConfig
    from swaa_core.train.adapters import save_adapter
    from swaa_core.train.lora import TrainSettings, lora_config

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
    controls = client.predict(str(adapter_dir), api_name="/adapter_config")
    assert {k: controls[k] for k in ("window", "sinks", "fa_layers", "fa_decode")} == {
        "window": 256, "sinks": 0, "fa_layers": "none", "fa_decode": "off",
    }  # fmt: skip


def test_adapter_runs_in_the_swaa_column_only(client, comparison, adapter_dir):
    _board, _summary, (full, tuned), _csv, _json = client.predict(
        **{**SWA_ONLY, "adapter": str(adapter_dir)}, api_name="/compare"
    )
    base_full, base_swa = comparison[2]
    assert tuned["label"] == "SWA only (W=256) + LoRA"
    # The shared base model is untouched: the full-attention column reads exactly as before.
    assert full["output_text"] == base_full["output_text"]
    assert full["answer_logprob"] == pytest.approx(base_full["answer_logprob"], abs=1e-5)
    # The adapter's weights do act on the SWAA column.
    assert tuned["answer_logprob"] != pytest.approx(base_swa["answer_logprob"], abs=1e-3)


# ---------------------------------------------------------------- bad input: a specific message, nothing changed
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


def test_uploaded_pdf_text_comes_back(client, tmp_path):
    pdf = tmp_path / "memo.pdf"
    pdf.write_bytes(_pdf_with_text("The vault code is 4417 and the lift is broken."))
    assert "The vault code is 4417 and the lift is broken." in client.predict(
        handle_file(str(pdf)), api_name="/read_upload"
    )


def test_identical_uploads_at_the_same_time_all_come_back(app_url, tmp_path):
    """Six clients send the same file at once: Gradio stores it once, by content hash, and every client reads it.
    Reference: the file's own text."""
    from concurrent.futures import ThreadPoolExecutor

    note = tmp_path / "same.txt"
    note.write_text("The same note, sent by six visitors at once: 東京 🐈", encoding="utf-8")
    clients = [Client(app_url, verbose=False) for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        texts = list(pool.map(lambda c: c.predict(handle_file(str(note)), api_name="/read_upload"), clients))
    assert texts == [note.read_text(encoding="utf-8")] * 6


GOOD_CONFIG = '{"swaa_config": {"sliding_window_size": 128, "keep_first": 4, "force_fa_decode": [0, 2], "non_sliding_layers": [3, 7, 11, 15, 19, 23, 27]}}'


def test_pasted_config_gives_the_compare_inputs(client):
    controls = client.predict(GOOD_CONFIG, "", api_name="/parse_config")
    assert {k: controls[k] for k in ("window", "sinks", "fa_layers", "fa_decode")} == {
        "window": 128, "sinks": 4, "fa_layers": "1/4", "fa_decode": "0,2",
    }  # fmt: skip


def _state(client) -> tuple:
    """What a bad request must leave as it was: the loaded model and how the app reads a known config."""
    return client.predict("smollm2-135m", api_name="/load_model"), client.predict(
        GOOD_CONFIG, "", api_name="/parse_config"
    )


BAD_COMPARE = [
    ({"window": 12.5}, "window: expected a whole number, got '12.5'"),
    ({"window": 0}, "window: must be a whole number from 1 to 16,777,216, got 0"),
    ({"sinks": -1}, "sinks: must be a whole number from 0 to 16,777,216, got -1"),
    ({"fa_layers": "every other"}, "fa_layers must be 'none', 'all', '1/k' (such as '1/2'), 'every k from s'"),
    ({"fa_layers": "1,99"}, "this model has 30 layers"),
    ({"fa_decode": "sometimes"}, "fa_decode must be 'none', 'all', '1/k' (such as '1/2'), 'every k from s'"),
    ({"source": "text", "document": "Some text."}, "Add a question about the text (or end the text with one)"),
    ({"source": "text", "document": "  "}, "The text box is empty"),
    ({"length": 8192, "max_new_tokens": 64}, "8,192-token context"),
    ({"max_new_tokens": 0}, "Max new tokens must be a whole number from 1 to 512, got 0"),
    ({"max_new_tokens": 10**6}, "Max new tokens must be a whole number from 1 to 512"),
    ({"depth": 1.5}, "depth must be between 0 (start of the context) and 1 (end), got 1.5"),
    ({"task": "nope"}, "nope"),
    ({"pinned": {"config": 1}}, "pinned columns must be a list"),
    ({"pinned": [{"config": {"sliding_window_size": None}}]}, "a pinned column needs a window size"),
    ({"model": "/no/such/folder"}, "Folder not found: /no/such/folder"),
]
BAD_OTHER = [
    ("/load_model", [""], "Name a model"),
    ("/load_model", ["does-not-exist/nope-model"], "does-not-exist/nope-model"),
    ("/parse_config", ['{"swaa_config": {"sliding_window_size": 64, "non_sliding_layers": [3, 31]}}', ""],
     "this model has 30 layers"),
    ("/parse_config", ['{"sliding_window_size": 64, "keep_first": -2}', ""],
     "keep_first (sink tokens) must be a whole number >= 0"),
    ("/parse_config", ['{"sliding_window_size": 64,', ""], "not valid JSON"),
    ("/parse_config", ['{"window": 64}', ""], "Unknown SWAA config field(s) ['window']"),
    ("/parse_config", ['{"sliding_window_size": null}', ""], "that is full attention"),
    ("/adapter_config", ["", ""], "Name a LoRA adapter"),
    ("/adapter_config", ["/no/such/adapter", ""], "/no/such/adapter"),
    ("/recipe_sweep", dict(recipes=[]), "Tick at least one recipe to sweep"),
    ("/recipe_sweep", dict(samples=0), "Samples per recipe must be a whole number from 1 to 20, got 0"),
    ("/needle_sweep", dict(lengths=[]), "Tick at least one prompt length"),
    ("/needle_sweep", dict(depths=1), "Depths must be a whole number from 2 to 11, got 1"),
]  # fmt: skip
BAD_UPLOADS = [
    ("program.txt", b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(200), "program.txt is a binary file"),
    ("old.txt", "Grüße".encode("latin-1"), "old.txt is not UTF-8 text"),
    ("empty.txt", b"  \n\n ", "empty.txt contains no text"),
    ("slides.pdf", b"PK\x03\x04 a zip archive, not a PDF", "slides.pdf is not a readable PDF"),
    ("report.docx", b"PK\x03\x04", "Cannot read report.docx: upload a .txt, .md or .pdf file"),
]


def _refused(client, message: str, *args, **kwargs) -> None:
    before = _state(client)
    with pytest.raises(AppError) as excinfo:
        client.predict(*args, **kwargs)
    text = str(excinfo.value)
    assert message in text
    assert "Traceback" not in text and 'File "' not in text
    assert _state(client) == before


@pytest.mark.parametrize("change, message", BAD_COMPARE, ids=[m[:40] for _, m in BAD_COMPARE])
def test_bad_comparison_settings_are_explained(client, change, message):
    _refused(client, message, **{**SWA_ONLY, **change}, api_name="/compare")


@pytest.mark.parametrize("endpoint, args, message", BAD_OTHER, ids=[m[:40] for _, _, m in BAD_OTHER])
def test_bad_requests_are_explained(client, endpoint, args, message):
    if isinstance(args, dict):
        _refused(client, message, **args, api_name=endpoint)
    else:
        _refused(client, message, *args, api_name=endpoint)


@pytest.mark.parametrize("name, content, message", BAD_UPLOADS, ids=[n for n, _, _ in BAD_UPLOADS])
def test_unreadable_upload_is_explained(client, tmp_path, name, content, message):
    bad = tmp_path / name
    bad.write_bytes(content)
    _refused(client, message, handle_file(str(bad)), api_name="/read_upload")


def test_stop_ends_a_long_run_and_keeps_what_finished(client):
    import time

    job = client.submit(**{**SWA_ONLY, "length": 1024, "max_new_tokens": 400}, api_name="/compare")
    deadline = time.monotonic() + 600
    while "generating…" not in (job.outputs()[-1][0] if job.outputs() else ""):
        assert time.monotonic() < deadline and not job.done(), "the run never started streaming"
        time.sleep(0.5)
    time.sleep(2)  # let a few tokens stream
    assert client.predict(api_name="/stop_run") is True
    board, _summary, rows, _csv, _json = job.result(timeout=300)
    assert rows[0]["label"] == "Full attention"
    assert rows[0]["error"].startswith("Cancelled") and rows[0]["generated_tokens"] < 400
    assert len(rows) == 1  # the SWA column never started
    assert board.count("is-cancelled") == 2  # both columns show as stopped


def test_stop_on_a_queued_run_takes_it_out_of_the_queue(client, app_url):
    """Reference: a second client. Its /compare waits behind ours; its /stop_run ends it before it starts, and
    ours (another session) runs on untouched."""
    import time

    ours = client.submit(**{**SWA_ONLY, "length": 1024, "max_new_tokens": 400}, api_name="/compare")
    deadline = time.monotonic() + 600
    while "generating…" not in (ours.outputs()[-1][0] if ours.outputs() else ""):
        assert time.monotonic() < deadline and not ours.done(), "the first run never started streaming"
        time.sleep(0.5)
    other = Client(app_url, verbose=False)
    waiting = other.submit(**SWA_ONLY, api_name="/compare")
    while waiting.status().code.name not in ("IN_QUEUE", "QUEUE_FULL"):
        assert time.monotonic() < deadline and not waiting.done()
        time.sleep(0.2)
    assert other.predict(api_name="/stop_run") is True
    with pytest.raises(AppError, match="Stopped before it started"):
        waiting.result(timeout=60)
    assert not ours.done()  # the running run of the first client was not stopped by the second
    assert client.predict(api_name="/stop_run") is True
    _board, _summary, rows, _csv, _json = ours.result(timeout=300)
    assert rows and rows[0]["cancelled"]
