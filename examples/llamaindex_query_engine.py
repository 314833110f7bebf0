"""LlamaIndex: a RetrieverQueryEngine over softcar vs. a VectorStoreIndex over the same frozen model.

The data is converted to LlamaIndex's ``EmbeddingQAFinetuneDataset`` JSON (what
``generate_qa_embedding_pairs`` produces for embedding fine-tuning), softcar is trained from it,
and both retrievers are scored with LlamaIndex's own ``RetrieverEvaluator`` (hit rate, MRR at
top 10) on held-out questions. The baseline is a ``VectorStoreIndex`` whose ``BaseEmbedding`` is
the *same frozen* all-MiniLM-L6-v2 softcar adapts. Answers come from ``MockLLM`` (no model
download), so the interesting output is which sources each engine hands to the LLM.

Run (after ``bash scripts/install.sh``):  .venv/bin/python examples/llamaindex_query_engine.py [--data BEIR_FOLDER]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from example_data import load_data, parse_args
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import TextNode
from transformers import AutoModel, AutoTokenizer

from llama_index.retrievers.softcar import ClassifierRetriever, evaluate_retriever
from softcar import BeirDataset, TrainConfig, default_encoder_path

EVAL_K = 10
ENGINE_K = 3


class FrozenMiniLMEmbedding(BaseEmbedding):
    """all-MiniLM-L6-v2 as sentence-transformers runs it (mean pooling, unit norm), frozen.

    Loaded from the package softcar ships with; queries cut at 64 tokens, texts at 256, as in
    ``softcar.InnerProductRetriever``.
    """

    _tokenizer: Any = PrivateAttr()
    _model: Any = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(model_name="all-MiniLM-L6-v2 (frozen, packaged)", embed_batch_size=64, **kwargs)
        path = default_encoder_path()
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True).eval()

    @torch.no_grad()
    def _embed(self, texts: list[str], max_length: int) -> list[list[float]]:
        batch = self._tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        hidden = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).tolist()

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed([query], 64)[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed([text], 256)[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embed(texts, 256)


def qa_dataset(data: BeirDataset, split: str) -> dict[str, Any]:
    """A BEIR split as ``EmbeddingQAFinetuneDataset`` JSON: queries, corpus, relevant_docs."""
    queries, qrels = data.split(split) if split in data.qrels else ({}, {})
    return {
        "queries": queries,
        "corpus": {d.id: d.text for d in data.corpus},
        "relevant_docs": {q: [d for d, rel in docs.items() if rel > 0] for q, docs in qrels.items()},
        "mode": "text",
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])

    name, data = load_data(args.data)
    train, test = qa_dataset(data, "train"), qa_dataset(data, "test")
    print(
        f"{name}: {len(train['corpus'])} documents, {len(train['queries'])} training questions, "
        f"{len(test['queries'])} held-out test questions"
    )

    with tempfile.TemporaryDirectory() as tmp:
        # 1. The retriever a LlamaIndex app would otherwise use: VectorStoreIndex over frozen MiniLM.
        # Metadata kept out of the embedded text, so both retrievers see exactly the same text.
        nodes = [
            TextNode(id_=d.id, text=d.text, metadata=d.metadata, excluded_embed_metadata_keys=list(d.metadata))
            for d in data.corpus
        ]
        start = time.perf_counter()
        index = VectorStoreIndex(nodes, embed_model=FrozenMiniLMEmbedding())
        print(f"VectorStoreIndex (frozen MiniLM) built in {time.perf_counter() - start:.1f}s")

        # 2. softcar, trained from the EmbeddingQAFinetuneDataset JSON, persisted and reloaded.
        train_json = Path(tmp) / "train_dataset.json"
        train_json.write_text(json.dumps(train), encoding="utf-8")
        start = time.perf_counter()
        trained = ClassifierRetriever.from_finetune_dataset(
            train_json, similarity_top_k=EVAL_K, config=TrainConfig(epochs=args.epochs, show_progress=False)
        )
        print(f"softcar ClassifierRetriever fitted in {time.perf_counter() - start:.1f}s")
        trained.persist(Path(tmp) / "softcar-index")
        softcar_retriever = ClassifierRetriever.from_persist_dir(Path(tmp) / "softcar-index", similarity_top_k=EVAL_K)

    print(f"\nHeld-out questions ({len(test['queries'])}), RetrieverEvaluator at top {EVAL_K}:")
    for label, retriever in (
        ("VectorStoreIndex (frozen MiniLM)", index.as_retriever(similarity_top_k=EVAL_K)),
        ("softcar", softcar_retriever),
    ):
        scores = evaluate_retriever(retriever, test)
        print(f"  {label:34s} hit_rate={scores['hit_rate']:.3f}  mrr={scores['mrr']:.3f}")

    # 3. Query engines: the same RetrieverQueryEngine, only the retriever differs.
    engines = {
        "vector index": RetrieverQueryEngine.from_args(index.as_retriever(similarity_top_k=ENGINE_K), llm=MockLLM()),
        "softcar": RetrieverQueryEngine.from_args(
            ClassifierRetriever(softcar_retriever.retriever, similarity_top_k=ENGINE_K), llm=MockLLM()
        ),
    }
    for qid, question in list(test["queries"].items())[:3]:
        relevant = set(test["relevant_docs"][qid])
        print(f"\nQ: {question}   (relevant: {', '.join(sorted(relevant))})")
        for label, engine in engines.items():
            response = engine.query(question)
            marks = [
                f"{n.node.node_id}{'*' if n.node.node_id in relevant else ''} ({n.score:.2f})"
                for n in response.source_nodes
            ]
            print(f"  {label:12s} sources: {', '.join(marks)}")
            top = " ".join(response.source_nodes[0].node.get_content().split())[:140]
            print(f"  {'':12s} context the LLM saw first: {top}")


if __name__ == "__main__":
    main()
