"""The one training loop: regularisers after privatisation, callbacks, reproducibility."""

from __future__ import annotations

import torch
from torch import nn

from softcar import ClassifierRetriever, TrainConfig
from softcar.regularizers import HeadAnchor, ProximalTerm
from softcar.trainer import StepTimer, Trainer, TrainerCallback
from tests.conftest import FAST


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return (model(x) - y).pow(2).mean()


class ReplacingOptimizer(torch.optim.Optimizer):
    """Stands in for a DP optimizer's contract: ``pre_step`` replaces ``p.grad`` (as Opacus does
    with the noised per-sample sum), then ``original_optimizer.step()`` updates."""

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        self.original_optimizer = inner
        self.param_groups = inner.param_groups
        self.defaults = inner.defaults
        self.state = inner.state

    def pre_step(self) -> bool:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)  # the "privatised" data gradient
        return True

    def step(self, closure=None):  # type: ignore[no-untyped-def, override]
        if self.pre_step():
            self.original_optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.original_optimizer.zero_grad(set_to_none)


def test_regularizer_gradient_survives_privatisation() -> None:
    """The penalty's gradient must be applied after the optimizer replaced the data gradient."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False)
    reference = {"w": torch.ones(1, 3)}
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(
        model, ReplacingOptimizer(inner), _mse, regularizers=[ProximalTerm({"w": model.weight}, reference, mu=1.0)]
    )
    before = model.weight.detach().clone()
    trainer.train_step((torch.randn(4, 3), torch.randn(4, 1)))
    # Data gradient zeroed by "privatisation": the step is exactly -lr * mu * (w - w_ref).
    torch.testing.assert_close(model.weight.detach(), before - 0.1 * (before - reference["w"]))


def test_plain_optimizer_equals_penalty_in_the_loss() -> None:
    torch.manual_seed(0)
    batch = (torch.randn(8, 3), torch.randn(8, 1))
    a, b = nn.Linear(3, 1), nn.Linear(3, 1)
    b.load_state_dict(a.state_dict())
    anchor = HeadAnchor(a.weight, 5.0)
    Trainer(a, torch.optim.SGD(a.parameters(), lr=0.05), _mse, regularizers=[anchor]).train([batch, batch], epochs=1)
    start = b.weight.detach().clone()
    opt = torch.optim.SGD(b.parameters(), lr=0.05)
    for _ in range(2):
        opt.zero_grad()
        (_mse(b, batch) + 5.0 * (b.weight - start).pow(2).sum(dim=1).mean()).backward()
        opt.step()
    torch.testing.assert_close(a.weight, b.weight)


def test_empty_batches_are_reported_not_trained() -> None:
    seen: list[str] = []

    class Recorder(TrainerCallback):
        def on_empty_batch(self, trainer: Trainer) -> None:
            seen.append("empty")

    model = nn.Linear(3, 1)
    before = model.weight.detach().clone()
    result = Trainer(model, torch.optim.SGD(model.parameters(), lr=1.0), _mse, callbacks=[Recorder()]).train(
        [(torch.zeros(0, 3), torch.zeros(0, 1))], epochs=2
    )
    assert seen == ["empty", "empty"] and result.empty_batches == 2 and result.examples == 0
    assert torch.equal(model.weight, before)


def test_batches_go_to_the_models_device_unless_told_otherwise() -> None:
    """Without ``device`` the batches follow the model's parameters (on a GPU box, CUDA)."""
    model = nn.Linear(3, 1)
    seen: list[torch.device] = []

    def loss(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.device)
        return m(batch).sum()

    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), loss).train([torch.ones(2, 3)])
    assert Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), loss).device == model.weight.device
    assert seen == [model.weight.device]
    meta = nn.Linear(3, 1, device="meta")
    assert Trainer(meta, torch.optim.SGD(meta.parameters(), lr=0.1), loss).device == torch.device("meta")
    assert Trainer(nn.Identity(), torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1), loss).device is None


def test_trainer_leaves_parameters_frozen_and_model_in_eval() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))
    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), lambda m, b: m(b).sum()).train([torch.ones(2, 3)])
    assert not model.training
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_fit_reports_steps_to_callbacks_and_is_reproducible(tiny_bert: str, corpus: list) -> None:
    timer = StepTimer()
    first = ClassifierRetriever(tiny_bert, config=FAST)
    first.callbacks.append(timer)
    first.fit(corpus)
    second = ClassifierRetriever(tiny_bert, config=FAST).fit(corpus)
    assert timer.seconds and timer.examples > 0
    for key, tensor in first.trainable_state_dict().items():
        torch.testing.assert_close(tensor, second.trainable_state_dict()[key])


def test_update_with_zero_epochs_records_but_does_not_train(fitted: ClassifierRetriever) -> None:
    """Regression: ``update(pairs, epochs=0)`` used to train anyway (``epochs or default``)."""
    before = fitted.trainable_state_dict()
    assert fitted.update([("how do threads share the interpreter", "gil")], epochs=0) == []
    for key, tensor in fitted.trainable_state_dict().items():
        assert torch.equal(tensor, before[key]), key


def test_training_setup_only_optimises_adapter_and_head(fitted: ClassifierRetriever) -> None:
    setup = fitted.training_setup(fitted.training_examples(), TrainConfig(train_adapter=False))
    params = [p for g in setup.optimizer.param_groups for p in g["params"]]
    assert len(params) == 1 and params[0] is fitted.model.head.weight
    assert not any(p.requires_grad for p in fitted.model.encoder.model.parameters())
