"""DP-SGD: per-sample clipping, and ε accumulated across rounds equals Opacus' accountant run
independently on the same sampling schedule."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch.nn import functional as F

from softcar_federated import dp, task

DELTA = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


@pytest.fixture
def retriever_and_examples(tiny_encoder, tiny_dataset):
    split = task.load_split(tiny_dataset)
    retriever = task.build_retriever(split.corpus, tiny_encoder, max_query_length=16, pseudo_queries=2)
    return retriever, task.local_examples(retriever, None, split.feedback)


def _settings(sigma, clip=1.0, batch=8, epochs=1):
    return dp.DPSettings(epochs=epochs, batch_size=batch, learning_rate=1e-3, head_learning_rate=1e-2,
                         logit_scale=20.0, max_length=16, noise_multiplier=sigma, max_grad_norm=clip)


def test_per_sample_gradient_norms_are_clipped(retriever_and_examples):
    retriever, examples = retriever_and_examples
    clip = 1e-3  # far below the raw gradient norms, so clipping must act
    settings = _settings(sigma=0.0, clip=clip)
    data = dp.encode_examples(examples[:12], retriever.tokenize, 16)
    model, optimizer, _, _ = dp.make_private(retriever.model, data, settings, dp.PrivacyLedger())
    params = [p for p in retriever.model.parameters() if p.requires_grad]
    raw_norms, clipped_norms = [], []
    try:
        for ids, mask, labels in zip(*[t.split(1) for t in data.tensors]):  # one example per batch
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(ids, mask) * 20.0, labels).backward()
            raw = torch.sqrt(sum(p.grad_sample.reshape(1, -1).pow(2).sum() for p in params))
            optimizer.clip_and_accumulate()  # Opacus' own per-sample clipping
            clipped = torch.sqrt(sum(p.summed_grad.pow(2).sum() for p in params))
            raw_norms.append(float(raw))
            clipped_norms.append(float(clipped))
            for p in params:
                p.summed_grad = None
    finally:
        model._close()
    assert max(raw_norms) > 10 * clip, "raw per-sample gradients should exceed the clipping norm"
    assert all(n <= clip * (1 + 1e-4) for n in clipped_norms), clipped_norms


def test_batch_gradient_respects_clipping_bound(retriever_and_examples):
    """For a batch of B, the summed clipped gradient cannot exceed B * C (triangle inequality)."""
    retriever, examples = retriever_and_examples
    clip = 1e-3
    data = dp.encode_examples(examples[:16], retriever.tokenize, 16)
    model, optimizer, _, _ = dp.make_private(retriever.model, data, _settings(0.0, clip), dp.PrivacyLedger())
    ids, mask, labels = data.tensors
    try:
        F.cross_entropy(model(ids, mask) * 20.0, labels).backward()
        params = [p for p in retriever.model.parameters() if p.requires_grad]
        per_sample = torch.sqrt(sum(p.grad_sample.reshape(len(labels), -1).pow(2).sum(1) for p in params))
        assert per_sample.max() > clip
        optimizer.clip_and_accumulate()
        total = torch.sqrt(sum(p.summed_grad.pow(2).sum() for p in params))
        assert float(total) <= len(labels) * clip * (1 + 1e-4)
    finally:
        model._close()


def test_cumulative_epsilon_matches_independent_accountant(retriever_and_examples):
    retriever, examples = retriever_and_examples
    sigma, rate, steps = dp.planned_noise(8.0, DELTA, len(examples), 8, 1, 3)
    ledger = dp.PrivacyLedger()
    per_round = []
    for _ in range(3):
        result, ledger = dp.train_round(retriever.model, examples, retriever.tokenize, _settings(sigma), ledger)
        ledger = dp.PrivacyLedger.from_flat(ledger.to_flat())  # as stored in context.state between rounds
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
    ledger = dp.PrivacyLedger(history=[(sigma, rate, steps * 5)], rounds=5)
    eps_now = ledger.epsilon(DELTA)
    assert dp.would_exceed(ledger, sigma, rate, steps, DELTA, budget=eps_now * 1.0001)
    assert not dp.would_exceed(ledger, sigma, rate, steps, DELTA, budget=eps_now * 2)


def test_ledger_survives_disk_and_prefers_larger(tmp_path):
    small = dp.PrivacyLedger(history=[(1.0, 0.1, 10)], rounds=1)
    big = dp.PrivacyLedger(history=[(1.0, 0.1, 20)], rounds=2)
    big.save(tmp_path / "ledger.json")
    loaded = dp.PrivacyLedger.load(tmp_path / "ledger.json")
    assert loaded == big
    assert small.merged(loaded) == big and big.merged(small) == big
    assert dp.PrivacyLedger.load(tmp_path / "missing.json").epsilon(DELTA) == 0.0


def test_no_dp_round_trains_without_noise(retriever_and_examples):
    retriever, examples = retriever_and_examples
    before = retriever.trainable_state_dict()
    settings = _settings(None)
    settings.seed = 0
    result, ledger = dp.train_round(retriever.model, examples, retriever.tokenize, settings, dp.PrivacyLedger())
    after = retriever.trainable_state_dict()
    assert ledger.history == [] and result.steps > 0
    assert not torch.equal(before["head.weight"], after["head.weight"])
