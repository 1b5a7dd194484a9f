"""Page handlers called directly (no server, no model): a failure is a toast naming the problem, and every control,
the model in use and the user's text stay as they were."""

from __future__ import annotations

import warnings

import gradio as gr
import pytest
from helpers.components import Names

from app.errors import toast_errors
from app.model_service import ModelHub
from app.sidebar import model as model_panel
from app.state import Strategy
from app.tabs import compare


def _warnings(fn, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args)
    return result, [str(w.message) for w in caught]


def _is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


def test_every_page_event_is_private_and_turns_failures_into_toasts():
    from app.api import ENDPOINTS
    from app.page import build_demo

    demo = build_demo()
    public = {fn.api_name for fn in demo.fns.values() if fn.api_visibility != "private"}
    assert public == set(ENDPOINTS)
    page = [fn for fn in demo.fns.values() if fn.api_visibility == "private" and fn.fn is not None]
    assert len(page) > 30
    unguarded = [fn.name for fn in page if not getattr(fn.fn, "toasts_errors", False)]
    assert not unguarded


def test_a_failed_load_keeps_the_model_in_use_and_every_control(monkeypatch):
    def load(name):
        raise ValueError(f"{name!r} is not an embedded model, an existing folder, nor a Hub id")

    monkeypatch.setattr(model_panel, "HUB", ModelHub(load))
    strategy = Strategy(fa_layers_mode="1/2", fa_layers=[1, 3], fa_decode_mode="all")
    result, toasts = _warnings(model_panel.load_model, Names(), "does-not-exist/nope-model", "smollm2-135m", strategy)
    # the dropdown goes back to the model in use; every other output is left out, so it stays as it was
    assert result == {"model": "smollm2-135m"}
    assert toasts == [
        "'does-not-exist/nope-model' is not an embedded model, an existing folder, nor a Hub id. Still using "
        "smollm2-135m."
    ]


def test_an_empty_model_name_is_a_toast(monkeypatch):
    monkeypatch.setattr(model_panel, "HUB", ModelHub(lambda name: pytest.fail("nothing should load")))
    result, toasts = _warnings(
        model_panel.load_model, Names(), "  ", "smollm2-135m", Strategy(fa_layers_mode="1/2", fa_decode_mode="all")
    )
    assert result == {"model": "smollm2-135m"} and "Choose a model" in toasts[0]


@pytest.mark.parametrize(
    "name, raw, message",
    [
        ("program.txt", b"\x7fELF\x02\x01\x01\x00" + bytes(64), "program.txt is a binary file"),
        ("old.txt", "Grüße".encode("latin-1"), "old.txt is not UTF-8 text"),
        ("slides.pdf", b"not a pdf", "slides.pdf is not a readable PDF"),
    ],
)
def test_a_bad_upload_keeps_the_document_and_says_why(tmp_path, name, raw, message):
    path = tmp_path / name
    path.write_bytes(raw)
    result, toasts = _warnings(compare.read_upload, Names(), str(path), "my own text")
    assert result == {"upload": None}  # the text box keeps "my own text"; the upload box is cleared
    assert len(toasts) == 1 and message in toasts[0]
    assert path.exists()  # only read: another visitor's identical upload may share the path


def test_a_good_upload_replaces_the_document_and_stays_for_others(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("東京の猫は三匹。 🐈 مرحبا", encoding="utf-8")
    result, toasts = _warnings(compare.read_upload, Names(), str(path), "old text")
    assert (result, toasts) == ({"document": "東京の猫は三匹。 🐈 مرحبا", "upload": None}, [])
    # Gradio stores uploads by content hash: a second visitor's identical file is this path, read after ours
    assert (
        _warnings(compare.read_upload, Names(), str(path), "their text")[0]["document"] == "東京の猫は三匹。 🐈 مرحبا"
    )


def test_toasts_leave_every_output_unchanged():
    def fails(*_):
        raise gr.Error("A specific message.")

    def fails_later(*_):
        yield "partial"
        raise ValueError("Broke halfway.")

    result, toasts = _warnings(toast_errors(fails, 3))
    assert _is_skip(result) and toasts == ["A specific message."]  # one skip: Gradio skips every output
    (outputs, toasts) = _warnings(lambda: list(toast_errors(fails_later, 1)()))
    assert outputs[0] == "partial" and _is_skip(outputs[1]) and toasts == ["Broke halfway."]


def test_the_question_help_matches_what_happens():
    from helpers.tiny_models import build_tiny_tokenizer

    from app import texts
    from app.prompts import PromptError, text_sample

    tok = build_tiny_tokenizer()
    assert "Empty: the text's last sentence is the question" in texts.QUESTION_INFO
    assert "leave it empty when the text ends with its question" in texts.PROMPT_DETAILS
    sample = text_sample(tok, "Alice has three cats. Bob has two.\nHow many cats does Alice have?", "", "", "", seed=0)
    assert sample.question == "How many cats does Alice have?" and "How many" not in sample.prompt.split("Question:")[0]
    with pytest.raises(PromptError, match=r"Add a question about the text \(or end the text with one\)"):
        text_sample(tok, "Alice has three cats.", "", "", "", seed=0)


def test_texts_name_real_commands_and_number_the_tour_from_one(tmp_path):
    import shlex

    from app import texts
    from app.sidebar.strategy import config_json
    from swaa_core.cli import build_parser, read_config_file
    from swaa_core.engine.config import SWAAConfig

    cfg = SWAAConfig(
        sliding_window_size=256, keep_first=10, force_fa_decode=True, non_sliding_layers=list(range(1, 30, 2))
    )
    saved = tmp_path / "swaa_config.json"
    saved.write_text(config_json(cfg), encoding="utf-8")  # what "Download config JSON" saves
    command = texts.STRATEGY_DETAILS.split("`")[-2]
    args = shlex.split(command.replace("swaa_config.json", str(saved)))
    assert args[0] == "swaa"
    parsed = build_parser().parse_args(args[1:])
    assert parsed.command == "run" and len(parsed.recipe) == 1
    assert SWAAConfig.from_json(read_config_file(str(parsed.recipe[0]))) == cfg  # the CLI reads back the same config
    assert [step.title.split(" · ")[0] for step in texts.TOUR] == [str(i) for i in range(1, len(texts.TOUR) + 1)]
    assert "Running on" not in texts.CPU_NOTE  # the device line already says it
