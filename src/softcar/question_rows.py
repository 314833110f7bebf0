"""Question rows: every labelled or feedback question is remembered as a row tied to its document.

A document's score is the best of its own head row and its question rows (minus an offset
``b``): a confirmed answer is found again for that question, and its rewordings, before any
gradient step. Questions sit in *question* space, where similarities run higher than between a
question and a document, so without the offset they also attract questions about other
documents; :mod:`softcar.calibration` picks ``b`` on held-out feedback.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class QuestionRows:
    """Question vectors, their texts and their documents' head rows, capped per document."""

    def __init__(self, dim: int, max_per_document: int = 8, duplicate_similarity: float = 0.98) -> None:
        self.dim = dim
        self.max_per_document = max_per_document
        self.duplicate_similarity = duplicate_similarity
        self.texts: list[str] = []
        self.rows = torch.zeros(0, dtype=torch.long)
        self.vectors = torch.zeros(0, dim)

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, texts: Sequence[str], rows: Sequence[int], vectors: torch.Tensor) -> int:
        """Remember questions; near-duplicates of a row of the same document are skipped, and a
        document over its cap drops the row most redundant with its others. Returns rows kept."""
        added = 0
        for text, row, vector in zip(texts, rows, vectors.detach().cpu().float()):
            same = (self.rows == row).nonzero().flatten()
            if len(same) and float((self.vectors[same] @ vector).max()) >= self.duplicate_similarity:
                continue
            self.texts.append(text)
            self.rows = torch.cat([self.rows, torch.tensor([row])])
            self.vectors = torch.cat([self.vectors, vector[None]])
            added += 1
            if len(same) + 1 > self.max_per_document:
                self._drop_most_redundant(torch.cat([same, torch.tensor([len(self.texts) - 1])]))
        return added

    def _drop_most_redundant(self, indices: torch.Tensor) -> None:
        sims = self.vectors[indices] @ self.vectors[indices].T
        sims.fill_diagonal_(-2.0)
        victim = int(indices[int(sims.max(dim=1).values.argmax())])
        keep = [i for i in range(len(self.texts)) if i != victim]
        self.texts = [self.texts[i] for i in keep]
        self.rows = self.rows[keep]
        self.vectors = self.vectors[keep]

    def best_per_document(
        self, queries: torch.Tensor, num_documents: int, exclude: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[len(queries), num_documents]``: each document's best question-row similarity
        (``-inf`` where it has none). ``exclude[i]`` hides row ``exclude[i]`` from query ``i``
        (leave-one-out calibration)."""
        best = torch.full((len(queries), num_documents), float("-inf"), device=queries.device)
        if not len(self.texts):
            return best
        sims = queries @ self.vectors.to(queries).T
        if exclude is not None:
            sims[torch.arange(len(queries)), exclude.to(queries.device)] = float("-inf")
        index = self.rows.to(queries.device).expand(len(queries), -1)
        return best.scatter_reduce_(1, index, sims, reduce="amax")

    def state(self) -> dict[str, torch.Tensor]:
        return {"vectors": self.vectors, "rows": self.rows}

    def load_state(self, texts: list[str], state: dict[str, torch.Tensor]) -> None:
        vectors, rows = state["vectors"], state["rows"]
        if len(texts) != len(vectors) or len(rows) != len(vectors) or vectors.shape[1:] != (self.dim,):
            raise ValueError(
                f"question rows disagree: {len(texts)} texts, {tuple(vectors.shape)} vectors, {len(rows)} rows"
            )
        self.texts, self.vectors, self.rows = list(texts), vectors.float(), rows.long()
