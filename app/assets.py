"""The page's look and files: the theme, assets/ (style.css, page.js, the example prompts) and the launch arguments
app.py and the tests share."""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

ASSETS = Path(__file__).resolve().parent.parent / "assets"

# Gradio 6.31's status tracker announces a finished event (in a screen-reader region) with the key "common.complete",
# which its English texts lack (they have "chatbot.complete"): without this the page says "common.complete".
GRADIO_MISSING_TEXTS = gr.I18n(en={"common.complete": "Complete"})


def theme() -> gr.themes.Base:
    """Gradio's Soft theme with every text colour at WCAG AA contrast (4.5:1) on the background it sits on, in the
    light and the dark mode (tests/app/test_layout.py measures them): Soft's grey help lines (neutral 400 on white,
    2.5:1), blue labels (primary 500 on primary 100, 3.0:1), white on primary 500 buttons and radios (3.7:1) and
    orange links (3.6:1) are a shade darker here."""
    return gr.themes.Soft(primary_hue="blue", secondary_hue="orange").set(
        body_text_color_subdued="*neutral_600",
        block_label_text_color="*primary_700",
        block_title_text_color="*primary_700",
        button_primary_background_fill="*primary_700",
        button_primary_background_fill_hover="*primary_600",
        checkbox_label_background_fill_selected="*primary_700",
        link_text_color="*secondary_700",
        link_text_color_hover="*secondary_800",
        link_text_color_visited="*secondary_800",
    )


def launch_kwargs() -> dict:
    """Arguments for demo.launch shared by app.py and the tests (theme, CSS, error display)."""
    return dict(
        theme=theme(),
        css_paths=[ASSETS / "style.css"],
        js=(ASSETS / "page.js").read_text(encoding="utf-8"),
        show_error=True,
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        allowed_paths=[],
        i18n=GRADIO_MISSING_TEXTS,
    )
