"""Unlabelled training queries drawn from the documents themselves.

Classifier-as-retriever needs (text, document) examples. With no labelled queries we use
sentences and random word spans of each document: they are in the domain's vocabulary and
each one has a known source document, which is exactly the label the head predicts.
"""

from __future__ import annotations

import random
import re

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    """Split text into sentences on end punctuation (good enough for training spans)."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(text) if s.strip()]


def pseudo_queries(
    text: str,
    count: int,
    rng: random.Random,
    min_words: int = 4,
    max_words: int = 16,
) -> list[str]:
    """Draw ``count`` pseudo-queries from ``text``: whole short sentences or random word spans.

    Short documents yield their whole text (possibly repeated) so that every document gets the
    same number of examples and the head is not biased toward long documents.
    """
    if count <= 0:
        return []
    words = text.split()
    if len(words) <= min_words:
        return [text.strip()] * count
    candidates = [s for s in sentences(text) if min_words <= len(s.split()) <= max_words]
    out: list[str] = []
    for i in range(count):
        if candidates and i % 2 == 0:
            out.append(rng.choice(candidates))
            continue
        length = rng.randint(min_words, min(max_words, len(words)))
        start = rng.randint(0, len(words) - length)
        out.append(" ".join(words[start : start + length]))
    return out
