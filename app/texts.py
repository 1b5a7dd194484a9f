"""Every sentence the app shows to people: control explanations, the guided tour, help notes.

Kept apart from the layout so teachers can edit the wording without touching code.
"""

from __future__ import annotations

from dataclasses import dataclass

TITLE = "SWAA Recipe Explorer"

INTRO = """\
**Sliding window attention (SWA)** lets each token look only at the last *W* tokens, so long prompts get cheaper
(O(n·W) instead of O(n²)) and the KV cache stops growing. Switch it on in a model trained with full attention and
long-context answers collapse. The paper
[*Sliding Window Attention Adaptation*](https://arxiv.org/abs/2512.10411) (Yu et al., 2025) offers five remedies
that need no pretraining. Pick a model, toggle the remedies, and compare against full attention on the same prompt.
"""

# ---------------------------------------------------------------- control explanations
# One short line under each control (shown as `info=`); what more there is to say is in the *_DETAILS texts, behind
# an info toggle under the panel (app.widgets.details), and in the guided tour.
WINDOW_INFO = "Recent tokens each prompt token sees. Smaller is faster, but early facts drop out of sight."
SINKS_INFO = "The first K tokens stay visible to every token (\u201cattention sinks\u201d)."
FA_LAYERS_INFO = "Layers that keep full attention, so they still reach distant facts."
FA_LAYERS_STRIP_INFO = "Click to toggle: orange = full attention (FA), blue = sliding window (SWA)."
FA_DECODE_INFO = "Generated tokens see the whole cache; SWA only while reading the prompt."
FA_DECODE_STRIP_INFO = "Orange: these layers' generated tokens see the whole cache."
COT_INFO = "The model reasons before it answers."
DECODE_PATH_INFO = "How timed runs decode: fixed buffers (a CUDA graph on a GPU), eager, or auto. Same answers."
ADAPTER_INFO = "A LoRA adapter trained with SWA switched on (the paper's fifth remedy)."
RECIPE_INFO = "The paper's presets: choosing one sets every control below at once."
MAX_NEW_TOKENS_INFO = "Longest answer per column. Speed is timed over the first 32 tokens in every column."
SEED_INFO = "Same seed, same task text and results."
MODEL_INFO = "A recommended model, a Hugging Face Hub id (org/name) or a local folder."
TASK_INFO = "Long-context tasks with a known answer, scored correct or incorrect."
LENGTH_INFO = "Longer than the window W means SWA hides part of the task."
DEPTH_INFO = "Where the fact sits: 0 = start of the prompt, 1 = end."
QUESTION_INFO = "Asked after the document. Empty: the text's last sentence is the question."
ANSWER_INFO = "Optional: a column is correct when its answer contains it."

DETAILS_LABEL = "More about these controls"
STRATEGY_DETAILS = """\
- **Window size W**: how many recent tokens each prompt token can see, itself included. Smaller means faster and
  less memory, but facts further back become invisible.
- **Sink tokens K**: the first K tokens stay visible to everyone. Models dump spare attention there; keeping them
  stabilises SWA.
- **Full-attention layers**: the paper's \u201c1/2\u201d keeps full attention in the odd layers 1, 3, 5, \u2026;
  \u201c1/4\u201d in layers 3, 7, 11, \u2026 Those layers can copy a distant fact forward.
- **Full-attention decode**: SWA only while reading the prompt; every generated token attends to the whole cache.
  It costs decode time and memory and recovers much accuracy.
- **Chain of thought**: the model's thinking template where it has one, otherwise a \u201cthink step by step\u201d
  instruction. Reasoning tokens are decode tokens, so with FA decode they see everything.
- **Decode path**: fixed-buffer moves the cache into fixed buffers (sinks + W slots per sliding layer); on a GPU
  one decode step is captured in a CUDA graph and replayed per token (the first call pays for the capture, reported
  as setup); on a CPU the same buffers run step by step. Eager: transformers' generate with the growing SWAA cache.
  Auto: fixed-buffer on a GPU, the path measured faster on a CPU. Same answers on every path. Every column of a
  comparison, the recipe sweep and the decode-speed curve use the same path, so their timings stay like for like;
  each result says which path ran and why.
- **LoRA adapter**: an adapter remembers the SWAA config it was trained for.
- **Config JSON**: the current config in the upstream paper code's format (`swaa_config`). Copy it into their
  scripts, or save it (*Download config JSON* under *Share & export*) and run it from the command line:
  `swaa run --config swaa_config.json "your prompt"`
"""
PROMPT_DETAILS = """\
- **Length**: the task's length in tokens. The chat template and the new tokens must fit in the model's context
  beside it.
- **Question**: leave it empty when the text ends with its question: that last sentence is then used.
- **Max new tokens**: for a fair speed comparison every column is timed over its first 32 tokens: a shorter answer
  is followed by a few unseen tokens (about a second or two per column on a CPU).
"""
CONFIG_JSON_HELP = "The config in the upstream paper code's format: copy it, or save it under *Share & export*."
METRICS_HELP = """\
- *Prompt tokens* count what the model reads, chat template included.
- *P(expected answer)* is how likely the model finds the expected answer when it is fed in after the prompt: a
  graded score beside the correct / incorrect verdict, which only checks the generated text.
- To save a plot as PNG, use the camera button in its toolbar (Plotly draws the PNG in your browser, nothing is
  sent to the server).
"""
METRICS_LABEL = "About these numbers and plots"
SHARE_HELP = "This link opens the app with the same model, strategy and prompt settings."
COLUMNS_HELP = (
    "Full attention always runs first as the baseline. The current config runs next; pin it to keep it as a column "
    "and try another one beside it (up to {max_extra} pinned)."
)
ATTENTION_HELP = (
    "Attention weights of one layer, full attention (left) vs the current SWAA config (right), on the prompt "
    "itself. Long prompts are pooled into blocks (the maximum weight in each block is shown, so thin stripes "
    "stay visible). Dashed lines: the window's edge; shaded columns: sink tokens; green: where the fact sits."
)
MASK_HELP = (
    "What each token may look at, per column config, in the chosen layer. Rows are queries (the prompt, then "
    "the generated tokens below the line), columns are keys. Blue = visible."
)
SWEEP_HELP = (
    "Runs many samples under every selected recipe and draws the paper's main figure live: accuracy against time "
    "per sample (the prompt plus the same 32 generated tokens for every recipe, so answers of different lengths do "
    "not skew it). On a CPU keep it small; it can be stopped at any time and keeps what finished."
)
HEATMAP_HELP = (
    "Needle retrieval over prompt length x fact depth, full attention vs the current config. Each cell is the "
    "share of samples answered correctly."
)
DECODE_SPEED_HELP = (
    "**Decode speed vs context.** How fast each ticked recipe generates once the prompt is read, at several prompt "
    "lengths."
)
DECODE_SPEED_DETAILS = (
    "Random tokens; each point is one prefill, then 32 decode steps timed. Full attention reads its whole, growing "
    "cache for every new token; a sliding layer without FA decode keeps only sinks + W keys, so its speed should "
    "stay flat. Long lengths on a CPU take a while (the prefill dominates); Stop keeps finished points."
)
CPU_NOTE = (
    "The default demo (a short prompt, a few new tokens) takes well under a minute. Long prompts "
    "take longer; the Stop button keeps whatever finished."
)


