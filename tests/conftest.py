"""Shared fixtures over the tiny random models and tokenizers of helpers/tiny_models.py (no downloads)."""

from __future__ import annotations

import os

import pytest
from helpers.tiny_models import FAMILIES, build_tiny_model, build_tiny_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def tiny_llama():
    return build_tiny_model("llama")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> str:
    """A tiny Llama and its BPE tokenizer saved as a model folder, as the CLI and load_model read one."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = build_tiny_tokenizer()
    build_tiny_model("llama", layers=4, vocab_size=len(tok), seed=5).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)
