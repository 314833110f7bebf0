"""DP-SGD: per-sample clipping, ε accumulated across rounds equals Opacus' accountant run
independently on the same sampling schedule, and FedProx still acts under DP."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import RDPAccountant

from softcar import TrainConfig
from softcar_federated import partitions
from softcar_federated.local_training import DPParams, train_round
from softcar_federated.privacy import PrivacyLedger, make_private, planned_noise, would_exceed

DELTA = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


@pytest.fixture
def retriever_and_examples(tiny_encoder, tiny_dataset):
    split = partitions.load_split(tiny_dataset)
    retriever = partitions.build_retriever(split.corpus, tiny_encoder, max_query_length=16, pseudo_queries=2)
    return retriever, partitions.local_examples(retriever, None, split.feedback)


def _config(batch=8, **overrides):
    return TrainConfig(
        batch_size=batch, learning_rate=1e-3, head_learning_rate=1e-2, head_anchor=0.0, show_progress=False, **overrides
    )


def _private(retriever, examples, clip, batch=8):
    setup = retriever.training_setup(examples, _config(batch))
    return setup, make_private(setup, 0.0, clip, PrivacyLedger())


def _one_batch(private, examples_count):
    """Every example in one batch (bypassing Poisson sampling, which would make sizes random)."""
    dataset = private.loader.dataset
    return dataset.collate([dataset[i] for i in range(examples_count)])


def test_per_sample_gradient_norms_are_clipped(retriever_and_examples):
    retriever, examples = retriever_and_examples
    clip = 1e-3  # far below the raw gradient norms, so clipping must act
    setup, private = _private(retriever, examples[:12], clip)
    params = [p for p in retriever.model.parameters() if p.requires_grad]
    raw_norms, clipped_norms = [], []
    dataset = private.loader.dataset
    try:
        for i in range(len(dataset)):  # one example per batch
            batch = dataset.collate([dataset[i]])
            private.optimizer.zero_grad(set_to_none=True)
            setup.loss(private.model, batch).backward()
            raw = torch.sqrt(sum(p.grad_sample.reshape(1, -1).pow(2).sum() for p in params))
            private.optimizer.clip_and_accumulate()  # Opacus' own per-sample clipping
            clipped = torch.sqrt(sum(p.summed_grad.pow(2).sum() for p in params))
            raw_norms.append(float(raw))
            clipped_norms.append(float(clipped))
            for p in params:
                p.summed_grad = None
    finally:
        private.close()
    assert max(raw_norms) > 10 * clip, "raw per-sample gradients should exceed the clipping norm"
    assert all(n <= clip * (1 + 1e-4) for n in clipped_norms), clipped_norms


def test_batch_gradient_respects_clipping_bound(retriever_and_examples):
    """For a batch of B, the summed clipped gradient cannot exceed B * C (triangle inequality)."""
    retriever, examples = retriever_and_examples
    clip = 1e-3
    setup, private = _private(retriever, examples[:16], clip)
    batch = _one_batch(private, 16)
    try:
        setup.loss(private.model, batch).backward()
        params = [p for p in retriever.model.parameters() if p.requires_grad]
        per_sample = torch.sqrt(sum(p.grad_sample.reshape(16, -1).pow(2).sum(1) for p in params))
        assert per_sample.max() > clip
        private.optimizer.clip_and_accumulate()
        total = torch.sqrt(sum(p.summed_grad.pow(2).sum() for p in params))
        assert float(total) <= 16 * clip * (1 + 1e-4)
    finally:
        private.close()


def test_fedprox_acts_under_client_dp(retriever_and_examples):
    """Regression: FedProx' proximal gradient was added to ``p.grad`` before the DP optimizer's
    step, which replaces ``p.grad`` with the privatised per-sample sum: FedProx silently became
    FedAvg. With σ = 0 and a vanishing clipping norm the data gradient is ~0, so the only thing
    that can move the adapter is the proximal pull toward the reference."""
    retriever, examples = retriever_and_examples
    start = retriever.trainable_state_dict()
    reference = {k: v + 0.05 for k, v in start.items()}  # a "global model" away from the local one
    config = _config(batch=4, train_head=False, seed=0)
    dp = DPParams(noise_multiplier=0.0, max_grad_norm=1e-12)

    def moved(mu):
        retriever.load_trainable_state_dict(start)
        train_round(retriever, examples, config, epochs=1, dp=dp, proximal=reference, proximal_mu=mu)
        after = retriever.trainable_state_dict()
        toward = sum(
            float(((after[k] - start[k]) * (reference[k] - start[k])).sum()) for k in after if k.startswith("adapter.")
        )
        return toward

    without, with_prox = moved(0.0), moved(10.0)
    assert with_prox > 1e-4, "the proximal term must move the adapter toward the global model under DP"
    assert with_prox > 100 * abs(without)


def test_cumulative_epsilon_matches_independent_accountant(retriever_and_examples):
    retriever, examples = retriever_and_examples
    sigma, rate, steps = planned_noise(8.0, DELTA, math.ceil(len(examples) / 8), 1, 3)
    ledger = PrivacyLedger()
    per_round = []
    for _ in range(3):
        result, ledger = train_round(retriever, examples, _config(8), epochs=1, dp=DPParams(sigma, 1.0), ledger=ledger)
        ledger = PrivacyLedger.from_flat(ledger.to_flat())  # as stored in context.state between rounds
        per_round.append(result)
        assert math.isclose(result.sample_rate, rate)
        assert result.steps == steps
    independent = RDPAccountant()
    for result in per_round:  # the same schedule, replayed step by step
        for _ in range(result.steps):
            independent.step(noise_multiplier=sigma, sample_rate=result.sample_rate)
    expected = independent.get_epsilon(DELTA)
    assert ledger.epsilon(DELTA) == pytest.approx(expected, rel=1e-9)
    assert ledger.epsilon(DELTA) <= 8.0 + 1e-6  # calibrated to the budget over all rounds
    # A fresh accountant per round would report only one round's ε: much less.
    one_round = RDPAccountant()
    for _ in range(per_round[0].steps):
        one_round.step(noise_multiplier=sigma, sample_rate=rate)
    assert one_round.get_epsilon(DELTA) < 0.8 * expected


def test_budget_check_stops_training():
    sigma, rate, steps = 1.0, 0.1, 10
    ledger = PrivacyLedger(history=[(sigma, rate, steps * 5)], rounds=5)
    eps_now = ledger.epsilon(DELTA)
    assert would_exceed(ledger, sigma, rate, steps, DELTA, budget=eps_now * 1.0001)
    assert not would_exceed(ledger, sigma, rate, steps, DELTA, budget=eps_now * 2)


def test_ledger_survives_disk_and_prefers_larger(tmp_path):
    small = PrivacyLedger(history=[(1.0, 0.1, 10)], rounds=1)
    big = PrivacyLedger(history=[(1.0, 0.1, 20)], rounds=2)
    big.save(tmp_path / "ledger.json")
    loaded = PrivacyLedger.load(tmp_path / "ledger.json")
    assert loaded == big
    assert small.merged(loaded) == big and big.merged(small) == big
    assert PrivacyLedger.load(tmp_path / "missing.json").epsilon(DELTA) == 0.0


def test_no_dp_round_trains_without_noise(retriever_and_examples):
    retriever, examples = retriever_and_examples
    before = retriever.trainable_state_dict()
    result, ledger = train_round(retriever, examples, _config(8, seed=0), epochs=1)
    after = retriever.trainable_state_dict()
    assert ledger.history == [] and result.steps > 0
    assert not torch.equal(before["head.weight"], after["head.weight"])
