"""Serving at scale (issue #8): single-query latency, exact vs ANN head search, a real vector database.

For each head size N (default 1k / 57k / 1M rows) one ``softcar.ClassifierRetriever`` (packaged
all-MiniLM-L6-v2, identity adapter, i.e. ``fit`` with ``epochs=0``) is built with
``add_embedded_documents``: the first rows are *real* frozen embeddings of a seeded random
sample of ``../shared/data/debian-packages`` documents (``--real`` of them, cached under
``benchmarks/results/cache/``, gitignored), the rest are *synthetic* random unit rows (cost only:
their documents are the text ``synthetic row i``). Queries are the real synopsis queries of the
sampled documents, each answered alone (``retrieve(q, k=10)``, the way a RAG app asks).

Measured in one run, same process:

* ``encoder``: ``embed_queries([q])`` alone (tokenise + forward through adapter and MiniLM);
* ``exact``: ``retrieve`` on the exact matrix-product path; ``ann``: the same retriever with its
  faiss index (``ScoringConfig.ann_kind``), candidates re-scored exactly; each with BM25 fusion
  off (``α = 0``) and on (``α = 0.1``, the default before feedback);
* ANN recall@10 against the exact path's top 10 (same scoring); index build time and the
  resident-memory growth while building;
* ``--chroma``: the retriever's rows pushed into a real Chroma server (``chroma run`` on
  127.0.0.1) through ``langchain_softcar.SoftcarVectorIndex``; top 10 compared with in-process
  exact search (fusion off).

Usage (from the repository root)::

    python -m benchmarks.softcar_bench.serving           # 1k / 57k / 1M -> benchmarks/results/serving.json
    python -m benchmarks.softcar_bench.serving --sizes 1000 --queries 20 --no-chroma   # smoke run
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import softcar

DATA = Path("../shared/data/debian-packages")
CACHE = Path("benchmarks/results/cache")
K = 10


def rss_mb() -> float:
    """Resident memory of this process (``VmRSS``), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def real_rows(count: int, encode_dtype: str = "float32") -> tuple[list[softcar.Document], torch.Tensor, dict[str, str]]:
    """A seeded random sample of debian-packages documents, their frozen vectors (cached; encoded
    with ``TrainConfig.encode_dtype``) and their synopsis queries (doc id -> query text)."""
    data = softcar.load_beir(DATA, duplicate_ids="keep_first")
    docs = random.Random(0).sample(data.corpus, count)
    docs.sort(key=lambda d: len(d.text))  # batches of similar length: less padding to encode
    suffix = "" if encode_dtype == "float32" else f"-{encode_dtype}"
    vectors_file = CACHE / f"debian-{count}{suffix}-docs.safetensors"
    ids_file = CACHE / f"debian-{count}{suffix}-ids.txt"
    if vectors_file.is_file() and ids_file.read_text().split("\n") == [d.id for d in docs]:
        vectors = load_file(str(vectors_file))["documents"]
    else:
        encoder = softcar.ClassifierRetriever(config=softcar.TrainConfig(epochs=0, encode_dtype=encode_dtype))
        vectors = encoder.embed_documents([d.text for d in docs])
        CACHE.mkdir(parents=True, exist_ok=True)
        save_file({"documents": vectors.contiguous()}, str(vectors_file))
        ids_file.write_text("\n".join(d.id for d in docs))
    wanted = {d.id for d in docs}
    queries: dict[str, str] = {}
    for split in data.qrels:
        split_queries, qrels = data.split(split)
        for qid, judged in qrels.items():
            for doc_id in judged:
                if doc_id in wanted and doc_id not in queries:
                    queries[doc_id] = split_queries[qid]
    return docs, vectors, queries


