"""RAG with LangChain: swap softcar's ClassifierRetriever in for a vector-store retriever.

Both retrievers sit in the same LCEL chain (retriever | prompt | local fake LLM | parser) over a
real question-answer corpus, and are scored on the same held-out questions (hit rate and MRR,
top 10). The vector store is LangChain's ``InMemoryVectorStore`` with an ``Embeddings`` over the
*same frozen* all-MiniLM-L6-v2 that softcar adapts, so the only difference is softcar's training.

Run (after ``bash scripts/install.sh``):  .venv/bin/python examples/langchain_rag.py [--data BEIR_FOLDER]
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from example_data import load_data, parse_args
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompt_values import PromptValue
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from transformers import AutoModel, AutoTokenizer

from langchain_softcar import ClassifierRetriever
from softcar import TrainConfig, default_encoder_path

EVAL_K = 10  # hit rate@10 and MRR@10, as LlamaIndex's RetrieverEvaluator would at top_k=10
CHAIN_K = 3


class FrozenMiniLMEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 as sentence-transformers runs it (mean pooling, unit norm), frozen.

    Loaded from the package softcar ships with, so the baseline needs no download. Queries are
    cut at 64 tokens and documents at 256, as in ``softcar.InnerProductRetriever``.
    """

    def __init__(self, batch_size: int = 64) -> None:
        path = default_encoder_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def _embed(self, texts: list[str], max_length: int) -> list[list[float]]:
        vectors = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vectors.extend(torch.nn.functional.normalize(pooled, dim=-1).tolist())
        return vectors

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._embed(texts, 256)

    def embed_query(self, text: str) -> list[float]:
        return self._embed([text], 64)[0]


def hit_rate_and_mrr(
    retriever: BaseRetriever, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, float]:
    """Same definitions as LlamaIndex's HitRate / MRR: any relevant doc in the top k; 1/rank of the first."""
    qids = list(queries)
    results = retriever.batch([queries[q] for q in qids])
    hits = mrr = 0.0
    for qid, docs in zip(qids, results, strict=True):
        relevant = {d for d, rel in qrels[qid].items() if rel > 0}
        rank = next((i for i, doc in enumerate(docs, 1) if doc.id in relevant), None)
        hits += rank is not None
        mrr += 1 / rank if rank else 0.0
    return {"hit_rate": hits / len(qids), "mrr": mrr / len(qids)}


def format_docs(docs: list[Document]) -> str:
    return "\n".join(f"[{doc.id}] {' '.join(doc.page_content.split())}" for doc in docs)


def extractive_llm(prompt: PromptValue) -> AIMessage:
    """A local stand-in for an LLM: it 'answers' with the first passage of its context."""
    text = prompt.to_string()
    context = text.split("Context:\n", 1)[1].split("\n\nQuestion:", 1)[0]
    return AIMessage(content=context.splitlines()[0][:160])


PROMPT = ChatPromptTemplate.from_messages(
    [("human", "Answer using the context.\nContext:\n{context}\n\nQuestion: {question}")]
)


def rag_chain(retriever: BaseRetriever) -> Any:
    """LangChain's "RAG with sources" recipe: returns {"question", "docs", "answer"}."""
    answer = (
        RunnableLambda(lambda x: {"context": format_docs(x["docs"]), "question": x["question"]})
        | PROMPT
        | RunnableLambda(extractive_llm)
        | StrOutputParser()
    )
    return RunnableParallel(docs=retriever, question=RunnablePassthrough()).assign(answer=answer)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])

    name, data = load_data(args.data)
    test_queries, test_qrels = data.split("test")
    train_pairs = data.training_pairs("train") if "train" in data.qrels else None
    documents = [Document(id=d.id, page_content=d.text, metadata=d.metadata) for d in data.corpus]
    print(
        f"{name}: {len(documents)} documents, {len(train_pairs or [])} training questions, "
        f"{len(test_queries)} held-out test questions"
    )

    # 1. The retriever a LangChain app would otherwise use: a vector store over frozen MiniLM.
    start = time.perf_counter()
    store = InMemoryVectorStore.from_documents(documents, FrozenMiniLMEmbeddings())
    vector_retriever = store.as_retriever(search_kwargs={"k": EVAL_K})
    print(f"InMemoryVectorStore (frozen MiniLM) built in {time.perf_counter() - start:.1f}s")

    # 2. softcar, swapped in: same documents (ids kept), trained on them + the training questions.
    start = time.perf_counter()
    softcar_retriever = ClassifierRetriever.from_documents(
        documents, k=EVAL_K, queries=train_pairs, config=TrainConfig(epochs=args.epochs, show_progress=False)
    )
    print(f"softcar ClassifierRetriever fitted in {time.perf_counter() - start:.1f}s")

    print(f"\nHeld-out questions ({len(test_queries)}), top {EVAL_K}:")
    for label, retriever in (("frozen MiniLM vector store", vector_retriever), ("softcar", softcar_retriever)):
        scores = hit_rate_and_mrr(retriever, test_queries, test_qrels)
        print(f"  {label:28s} hit_rate={scores['hit_rate']:.3f}  mrr={scores['mrr']:.3f}")

    # 3. The same RAG chain with either retriever: only the retriever changes.
    chains = {
        "vector store": rag_chain(store.as_retriever(search_kwargs={"k": CHAIN_K})),
        "softcar": rag_chain(ClassifierRetriever(retriever=softcar_retriever.retriever, k=CHAIN_K)),
    }
    for qid, question in list(test_queries.items())[:3]:
        relevant = set(test_qrels[qid])
        print(f"\nQ: {question}   (relevant: {', '.join(sorted(relevant))})")
        for label, chain in chains.items():
            out = chain.invoke(question)
            marks = [f"{doc.id}{'*' if doc.id in relevant else ''}" for doc in out["docs"]]
            print(f"  {label:12s} sources: {', '.join(marks)}")
            print(f"  {'':12s} answer:  {out['answer']}")

    # 4. Feedback: a user marks which document really answered a question softcar got wrong at
    #    rank 1; update() makes that question a row of its document (no gradient step, so the
    #    rest is not forgotten; update(..., epochs=3) would also train, with replay).
    for qid, question in test_queries.items():
        relevant = set(test_qrels[qid])
        before = softcar_retriever.invoke(question, k=1)[0].id
        if before not in relevant:
            softcar_retriever.update([(question, sorted(relevant)[0])])
            after = softcar_retriever.invoke(question, k=1)[0].id
            print(
                f"\nfeedback on {question!r}: top source {before} -> {after} (relevant: {', '.join(sorted(relevant))})"
            )
            break


if __name__ == "__main__":
    main()
