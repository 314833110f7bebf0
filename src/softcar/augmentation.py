"""Query augmentation for training batches: token dropout and word-order noise.

Real questions are shorter, longer and differently ordered than the spans and labelled questions
the head is trained on; perturbing the training queries (never the documents, never at query
time) is a cheap way to make the learnt scores less tied to exact wording.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


class QueryAugmenter:
    """Perturbs a padded batch (``input_ids``, ``attention_mask``) in place of a copy.

    ``token_dropout``: each token except the first and the last real one (CLS / SEP, BOS /
    the pooled last token) is masked out with this probability; a query that would keep
    nothing else is left whole. ``swap``: each adjacent pair of real tokens after
    the first is swapped with this probability. Seeded, so a run is reproducible.
    """

    def __init__(self, token_dropout: float = 0.0, swap: float = 0.0, seed: int = 0) -> None:
        if not (0 <= token_dropout < 1 and 0 <= swap < 1):
            raise ValueError(f"augmentation probabilities must be in [0, 1): {token_dropout=}, {swap=}")
        self.token_dropout = token_dropout
        self.swap = swap
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def active(self) -> bool:
        return self.token_dropout > 0 or self.swap > 0

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(batch)
        if not self.active:
            return out
        # On the CPU, with the CPU generator: the same draws (and the same augmented batch) on any
        # device; the batch goes back to where it came from.
        device = batch["input_ids"].device
        ids = batch["input_ids"].cpu().clone()
        mask = batch["attention_mask"].cpu().clone()
        real = mask.bool()
        if self.swap > 0 and ids.shape[1] > 2:
            # swap positions j and j+1 (both real, j >= 1); a token moves at most one step
            pick = torch.rand(ids.shape[0], ids.shape[1] - 2, generator=self.generator) < self.swap
            pick &= real[:, 1:-1] & real[:, 2:]
            for row, j in pick.nonzero().tolist():
                position = j + 1
                ids[row, position], ids[row, position + 1] = ids[row, position + 1].clone(), ids[row, position].clone()
        if self.token_dropout > 0 and ids.shape[1] > 1:
            drop = torch.rand(ids.shape, generator=self.generator) < self.token_dropout
            drop[:, 0] = False
            last = real.sum(dim=1) - 1
            drop[torch.arange(len(ids)), last] = False  # SEP / EOS, or the pooled last token
            kept = real & ~drop
            # a query left with only its first and last token keeps all of them
            empty = kept.sum(dim=1) <= torch.clamp(real.sum(dim=1), max=2)
            kept[empty] = real[empty]
            mask = kept.to(mask.dtype)
        out["input_ids"], out["attention_mask"] = ids.to(device), mask.to(device)
        return out
