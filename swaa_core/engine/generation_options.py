"""Which generation options the fixed-buffer decoder applies, which it refuses, and the ``generate`` call that
builds everything it applies with transformers' own machinery.

The decoder never re-implements an option. It runs as the decoding loop of transformers' own ``generate``
(``generate(custom_generate=<callable>)``, public since transformers 4.56 and the same in 5.17 and 5.23): ``generate``
merges the call's keywords, its ``generation_config`` and the model's (``_prepare_generation_config``), prepares the
special tokens, the lengths, the rows of ``num_return_sequences``, the logits processors and warpers
(``_get_logits_processor``) and the stopping criteria (``_get_stopping_criteria``), then hands them to the loop in
:mod:`swaa_core.engine.fast_decode`, which applies them exactly as ``GenerationMixin._sample`` does.

What the loop cannot honour (another decoding loop, outputs it does not produce, a cache it does not build) is
refused by name before anything runs, wherever the option comes from: every field of ``GenerationConfig`` is in one
of :data:`APPLIED`, :data:`INERT` or :data:`REFUSED`, and a field a newer transformers adds, in none of them, is
refused while it holds a non-default value."""

from __future__ import annotations

import copy
import math

from transformers import GenerationConfig
from transformers.generation.stopping_criteria import StoppingCriteriaList, StopStringCriteria

# Applied by transformers' own steps before or inside the loop: lengths (_prepare_generated_length, MaxLengthCriteria),
# special tokens (_prepare_special_tokens), warpers and processors (_get_logits_processor), stopping criteria
# (_get_stopping_criteria), rows (_expand_inputs_for_generation), and the outputs the loop returns as _sample does.
APPLIED = frozenset({
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "max_time", "stop_strings", "do_sample",
    "temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff",
    "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "renormalize_logits", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "sequence_bias",
    "watermarking_config", "num_return_sequences", "output_scores", "output_logits", "return_dict_in_generate",
    "pad_token_id", "bos_token_id", "eos_token_id", "cache_implementation", "prefill_chunk_size",
    "disable_compile",
})  # fmt: skip

# Fields that change nothing in greedy or sampled decoding of a decoder-only model, in generate as here: beam-search
# scoring, assistant tuning without an assistant, encoder-decoder start tokens, bookkeeping.
INERT = frozenset({
    "early_stopping", "length_penalty", "low_memory", "decoder_start_token_id", "num_assistant_tokens",
    "num_assistant_tokens_schedule", "assistant_confidence_threshold", "max_matching_ngram_size",
    "assistant_lookbehind", "target_lookbehind", "assistant_ensemble_weight", "speculation_type",
    "_from_model_config", "transformers_version",
})  # fmt: skip

_OTHER_LOOP = "needs another decoding loop than greedy / sampled decoding"
REFUSED = {
    "num_beams": "beam search " + _OTHER_LOOP,
    "num_beam_groups": "group beam search " + _OTHER_LOOP,
    "diversity_penalty": "group beam search " + _OTHER_LOOP,
    "constraints": "constrained beam search " + _OTHER_LOOP,
    "force_words_ids": "constrained beam search " + _OTHER_LOOP,
    "penalty_alpha": "contrastive search " + _OTHER_LOOP,
    "dola_layers": "DoLa decoding " + _OTHER_LOOP,
    "use_mtp": "multi-token-prediction drafts (assisted decoding) " + _OTHER_LOOP,
    "prompt_lookup_num_tokens": "prompt-lookup drafts (assisted decoding) " + _OTHER_LOOP,
    "assistant_early_exit": "early-exit drafts (assisted decoding) " + _OTHER_LOOP,
    "is_assistant": "an assistant's generate call rolls its cache back between drafts",
    "guidance_scale": "classifier-free guidance runs a second forward per step",
    "token_healing": "token healing rewrites the prompt with a tokenizer generate does not hand to this path",
    "use_cache": "this path decodes from its cache; without one generate recomputes the whole sequence per token",
    "output_attentions": "a captured decode step returns no attention maps",
    "output_hidden_states": "a captured decode step returns no hidden states",
    "cache_config": "it configures a cache this path does not build",
    "max_cache_len": "this path sizes its buffers to the prompt plus max_new_tokens",
    "compile_config": "transformers' automatic compilation is not this path's decode step",
    "continuous_batching_config": "continuous batching is another generation loop",
}
# The cache implementations this path serves (the one it builds is its own fixed-buffer cache).
SERVED_CACHES = (None, "static", "dynamic")
# Arguments of generate itself (not generation-config fields) this path cannot honour.
REFUSED_ARGUMENTS = {
    "assistant_model": "assisted decoding " + _OTHER_LOOP,
    "assistant_tokenizer": "assisted decoding " + _OTHER_LOOP,
    "negative_prompt_ids": "classifier-free guidance runs a second forward per step",
    "negative_prompt_attention_mask": "classifier-free guidance runs a second forward per step",
    "custom_generate": "this path is itself generate's decoding loop",
    "synced_gpus": "this loop does not keep several processes in step",
    "past_key_values": "this path prefills the prompt into a cache of its own",
    "inputs_embeds": "this path feeds token ids to its captured step",
}
# Model keyword arguments generate prepares for every loop; anything else would have to reach each forward.
MODEL_KWARGS = frozenset({"attention_mask", "position_ids", "past_key_values", "use_cache", "logits_to_keep"})


