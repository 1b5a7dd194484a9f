"""1 · Model: the model picker, its Load button and its facts; and what a model changes elsewhere on the page (the
layer strips, the layer and head pickers, the length and window ranges): :func:`model_updates`."""

from __future__ import annotations

import html

import gradio as gr

from swaa_core.engine.config import SWAAConfig
from swaa_core.models.registry import DEFAULT_MODEL, list_models

from .. import texts
from ..errors import error_message
from ..model_service import HUB, native_windows, num_layers
from ..prompts import LENGTH_HEADROOM
from ..state import Settings, Strategy
from . import strategy as strategy_panel


def model_choices() -> list[tuple[str, str]]:
    return [(entry.title, entry.name) for entry in list_models()]


def layout(ui, d: Settings) -> None:
    with gr.Accordion("1 · Model", open=True):
        ui.model = gr.Dropdown(
            choices=model_choices(), value=d.model, allow_custom_value=True, label="Model", info=texts.MODEL_INFO,
            elem_id="swaa-model",
        )  # fmt: skip
        ui.load_model = gr.Button("Load model", size="sm")
        ui.model_facts = gr.Markdown("Loading the embedded model…", elem_id="swaa-facts")


def model_facts(loaded) -> str:
    info = loaded.info
    thinking = (
        "has a thinking mode (CoT uses it)" if info.has_thinking_mode else "no thinking mode (CoT adds an instruction)"
    )
    context = f"{info.context_length:,}-token context" if info.context_length else "unknown context length"
    facts = [
        f"**{info.num_layers}** layers",
        f"**{info.num_heads}** query / **{info.num_kv_heads}** KV heads, {info.head_dim} wide",
        context,
        thinking,
        f"{info.num_parameters / 1e6:,.0f} M parameters, {info.dtype} on {info.device}",
    ]
    facts += [f"native sliding window {w} in {len(layers)} layers" for w, layers in native_windows(loaded).items()]
    items = "\n".join(f"- {fact}" for fact in facts)
    return f"**{html.escape(loaded.name)}** · {info.architecture}\n\n{items}"


def outputs(ui) -> list:
    """Every widget :func:`model_updates` may change."""
    names = ("active_model", "model_facts", "layer", "head", "length", *strategy_panel.STRATEGY)
    return [getattr(ui, name) for name in names]


def model_updates(ui, loaded, s: Strategy, opened: Settings | None = None) -> dict:
    """Everything that depends on the model: the layer strips keep their meaning on a model with other layers (a
    pattern is re-applied, chosen layers beyond the model are dropped). When the page is ``opened`` with settings
    (``s`` is theirs), the length slider and every strategy widget take their values too."""
    n, limit, longest = _limits(loaded)
    layers = [(str(i), i) for i in range(n)]
    heads = [("mean of heads", -1)] + [(f"head {h}", h) for h in range(loaded.info.num_heads)]
    fa = (
        SWAAConfig.fa_layers(s.fa_layers_mode, n) if s.fa_layers_mode != "custom" else [i for i in s.fa_layers if i < n]
    )
    fad = [i for i in s.fa_decode_layers if i < n]
    out = {
        ui.active_model: loaded.name,
        ui.model_facts: model_facts(loaded),
        ui.layer: gr.Slider(maximum=n - 1),
        ui.head: gr.Dropdown(choices=heads, value=-1),
        ui.length: gr.Slider(maximum=longest),
        ui.window: gr.Slider(maximum=limit),
        ui.fa_layers: gr.CheckboxGroup(choices=layers, value=fa),
        ui.fa_decode_layers: gr.CheckboxGroup(choices=layers, value=fad, visible=s.fa_decode_mode == "layers"),
    }
    if opened is not None:
        out |= {
            ui.window: gr.Slider(maximum=limit, value=min(s.window, limit)),
            ui.length: gr.Slider(maximum=longest, value=min(int(opened.length), longest)),
            ui.sinks: s.sinks,
            ui.fa_layers_mode: s.fa_layers_mode,
            ui.fa_decode_mode: s.fa_decode_mode,
        }
    return out


def _limits(loaded) -> tuple[int, int, int]:
    """(layers, context in tokens, longest prompt the length slider offers) of ``loaded``: what the widgets and a
    link's values are fitted to."""
    limit = loaded.info.context_length or 8192
    return num_layers(loaded), limit, limit - LENGTH_HEADROOM


def link_notes(loaded, opened: Settings) -> list[str]:
    """What a shared link asked that ``loaded`` cannot take, each as :func:`model_updates` fits it to the model
    (the length and window sliders' maxima, its layers), so that nothing from the link changes without a word."""
    n, limit, longest = _limits(loaded)
    s, notes = opened.strategy, []
    if int(opened.length) > longest:
        notes.append(f"The link's length of {int(opened.length):,} tokens is beyond the longest prompt {loaded.name} "
                     f"takes here ({longest:,}): the length is set to {longest:,}.")  # fmt: skip
    if s.window > limit:
        notes.append(f"The link's window of {s.window:,} tokens is beyond {loaded.name}'s context ({limit:,}): the "
                     f"window is set to {limit:,}.")  # fmt: skip
    for what, layers, used in (("FA layers", s.fa_layers, s.fa_layers_mode == "custom"),
                               ("FA decode layers", s.fa_decode_layers, s.fa_decode_mode == "layers")):  # fmt: skip
        beyond = [i for i in layers if i >= n]
        if used and beyond:
            notes.append(f"The link's {what} {', '.join(map(str, beyond))} are beyond {loaded.name}'s {n} layers "
                         f"(0-{n - 1}) and were left out.")  # fmt: skip
    return notes


def load_model(ui, name: str, active_model, strategy: Strategy) -> dict:
    """The Load button: the new model's facts and controls, or on failure a toast, the dropdown back on the model
    still in use and every other control as it was."""
    name = (name or "").strip()
    try:
        if not name:
            raise ValueError("Choose a model, or type a Hugging Face Hub id (org/name) or a local folder.")
        loaded = HUB.get(name)
    except Exception as e:  # noqa: BLE001 - the page stays on the model it had
        keep = active_model or DEFAULT_MODEL
        gr.Warning(f"{error_message(e).rstrip('.')}. Still using {keep}.")
        return {ui.model: keep}
    gr.Info(f"{loaded.name} is ready.")
    return {ui.model: name, **model_updates(ui, loaded, strategy)}


def wire(ui, events):
    """The Load button; returns its event (the page refreshes what depends on the model after it)."""
    return events.on(
        ui.load_model.click, load_model, [ui.model, ui.active_model, strategy_panel.strategy_group(ui)],
        [ui.model, *outputs(ui)], concurrency_id="load", concurrency_limit=1, show_progress="minimal",
    )  # fmt: skip
