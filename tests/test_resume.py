"""fit(..., checkpoint_dir=...): interrupted and resumed equals uninterrupted; mismatches are typed errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from softcar import ClassifierRetriever, Document, TrainConfig, Trainer, TrainerCallback
from softcar.errors import CheckpointError, CheckpointMismatchError, SoftcarError

BASE = TrainConfig(epochs=2, batch_size=4, pseudo_queries_per_document=2, show_progress=False, checkpoint_every_steps=2)
# The sampled path: sparse head updates and a random stream of uniform negatives to restore too.
SAMPLED = BASE.model_copy(
    update={"sampled_softmax_above": 2, "sampled_uniform_negatives": 1, "sampled_hard_negatives": 1}
)
QUERIES = [("why is only one thread running", "gil"), ("0.1 + 0.2 looks wrong", "float")]


class Interrupt(Exception):
    pass


class InterruptAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Trainer, loss: float, batch_size: int, seconds: float) -> None:
        if trainer.global_step == self.step:
            raise Interrupt(f"stopped at step {self.step}")


def _larger(corpus: list[Document]) -> list[Document]:
    """16 documents: enough rows that the sampled softmax really samples (6 would all be exact)."""
    extra = [
        Document(id=f"{d.id}-{i}", text=" ".join(reversed(d.text.split()[i:]))) for i in (1, 3) for d in corpus[:5]
    ]
    return [*corpus, *extra]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("stop", [5, 15], ids=["first-epoch", "second-epoch"])
@pytest.mark.parametrize("config", [BASE, SAMPLED], ids=["exact", "sampled"])
def test_resumed_fit_equals_uninterrupted(
    tiny_bert: str, corpus: list[Document], tmp_path: Path, config: TrainConfig, stop: int
) -> None:
    """Bit-exact: same parameters, optimizer state, random streams (uniform negatives), loader position."""
    corpus = _larger(corpus)
    reference = ClassifierRetriever(tiny_bert, config=config).fit(corpus, QUERIES)
    interrupted = ClassifierRetriever(tiny_bert, config=config)
    # 52 examples, 13 batches per epoch, a checkpoint every 2 steps: stopping at step 5 resumes
    # from step 4 (mid-epoch), at step 15 from step 14 (in the second epoch).
    interrupted.callbacks.append(InterruptAt(stop))
    with pytest.raises(Interrupt):
        interrupted.fit(corpus, QUERIES, checkpoint_dir=tmp_path / "ck")
    assert (tmp_path / "ck" / "softcar.json").is_file()
    resumed = ClassifierRetriever(tiny_bert, config=config).fit(corpus, QUERIES, checkpoint_dir=tmp_path / "ck")
    expected, actual = reference.trainable_state_dict(), resumed.trainable_state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert not torch.equal(expected["head.weight"], interrupted.trainable_state_dict()["head.weight"])
    query = "which lock limits threads"
    assert [h.document.id for h in reference.retrieve(query, k=6)] == [
        h.document.id for h in resumed.retrieve(query, k=6)
    ]
    # Fitting again on the finished checkpoint trains nothing more and gives the same model.
    again = ClassifierRetriever(tiny_bert, config=config).fit(corpus, QUERIES, checkpoint_dir=tmp_path / "ck")
    assert torch.equal(again.trainable_state_dict()["head.weight"], expected["head.weight"])


def test_checkpoint_from_other_documents_or_config_is_refused(
    tiny_bert: str, corpus: list[Document], tmp_path: Path
) -> None:
    folder = tmp_path / "ck"
    ClassifierRetriever(tiny_bert, config=BASE).fit(corpus, checkpoint_dir=folder)
    saved = _files(folder)
    other_docs = [*corpus[:-1], Document(id="lambda", text="Lambdas are small anonymous functions.")]
    with pytest.raises(CheckpointMismatchError, match="documents") as caught:
        ClassifierRetriever(tiny_bert, config=BASE).fit(other_docs, checkpoint_dir=folder)
    assert isinstance(caught.value, SoftcarError) and isinstance(caught.value, ValueError)
    other_config = BASE.model_copy(update={"head_learning_rate": 1e-3})
    with pytest.raises(CheckpointMismatchError, match="head_learning_rate"):
        ClassifierRetriever(tiny_bert, config=other_config).fit(corpus, checkpoint_dir=folder)
    with pytest.raises(CheckpointMismatchError, match="queries"):
        ClassifierRetriever(tiny_bert, config=BASE).fit(corpus, QUERIES, checkpoint_dir=folder)
    with pytest.raises(CheckpointMismatchError, match="retriever_config"):
        ClassifierRetriever(tiny_bert, adapter="mlp", config=BASE).fit(corpus, checkpoint_dir=folder)
    assert _files(folder) == saved
    # Settings that do not change the result (progress bars, checkpoint frequency) may differ.
    quiet = BASE.model_copy(update={"checkpoint_every_steps": 7, "show_progress": False})
    ClassifierRetriever(tiny_bert, config=quiet).fit(corpus, checkpoint_dir=folder)


def test_a_folder_of_other_files_is_never_used_as_a_checkpoint(
    tiny_bert: str, corpus: list[Document], tmp_path: Path
) -> None:
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        ClassifierRetriever(tiny_bert, config=BASE).fit(corpus, checkpoint_dir=folder)
    assert (folder / "notes.txt").read_text() == "keep me"


def test_a_saved_retriever_is_not_a_training_checkpoint(
    fitted: ClassifierRetriever, tiny_bert: str, corpus: list[Document], tmp_path: Path
) -> None:
    fitted.save(tmp_path / "model")
    saved = _files(tmp_path / "model")
    with pytest.raises(CheckpointError, match="not a 'training-state'"):
        ClassifierRetriever(tiny_bert, config=BASE).fit(corpus, checkpoint_dir=tmp_path / "model")
    assert _files(tmp_path / "model") == saved
