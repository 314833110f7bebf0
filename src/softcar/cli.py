"""The ``softcar`` command line: fit, query, eval and demo."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help=(
        "softcar: a frozen small language model + trainable soft-embedding adapter + classifier head, "
        "used as a retriever."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or info logs.")]


def _setup(quiet: bool) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _load_corpus(data: Path):
    from softcar.data import BeirDataset, load_beir, load_jsonl_documents

    if data.is_dir():
        return load_beir(data)
    return BeirDataset(corpus=load_jsonl_documents(data), queries={})


@app.command()
def fit(
    data: Annotated[
        Path, typer.Argument(help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/) or a JSONL file of documents.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the checkpoint to (replaced atomically).")],
    encoder: Annotated[str | None, typer.Option(help="Local model folder; default: packaged all-MiniLM-L6-v2.")] = None,
    adapter: Annotated[str, typer.Option(help="'linear' or 'mlp'.")] = "linear",
    pooling: Annotated[str, typer.Option(help="'auto', 'mean', 'last' or 'cls'.")] = "auto",
    epochs: Annotated[
        int,
        typer.Option(
            help=(
                "Training epochs (0 = no training: head rows are the documents' embeddings; question rows "
                "and BM25 fusion still apply)."
            )
        ),
    ] = 4,
    split: Annotated[str, typer.Option(help="qrels split used as labelled training pairs, if present.")] = "train",
    quiet: Quiet = False,
) -> None:
    """Train a ClassifierRetriever on DATA's documents (and its train split's questions, if any)."""
    _setup(quiet)
    from softcar import ClassifierRetriever, TrainConfig
    from softcar.errors import SoftcarError

    try:
        dataset = _load_corpus(data)
        pairs = dataset.training_pairs(split) if split in dataset.qrels else None
        retriever = ClassifierRetriever(
            encoder,
            adapter=adapter,  # type: ignore[arg-type]  # validated by RetrieverConfig
            pooling=pooling,  # type: ignore[arg-type]
            config=TrainConfig(epochs=epochs, show_progress=not quiet),
        )
        retriever.fit(dataset.corpus, queries=pairs)
        retriever.save(out)
    except (SoftcarError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"saved {len(dataset.corpus)} documents ({len(pairs or [])} labelled pairs) to {out}")


@app.command()
def query(
    model: Annotated[Path, typer.Argument(help="A checkpoint folder written by 'softcar fit' (any retriever kind).")],
    text: Annotated[str, typer.Argument(help="The question.")],
    k: Annotated[int, typer.Option("-k", help="How many documents.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    quiet: Quiet = True,
) -> None:
    """Print the top-k documents for TEXT."""
    _setup(quiet)
    from softcar import load_retriever
    from softcar.errors import SoftcarError

    try:
        hits = load_retriever(model).retrieve(text, k=k)
    except (SoftcarError, ValueError, TypeError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(
            json.dumps([{"id": h.document.id, "score": h.score, "text": h.document.text} for h in hits], indent=2)
        )
        return
    for rank, hit in enumerate(hits, 1):
        snippet = " ".join(hit.document.text.split())[:160]
        typer.echo(f"{rank:>2}. [{hit.score:.3f}] {hit.document.id}: {snippet}")


@app.command("eval")
def eval_(
    model: Annotated[
        str,
        typer.Argument(help="Checkpoint folder, or 'bm25' / 'inner-product' to build that baseline on DATA's corpus."),
    ],
    data: Annotated[Path, typer.Argument(help="BEIR folder with queries and qrels.")],
    split: Annotated[str, typer.Option(help="qrels split to evaluate on.")] = "test",
    json_out: Annotated[Path | None, typer.Option("--json-out", help="Also write the metrics JSON here.")] = None,
    quiet: Quiet = False,
) -> None:
    """Recall@1/5/10, MRR@10, nDCG@10 and query latency of MODEL on DATA's SPLIT."""
    _setup(quiet)
    from softcar import BaseRetriever, BM25Retriever, InnerProductRetriever, load_retriever
    from softcar.data import load_beir
    from softcar.errors import SoftcarError
    from softcar.evaluation import evaluate, query_latency
    from softcar.report import format_table

    try:
        dataset = load_beir(data)
        queries, qrels = dataset.split(split)
        retriever: BaseRetriever
        if model == "bm25":
            retriever = BM25Retriever().fit(dataset.corpus)
        elif model == "inner-product":
            retriever = InnerProductRetriever().fit(dataset.corpus)
        else:
            retriever = load_retriever(model)
        metrics = evaluate(retriever, queries, qrels)
        metrics.update(query_latency(retriever, list(queries.values())[:50]))
    except (SoftcarError, ValueError) as exc:
        _fail(str(exc))
    result = {"model": model, "data": str(data), "split": split, "queries": len(queries), **metrics}
    typer.echo(format_table([{"retriever": model, **metrics}]))
    typer.echo(json.dumps(result))
    if json_out:
        json_out.write_text(json.dumps(result, indent=2))


@app.command()
def demo(
    data: Annotated[
        Path | None,
        typer.Option(help="BEIR folder with 'train' and 'test' splits; default: the packaged chatterbot_qa set."),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 3,
    json_out: Annotated[Path | None, typer.Option("--json-out", help="Also write the results JSON here.")] = None,
    quiet: Quiet = False,
) -> None:
    """The main job: fit softcar on a real Q&A corpus and compare it with BM25 and frozen search."""
    _setup(quiet)
    from softcar.demo import run_demo

    result = run_demo(data, epochs=epochs, show_progress=not quiet, echo=typer.echo)
    if json_out:
        json_out.write_text(json.dumps(result, indent=2))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