# ---------------------------------------------------------------- guided tour
@dataclass(frozen=True)
class TourStep:
    title: str
    body: str
    # What "Try it" applies: a swaa_core recipe name (window sized to the prompt) and the CoT switch.
    settings: dict


TOUR: tuple[TourStep, ...] = (
    TourStep(
        "1 · The problem: plain sliding window",
        "Every prompt token sees only the last *W* tokens. A fact placed early in the prompt is outside the "
        "window of the question, so the model cannot retrieve it. Full attention (the baseline column) still can. "
        "Run it: the SWA column usually answers wrongly, but faster and with a smaller KV cache.",
        {"recipe": "swa", "cot": False},
    ),
    TourStep(
        "2 · SWA in prefill, full attention in decode",
        "Reading the prompt is where the O(n²) cost lives, so use SWA only there. Each *generated* token attends "
        "to the whole cache. The mask picture gains full rows at the bottom. On its own this helps little: the "
        "prompt's internal representations were already built without the distant fact.",
        {"recipe": "swa-fa-decode", "cot": False},
    ),
    TourStep(
        "3 · Sink tokens",
        "The first tokens soak up attention that has nowhere else to go (attention sinks). Keeping the first *K* "
        "tokens visible to every query (a vertical stripe in the mask) stops the model from drifting "
        "when the window cuts them off.",
        {"recipe": "swa-sinks-fa-decode", "cot": False},
    ),
    TourStep(
        "4 · Interleave full-attention layers",
        "Keep full attention in some layers, e.g. every second one (odd layers). Those layers can copy the "
        "distant fact forward; the others stay cheap. Look at the layer strip: ticked layers are FA. "
        "With FA decode and sinks this combination recovers most of the baseline.",
        {"recipe": "recommended", "cot": False},
    ),
    TourStep(
        "5 · Chain of thought",
        "Let the model reason before answering. Reasoning tokens are decode tokens, so under FA decode they "
        "read the whole prompt at full attention and can fetch what the prefill missed. It costs more "
        "generated tokens (raise *max new tokens*).",
        {"recipe": "recommended", "cot": True},
    ),
    TourStep(
        "6 · Fine-tuning with SWA switched on",
        "Finally, a light LoRA fine-tune with SWA active teaches the model to live with the window. The paper "
        "uses self-distillation: the targets are the full-attention model's own answers. Load an adapter in "
        "the strategy panel (train one with `swaa finetune`). The lesson of the paper: no single remedy "
        "suffices; combined, they recover most of full attention at a fraction of the cost.",
        {"recipe": "recommended", "cot": False},
    ),
)


def tour_markdown(index: int) -> str:
    step = TOUR[index]
    return f"### {step.title}\n\n{step.body}\n\n*Step {index + 1} of {len(TOUR)}.*"
