"""Quick start: fit softcar on your own documents, query it, give feedback, save and reload.

Run: .venv/bin/python examples/quickstart.py
"""

from __future__ import annotations

import logging
import tempfile

from softcar import ClassifierRetriever, Document, InnerProductRetriever, TrainConfig

TEXTS = {
    "gil": "The global interpreter lock (GIL) lets only one thread run Python bytecode at a time, "
    "so CPU-bound threads do not run in parallel. Use multiprocessing for CPU-bound work.",
    "float": "Floating-point numbers are stored in binary. Decimal fractions such as 0.1 have no exact "
    "binary representation, so 0.1 + 0.2 prints 0.30000000000000004.",
    "immutable": "Strings and tuples are immutable: once created they cannot change. "
    "This makes them hashable, so they can be dictionary keys.",
    "self": "Methods take the instance as their first argument, conventionally named self, "
    "because a method is an ordinary function stored on the class.",
    "indent": "Python groups statements by indentation instead of braces, "
    "so the structure the reader sees is the structure the parser sees.",
    "venv": "A virtual environment is a folder with its own interpreter and site-packages. "
    "Create one with python -m venv .venv and activate it before installing packages.",
}
DOCUMENTS = [Document(id=doc_id, text=text) for doc_id, text in TEXTS.items()]
QUESTIONS = [
    "why don't my threads use all cores",
    "why is 0.1+0.2 not 0.3",
    "how do I isolate package installs per project",
]


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    frozen = InnerProductRetriever().fit(DOCUMENTS)
    retriever = ClassifierRetriever(config=TrainConfig(epochs=6, show_progress=False)).fit(DOCUMENTS)
    for question in QUESTIONS:
        ours, theirs = retriever.retrieve(question, k=1)[0], frozen.retrieve(question, k=1)[0]
        print(f"{question!r}")
        print(f"  softcar: {ours.document.id} ({ours.score:.3f})   frozen: {theirs.document.id} ({theirs.score:.3f})")

    retriever.update([("my CPU-bound threads are slow", "gil")])  # feedback from a user
    retriever.add_documents(
        [
            Document(
                id="walrus",
                text="The walrus operator := assigns inside an expression, e.g. while (line := f.readline()):",
            )
        ]
    )
    print("after add_documents:", retriever.retrieve("what does := do", k=1)[0].document.id)

    with tempfile.TemporaryDirectory() as folder:
        retriever.save(folder + "/model")
        again = ClassifierRetriever.load(folder + "/model")
        same = [h.document.id for h in again.retrieve(QUESTIONS[0], k=3)] == [
            h.document.id for h in retriever.retrieve(QUESTIONS[0], k=3)
        ]
        print("reloaded checkpoint gives identical rankings:", same)


if __name__ == "__main__":
    main()
