"""Synthetic training questions from any generator (an LLM, a template, a doc2query model).

``fit(documents, query_generator=...)`` takes any callable ``text -> list[str]``. Generators fail
in every way a network service or a small model can: they raise, hang, or return junk. None of
that stops a fit: the document keeps its span pseudo-queries, the failures are counted and
logged, and only a generator that fails for *every* document is an error. Questions that do not
lead back to their own document under the frozen retriever (round-trip filtering) are dropped:
a question that frozen search cannot connect to its document is more often a generic or wrong
question than a hard one.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from softcar.errors import QueryGenerationError

logger = logging.getLogger(__name__)

QueryGenerator = Callable[[str], Sequence[str]]
"""``text -> questions`` a user might ask that the text answers."""

QUESTION_PROMPT = (
    "Write {count} different questions that a user could ask and that the following text answers. "
    "One question per line, no numbering, no other text.\n\nText:\n{text}\n\nQuestions:"
)
"""The prompt the framework adapters give a chat model / LLM (``{count}``, ``{text}``)."""

_NUMBERING = re.compile(r"^\s*(?:[-*•]|\d+[.)]|(?:question|q)\s*\d*\s*[:.)])\s*", re.IGNORECASE)
_NOT_A_QUESTION = re.compile(r"^\s*(?:answer\s*\d*\s*[:.)]|a\d*\s*:)", re.IGNORECASE)
"""Small models often answer their own questions ("Answer: ..."); those lines are not questions."""


def parse_questions(reply: str, limit: int = 8) -> list[str]:
    """Questions from an LLM's reply: one per line, bullets / numbering ("1.", "Q3:",
    "Question 2:") stripped, answers and junk dropped."""
    questions = []
    for line in reply.splitlines():
        if _NOT_A_QUESTION.match(line):
            continue
        text = _NUMBERING.sub("", line).strip().strip('"').strip()
        if 3 <= len(text.split()) <= 40 and text not in questions:
            questions.append(text)
    return questions[:limit]


@dataclass
class GenerationReport:
    """What happened per document (counts are logged by ``fit``)."""

    questions: dict[int, list[str]] = field(default_factory=dict)
    failed: int = 0
    timed_out: int = 0
    empty: int = 0

    @property
    def documents_with_questions(self) -> int:
        return sum(1 for q in self.questions.values() if q)


def _clean(result: object) -> list[str]:
    if isinstance(result, str) or not isinstance(result, Sequence):
        raise TypeError(f"expected a list of str, got {type(result).__name__}")
    return [q.strip() for q in result if isinstance(q, str) and q.strip()]


def _call(generator: QueryGenerator, text: str, timeout: float | None) -> object:
    """``generator(text)`` in a daemon thread: a hung call is abandoned, not waited for at exit."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = generator(text)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="softcar-query-generator", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"query generator took longer than {timeout}s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome.get("value")


def generate_questions(
    generator: QueryGenerator, texts: Sequence[str], *, timeout: float | None = 60.0
) -> GenerationReport:
    """Call ``generator`` on every text; failures, time-outs and junk are counted, never raised,
    unless no text at all got a question (``QueryGenerationError``)."""
    report = GenerationReport()
    for row, text in enumerate(tqdm(texts, desc="generating questions", leave=False, disable=len(texts) < 20)):
        try:
            questions = _clean(_call(generator, text, timeout))
        except TimeoutError:
            report.timed_out += 1
            continue
        except Exception as exc:  # noqa: BLE001 - any generator failure falls back to spans
            logger.debug("query generator failed on document %d: %s", row, exc)
            report.failed += 1
            continue
        if not questions:
            report.empty += 1
        report.questions[row] = questions
    if texts and report.documents_with_questions == 0:
        raise QueryGenerationError(
            f"the query generator produced no usable question for any of {len(texts)} documents "
            f"({report.failed} raised, {report.timed_out} timed out, {report.empty} returned nothing usable)"
        )
    logger.info(
        "query generation: %d/%d documents got questions (%d raised, %d timed out, %d empty)",
        report.documents_with_questions,
        len(texts),
        report.failed,
        report.timed_out,
        report.empty,
    )
    return report