def build(
    docs: list[softcar.Document], vectors: torch.Tensor, size: int, config: softcar.ScoringConfig
) -> softcar.ClassifierRetriever:
    """A retriever over ``size`` rows: the real ones first, then synthetic random unit rows."""
    real = min(size, len(docs))
    generator = torch.Generator().manual_seed(size)
    synthetic = torch.nn.functional.normalize(torch.randn(size - real, vectors.shape[1], generator=generator), dim=1)
    all_docs = docs[:real] + [
        softcar.Document(id=f"synthetic-{i}", text=f"synthetic row {i}") for i in range(size - real)
    ]
    retriever = softcar.ClassifierRetriever(config=softcar.TrainConfig(epochs=0, show_progress=False), scoring=config)
    retriever.add_embedded_documents(all_docs, torch.cat([vectors[:real], synthetic]))
    return retriever


def latencies(
    function: Callable[[str], Any], queries: Sequence[str], baseline: Callable[[str], Any] | None = None
) -> tuple[list[float], list[Any], list[float]]:
    """Milliseconds per call (one query each, after one warm-up call), the results, and — when
    ``baseline`` is given — its milliseconds on the same query right before: on a shared machine
    a ratio is only fair between calls made at the same moment."""
    function(queries[0])
    times, results, base = [], [], []
    for query in queries:
        if baseline is not None:
            start = time.perf_counter()
            baseline(query)
            base.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        results.append(function(query))
        times.append((time.perf_counter() - start) * 1000)
    return times, results, base


def percentiles(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"p50_ms": statistics.median(ordered), "p95_ms": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]}


def ids(results: list[list[softcar.ScoredDocument]]) -> list[list[str]]:
    return [[h.document.id for h in hits] for hits in results]


def recall(approx: list[list[str]], exact: list[list[str]]) -> float:
    return sum(len(set(a) & set(e)) for a, e in zip(approx, exact)) / sum(len(e) for e in exact)


TIE = 1e-5
"""Scores this close are ties: documents whose texts are token-identical after truncation get
identical rows (debian-packages has 89 such groups, 274 documents), and which of them is
listed first is arbitrary in any engine."""


def same_up_to_ties(got: list[softcar.ScoredDocument], expected: list[softcar.ScoredDocument]) -> bool:
    """The same scores rank by rank: any document that differs is tied with the one it replaces.

    Both lists are scored exactly in-process (the vector-database path re-scores what it finds),
    so a document the database missed shows as a lower score at its rank."""
    return len(got) == len(expected) and all(abs(a.score - b.score) <= TIE for a, b in zip(got, expected))


def encode(retriever: softcar.ClassifierRetriever) -> Callable[[str], Any]:
    """The encoder's forward pass alone for one query (what ``retrieve`` does before the head)."""
    return lambda query: retriever.embed_queries([query])


def set_scoring(retriever: softcar.ClassifierRetriever, **update: Any) -> None:
    retriever.config.scoring = retriever.config.scoring.model_copy(update=update)


def measure_size(
    docs: list[softcar.Document], vectors: torch.Tensor, queries: list[str], size: int, kind: str, storage: str
) -> dict[str, Any]:
    gc.collect()
    before = rss_mb()
    config = softcar.ScoringConfig(ann_threshold=10**9, ann_kind=kind, ann_storage=storage)  # type: ignore[arg-type]
    retriever = build(docs, vectors, size, config)  # exact path first
    row: dict[str, Any] = {"rows": size, "real_rows": min(size, len(docs)), "ann_kind": kind, "ann_storage": storage}
    row["retriever_rss_mb"] = rss_mb() - before
    results: dict[str, list[list[str]]] = {}
    for alpha in (0.0, 0.1):
        retriever.calibration = retriever.calibration.model_copy(update={"hybrid_weight": alpha})
        times, hits, base = latencies(lambda q: retriever.retrieve(q, k=K), queries, encode(retriever))
        row[f"exact_alpha{alpha}"] = {**percentiles(times), "encoder_p50_ms": statistics.median(base)}
        results[f"exact_{alpha}"] = ids(hits)
    before = rss_mb()
    set_scoring(retriever, ann_threshold=1)
    index = retriever.head_index
    assert index is not None
    row["index_build_s"] = index.build_seconds
    row["index_rss_mb"] = rss_mb() - before  # allocator-dependent; index_mb is the index's own size
    row["index_mb"] = index.nbytes / 2**20
    for alpha in (0.0, 0.1):
        retriever.calibration = retriever.calibration.model_copy(update={"hybrid_weight": alpha})
        times, hits, base = latencies(lambda q: retriever.retrieve(q, k=K), queries, encode(retriever))
        row[f"ann_alpha{alpha}"] = {**percentiles(times), "encoder_p50_ms": statistics.median(base)}
        row[f"recall_at_10_alpha{alpha}"] = recall(ids(hits), results[f"exact_{alpha}"])
    return row


