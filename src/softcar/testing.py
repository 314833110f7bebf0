"""Helpers for fast tests: tiny randomly initialised models built in-process (no weights)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaModel, PreTrainedModel

from softcar.encoder import default_encoder_path


def make_tiny_encoder(
    path: str | os.PathLike[str],
    kind: Literal["bert", "llama"] = "bert",
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
) -> str:
    """Save a tiny random BERT (encoder) or Llama (decoder-only) model + tokenizer to ``path``.

    The tokenizer is all-MiniLM-L6-v2's WordPiece tokenizer from the packaged model, so text
    is tokenised realistically; the network is a few hundred thousand random parameters.
    """
    torch.manual_seed(seed)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path(), local_files_only=True)
    common: dict[str, Any] = dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=512,
    )
    model: PreTrainedModel
    if kind == "bert":
        model = BertModel(BertConfig(**common))
    elif kind == "llama":
        model = LlamaModel(LlamaConfig(**common, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id))
    else:
        raise ValueError(f"unknown kind {kind!r}")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
