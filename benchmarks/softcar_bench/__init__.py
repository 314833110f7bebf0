"""Side-by-side benchmark of softcar against its baselines and a full fine-tuning reference.

Methods (same run, same data, same machine):

* ``bm25``          lexical BM25 (``bm25s``)
* ``inner_product`` the frozen packaged all-MiniLM-L6-v2 + a matrix product over document vectors
* ``softcar``       ``ClassifierRetriever`` (adapter + classifier head)
* ``head_only``     ``TrainConfig(train_adapter=False)``
* ``adapter_only``  ``TrainConfig(train_head=False)``
* ``full_ft``       the whole encoder fine-tuned with sentence-transformers'
                    ``MultipleNegativesRankingLoss`` on the same (text, document) examples that
                    ``fit`` uses, then inner-product search over its document embeddings

Settings: (A) documents only, tested on the original and the reworded questions; (B) the
original questions are labelled training pairs, tested on the reworded questions.

Every training run, softcar's and the references', goes through ``softcar.Trainer`` and is
timed by trainer callbacks. Every job runs in a fresh ``spawn`` subprocess, so that its peak
memory can be read from ``/proc/self/status`` (VmHWM, reset after model load).

Modules: ``datasets`` (data and splits), ``jobs`` / ``fullft`` (what runs in a job),
``measure`` (memory, training time, latency), ``plan`` (which jobs a run does), ``report``
(targets and tables), ``cli`` (flags).

Usage (from the repository root)::

    python -m benchmarks.softcar_bench                  # full run (~35 min on 2 CPU cores; --ft-settings A: ~30)
    python -m benchmarks.softcar_bench --quick          # smoke run (< 2 min)
    python -m benchmarks.softcar_bench --tune-only      # softcar TrainConfig variants only

``python benchmarks/run_benchmark.py`` is the same command.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from .cli import main as cli_main

    return cli_main(argv)


__all__ = ["main"]