def defaults() -> dict:
    """Each field's value when nobody set it: transformers' global defaults, else None, and the values of refused
    fields at which generate runs greedy or sampled decoding unchanged."""
    fields = {k: None for k in GenerationConfig().to_dict()}
    return {**fields, **GenerationConfig._get_default_generation_params(), "guidance_scale": 1.0, "penalty_alpha": 0.0}


def _is_default(name: str, value, default) -> bool:
    if name == "use_cache":
        return value is None or bool(value)
    if value is None or value is False or value == default:  # False switches nothing on in any other field
        return True
    return name in ("bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "sequence_bias") and not value


def refused_fields(config: GenerationConfig) -> list[str]:
    """``name=value (why)`` for each field of a merged config that this path refuses."""
    given = defaults()
    found = []
    for name, value in config.to_dict().items():
        if _is_default(name, value, given.get(name)):
            continue
        if name == "cache_implementation":
            if value in SERVED_CACHES:
                continue
            why = "this path builds its own fixed-buffer cache (cache_implementation='static')"
        elif name in APPLIED or name in INERT:
            continue
        else:
            why = REFUSED.get(name, "this transformers field is not yet classified for the fixed-buffer path")
        found.append(f"{name}={value!r} ({why})" if isinstance(value, (bool, int, float, str)) else f"{name} ({why})")
    return found


def _wrapper_inputs(model) -> list[str]:
    """A wrapper that adds inputs of its own (peft prompt learning: prompt, prefix or p-tuning, whose virtual tokens
    enter through its ``prepare_inputs_for_generation``, set on the wrapped model while peft's ``generate`` runs):
    this path's steps take token ids only, so those inputs would be dropped without a word."""
    config = getattr(model, "active_peft_config", None)
    if getattr(config, "is_prompt_learning", False):
        return [f"a peft {config.peft_type.value} adapter (its virtual tokens enter through peft's input preparation)"]
    own = vars(model).get("prepare_inputs_for_generation")
    if own is not None and getattr(own, "__func__", None) is not type(model).prepare_inputs_for_generation:
        return ["a model whose prepare_inputs_for_generation a wrapper replaced (peft prompt learning adds virtual "
                "tokens there)"]  # fmt: skip
    return []


def refuse(found: list[str]) -> None:
    if found:
        raise ValueError(
            "SWAA's fixed-buffer decoder (fast_generate, generate(..., cache_implementation='static')) does not take: "
            f"{'; '.join(found)}. Drop cache_implementation='static' to use transformers' generate with the "
            "dynamic SWAA cache."
        )


# generate's own arguments beside the generation options and model inputs.
GENERATE_ARGUMENTS = frozenset({"logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "streamer",
                                "tokenizer", "trust_remote_code"}) | frozenset(REFUSED_ARGUMENTS)  # fmt: skip


def merged_config(model, generation_config: GenerationConfig | None, kwargs: dict) -> tuple[GenerationConfig, dict]:
    """(the generation config one ``generate`` call runs with, its model keyword arguments), merged by transformers'
    own rule (``_prepare_generation_config``: the call's keywords over the passed config over the model's, whose
    values also fill what a passed config left unset). ``kwargs``: the call's keyword arguments; generate's own
    arguments and the inputs among them are left out."""
    skip = GENERATE_ARGUMENTS | {"inputs", "input_ids", "generation_config"}
    options = {k: v for k, v in kwargs.items() if k not in skip}
    return model._prepare_generation_config(generation_config, **options)  # it copies the config first


def refusals(model, generation_config: GenerationConfig | None, kwargs: dict) -> tuple[list[str], GenerationConfig]:
    """(``name (why)`` for each option of one call this path refuses, the call's merged generation config):
    :func:`prepare`'s check without raising. ``kwargs`` as there."""
    found = [
        f"{k} ({why})" for k, why in REFUSED_ARGUMENTS.items() if kwargs.get(k) is not None and kwargs[k] is not False
    ]
    merged, model_kwargs = merged_config(model, generation_config, kwargs)
    found += refused_fields(merged)
    found += [
        f"{k} (a model input this path does not pass to its steps)" for k in model_kwargs if k not in MODEL_KWARGS
    ]
    if model_kwargs.get("position_ids") is not None:  # given ones: generate continues them, this path cannot
        found.append("position_ids (generate continues positions given to it; this path takes them from the mask)")
    found += _wrapper_inputs(model)
    if not math.isfinite(merged.max_length or 0) or not math.isfinite(merged.max_new_tokens or 0):
        found.append("an unbounded length (max_new_tokens or max_length inf: this path sizes its buffers to the "
                     "prompt plus max_new_tokens)")  # fmt: skip
    if merged.stop_strings is not None and (
        kwargs.get("tokenizer") is None or model.generation_config.stop_strings is not None
    ):
        found.append(
            "stop_strings (this path needs the model's tokenizer passed as tokenizer= to the call, and stop_strings "
            "set in the call or its generation_config, not in model.generation_config)"
        )
    return found, merged


def prepare(model, generation_config: GenerationConfig | None, kwargs: dict) -> tuple[GenerationConfig | None, dict]:
    """Check one call's options and return the (generation_config, keyword arguments) to hand to ``generate``.

    ``kwargs``: the call's other ``generate`` keyword arguments (generation options, model inputs such as
    ``attention_mask``, ``tokenizer``, ``logits_processor``, ``stopping_criteria``, ...). Raises ValueError naming
    every option refused, whether it came from the keywords, ``generation_config`` or ``model.generation_config``.
    The options are handed on unchanged, except two that ``generate`` would act on before the loop:
    ``cache_implementation`` (becomes "dynamic": generate must not allocate a static cache beside this path's buffers)
    and ``stop_strings`` (generate does not hand a custom loop the tokenizer they need, so the same
    ``StopStringCriteria`` goes with the caller's stopping criteria instead)."""
    kwargs = dict(kwargs)
    found, merged = refusals(model, generation_config, kwargs)
    refuse(found)
    overrides = {"cache_implementation": "dynamic"}
    if merged.stop_strings is not None:
        tokenizer = kwargs.pop("tokenizer")
        criteria = StoppingCriteriaList(kwargs.get("stopping_criteria") or [])
        # a caller's own of the same type replaces it, as generate's merge does (a subclass runs beside it)
        if not any(type(c) is StopStringCriteria for c in criteria):
            criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=merged.stop_strings))
        kwargs["stopping_criteria"] = criteria
        overrides["stop_strings"] = None
    if generation_config is not None:  # its own values outrank the model's; keywords beside it would warn
        generation_config = copy.deepcopy(generation_config)
        for name, value in overrides.items():
            setattr(generation_config, name, value)
        overrides = {k: v for k, v in overrides.items() if k in kwargs}
    return generation_config, {**kwargs, **overrides}