def measure_index_only(
    vectors: torch.Tensor, queries: list[str], size: int, kind: str, probes: int | None = None
) -> dict[str, Any]:
    """Lean variant for machines short of memory: the same head rows and faiss index
    (``softcar.HeadIndex``, default settings) without a retriever, documents or BM25. Recall@10
    of candidates re-scored exactly against the exact top 10; per-query index time."""
    real = min(size, len(vectors))
    generator = torch.Generator().manual_seed(size)  # the same synthetic rows as build()
    head = torch.empty(size, vectors.shape[1])  # filled in place: one copy of the rows in memory
    head[:real] = vectors[:real]
    torch.randn(size - real, vectors.shape[1], generator=generator, out=head[real:])
    head[real:] /= head[real:].norm(dim=1, keepdim=True).clamp(min=1e-12)
    encoder = softcar.ClassifierRetriever(config=softcar.TrainConfig(epochs=0, show_progress=False))
    query_vectors = encoder.embed_queries(queries)
    config = softcar.ScoringConfig(ann_kind=kind, ivf_probes=probes)  # type: ignore[arg-type]
    index = softcar.HeadIndex.build(head, config)
    exact = torch.topk(query_vectors @ head.T, K).indices
    hits, times = 0, []
    for i in range(len(queries)):
        start = time.perf_counter()
        candidates = index.candidates(query_vectors[i : i + 1], config.ann_candidates)[0]
        candidates = candidates[candidates >= 0]
        top = candidates[torch.topk(query_vectors[i] @ head[candidates].T, K).indices]
        times.append((time.perf_counter() - start) * 1000)
        hits += len(set(top.tolist()) & set(exact[i].tolist()))
    return {
        "rows": size,
        "real_rows": real,
        "ann_kind": kind,
        "ivf_probes": int(index.index.nprobe) if kind == "ivf" else None,
        "index_build_s": index.build_seconds,
        "index_mb": index.nbytes / 2**20,
        "recall_at_10": hits / (K * len(queries)),
        "candidates_and_rescore": percentiles(times),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure_chroma(
    docs: list[softcar.Document],
    vectors: torch.Tensor,
    queries: list[str],
    size: int,
    search_ef: int | None = None,
    graph: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Push ``size`` rows into a Chroma server started here; compare top 10 with exact search."""
    import chromadb
    import langchain_chroma

    from langchain_softcar import SoftcarEmbeddings, SoftcarVectorIndex

    retriever = build(docs, vectors, size, softcar.ScoringConfig(ann_threshold=10**9, hybrid_weight=0.0))
    retriever.calibration = retriever.calibration.model_copy(update={"hybrid_weight": 0.0})
    exact_hits = [retriever.retrieve(q, k=K) for q in queries]
    exact = ids(exact_hits)
    folder = Path(tempfile.mkdtemp(prefix="softcar-chroma-"))
    port = free_port()
    chroma = Path(sys.executable).with_name("chroma")
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    log = open(folder / "chroma.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [str(chroma), "run", "--host", "127.0.0.1", "--port", str(port), "--path", str(folder / "db")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        settings = chromadb.config.Settings(anonymized_telemetry=False)
        deadline = time.monotonic() + 120
        while True:
            try:
                client = chromadb.HttpClient(host="127.0.0.1", port=port, settings=settings)
                client.heartbeat()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        store = langchain_chroma.Chroma(
            collection_name="softcar",
            client=client,
            embedding_function=SoftcarEmbeddings(retriever),
            collection_metadata={
                "hnsw:space": "cosine",
                **({"hnsw:search_ef": search_ef} if search_ef else {}),
                **{f"hnsw:{key}": value for key, value in (graph or {}).items()},
            },
        )
        index = SoftcarVectorIndex(retriever, store)
        start = time.perf_counter()
        pushed = len(index.push())
        push_s = time.perf_counter() - start
        times, hits, _ = latencies(lambda q: index.search(q, k=K), queries)
        through = ids(hits)
        return {
            "rows": size,
            "real_rows": min(size, len(docs)),
            "hnsw_search_ef": search_ef or "chroma default",
            "hnsw_graph": graph or "chroma default",
            "pushed_entries": pushed,
            "push_s": push_s,
            "queries": len(queries),
            "identical_top10": sum(a == e for a, e in zip(through, exact)),
            "identical_top10_up_to_ties": sum(same_up_to_ties(g, e) for g, e in zip(hits, exact_hits)),
            "tie_tolerance": TIE,
            "recall_at_10": recall(through, exact),
            **percentiles(times),
        }
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,57000,1000000", help="head rows per measurement (comma-separated)")
    parser.add_argument("--real", type=int, default=5000, help="real debian-packages rows (the rest is synthetic)")
    parser.add_argument("--queries", type=int, default=200, help="single queries timed per setting")
    parser.add_argument("--ann-kind", default="ivf", choices=["ivf", "hnsw"], help="faiss index kind")
    parser.add_argument(
        "--hnsw-at", default="57000", help="sizes also measured with HNSW (comma-separated; '' for none)"
    )
    parser.add_argument(
        "--float32-at",
        default="57000",
        help="sizes also measured with a float32 index, not the float16 default ('' for none)",
    )
    parser.add_argument("--chroma-rows", type=int, default=57000, help="rows pushed into the Chroma server")
    parser.add_argument("--chroma-search-ef", type=int, default=None, help="Chroma's hnsw:search_ef (default: its own)")
    parser.add_argument("--chroma-m", type=int, default=None, help="Chroma's hnsw:M graph degree (default: its own)")
    parser.add_argument(
        "--chroma-construction-ef", type=int, default=None, help="Chroma's hnsw:construction_ef (default: its own)"
    )
    parser.add_argument("--chroma-only", action="store_true", help="only the Chroma server measurement")
    parser.add_argument("--no-chroma", action="store_true", help="skip the Chroma server measurement")
    parser.add_argument("--ivf-probes", type=int, default=None, help="--index-only: IVF probes (default: config's)")
    parser.add_argument("--index-only", action="store_true", help="only the faiss index + recall (less memory)")
    parser.add_argument("--threads", type=int, default=1, help="torch / faiss threads")
    parser.add_argument(
        "--encode-dtype", default="float32", choices=["float32", "bfloat16"], help="how the real rows are encoded"
    )
    parser.add_argument("--out", default="benchmarks/results/serving.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    started = time.time()
    load_start = os.getloadavg()
    docs, vectors, by_doc = real_rows(args.real, args.encode_dtype)
    asked = [d for d in docs if d.id in by_doc]
    queries = [by_doc[d.id] for d in random.Random(1).sample(asked, min(args.queries, len(asked)))]
    rows = []
    sizes = [] if args.chroma_only else [int(s) for s in args.sizes.split(",") if s]
    if args.index_only:
        lean = [measure_index_only(vectors, queries, size, args.ann_kind, args.ivf_probes) for size in sizes]
        softcar.write_json(
            args.out,
            {
                "command": "python -m benchmarks.softcar_bench.serving "
                + " ".join(argv if argv is not None else sys.argv[1:]),
                "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)),
                "load_avg_at_start": load_start,
                "load_avg_at_end": os.getloadavg(),
                "index_only": lean,
                "note": "index only (no retriever, documents or BM25); timings depend on the load averages",
            },
        )
        print(
            softcar.format_table([{**r, "candidates_and_rescore": r["candidates_and_rescore"]["p50_ms"]} for r in lean])
        )
        return 0
    hnsw_at = {int(s) for s in args.hnsw_at.split(",") if s}
    float32_at = {int(s) for s in args.float32_at.split(",") if s}
    default_storage = softcar.ScoringConfig().ann_storage
    for size in sizes:
        variants = [(args.ann_kind, default_storage)]
        variants += [("hnsw", default_storage)] if size in hnsw_at and args.ann_kind != "hnsw" else []
        variants += [(args.ann_kind, "float32")] if size in float32_at and default_storage != "float32" else []
        for kind, storage in variants:
            row = measure_size(docs, vectors, queries, size, kind, storage)
            for name in ("exact_alpha0.0", "exact_alpha0.1", "ann_alpha0.0", "ann_alpha0.1"):
                row[name]["vs_encoder_p50"] = row[name]["p50_ms"] / row[name]["encoder_p50_ms"]
            rows.append(row)
            print(f"measured {size} rows ({kind}, {storage}): {row}", flush=True)
    chroma = None
    if not args.no_chroma:
        graph = {
            key: value
            for key, value in (("M", args.chroma_m), ("construction_ef", args.chroma_construction_ef))
            if value is not None
        }
        chroma = measure_chroma(docs, vectors, queries, args.chroma_rows, args.chroma_search_ef, graph)
    report = {
        "benchmark": "serving (issue #8)",
        "command": "python -m benchmarks.softcar_bench.serving " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)),
        "machine": {
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "load_avg_at_start": load_start,
            "load_avg_at_end": os.getloadavg(),
            "encode_dtype": args.encode_dtype,
            "note": "timings depend on the load averages recorded here",
        },
        "data": {
            "real_rows": len(docs),
            "source": str(DATA),
            "synthetic": "rows beyond real_rows are random unit vectors (cost only)",
            "queries": len(queries),
            "k": K,
        },
        "encoder": "per size: encoder_p50_ms, timed on the same query right before each retrieve",
        "sizes": rows,
        "chroma": chroma,
        "peak_rss_mb": peak_rss_mb(),
        "wall_s": time.time() - started,
    }
    softcar.write_json(args.out, report)
    table = [
        {
            "rows": r["rows"],
            "index": r["ann_kind"] + ("" if r["ann_storage"] == "float32" else f" {r['ann_storage']}"),
            "encoder p50": f"{r['ann_alpha0.0']['encoder_p50_ms']:.1f}",
            "exact p50/p95": f"{r['exact_alpha0.0']['p50_ms']:.1f} / {r['exact_alpha0.0']['p95_ms']:.1f}",
            "ann p50/p95": f"{r['ann_alpha0.0']['p50_ms']:.1f} / {r['ann_alpha0.0']['p95_ms']:.1f}",
            "exact/enc": f"{r['exact_alpha0.0']['vs_encoder_p50']:.2f}",
            "ann/enc": f"{r['ann_alpha0.0']['vs_encoder_p50']:.2f}",
            "exact+bm25/enc": f"{r['exact_alpha0.1']['vs_encoder_p50']:.2f}",
            "ann+bm25/enc": f"{r['ann_alpha0.1']['vs_encoder_p50']:.2f}",
            "recall@10 (α 0 / 0.1)": f"{r['recall_at_10_alpha0.0']:.3f} / {r['recall_at_10_alpha0.1']:.3f}",
            "build s": f"{r['index_build_s']:.1f}",
            "index MiB": f"{r['index_mb']:.0f}",
        }
        for r in rows
    ]
    print(softcar.format_table(table))
    if chroma is not None:
        print(
            f"Chroma server, {chroma['rows']} rows ({chroma['real_rows']} real): pushed {chroma['pushed_entries']} "
            f"entries in {chroma['push_s']:.0f} s; top-10 identical to in-process exact search for "
            f"{chroma['identical_top10']}/{chroma['queries']} queries, the same up to exactly tied documents "
            f"for {chroma['identical_top10_up_to_ties']} (recall@10 {chroma['recall_at_10']:.3f}); "
            f"p50 {chroma['p50_ms']:.1f} ms"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
