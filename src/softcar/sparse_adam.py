"""AdamW that updates only the rows a sparse gradient names: the head's optimizer at scale.

Dense AdamW over the head reads and writes every row (and both moment buffers) on every step:
``O(N · d)`` even when a batch scored a few thousand rows. :class:`RowSparseAdam` keeps
AdamW's update for dense gradients (the adapter) and, for a sparse gradient (the head, gathered
with ``F.embedding(..., sparse=True)``), gathers the participating rows and their moments,
applies Adam with a *per-row* step count (so a row's first update has the usual bias
correction however late it comes: "lazy" Adam), and scatters them back. Rows outside the
gradient stay bit-identical, and so do their moments. Decoupled weight decay on a sparse
parameter decays the participating rows only.

``sparse_rule="sgd"`` updates sparse rows by plain SGD (``sparse_lr``) instead. Adam's
per-coordinate normalisation makes every step about ``lr`` long whatever the gradient's size,
so each sampled negative of a step (softmax probability ~1e-5) moves about as far as the
positive; SGD moves a row in proportion to its gradient, as word2vec-style sampled softmax
training does. Measured on debian-packages at 10k and 57k documents, it made no difference
beyond noise, so lazy Adam stays the default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class RowSparseAdam(torch.optim.Optimizer):
    """AdamW for dense gradients, lazy row-wise AdamW for sparse (COO, row-indexed) gradients.

    Moment buffers are allocated with ``torch.zeros``; for a large head the pages of rows never
    touched are never written, so resident memory grows with the rows that take part.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        sparse_rule: str = "adam",
        sparse_lr: float | None = None,
    ) -> None:
        if sparse_rule not in ("adam", "sgd"):
            raise ValueError(f"sparse_rule must be 'adam' or 'sgd', not {sparse_rule!r}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.sparse_rule, self.sparse_lr = sparse_rule, sparse_lr

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    self._sparse_step(param, lr, beta1, beta2, eps, decay)
                else:
                    self._dense_step(param, lr, beta1, beta2, eps, decay)
        return loss

    def _dense_step(self, param: torch.Tensor, lr: float, beta1: float, beta2: float, eps: float, decay: float) -> None:
        """``torch.optim.AdamW``'s update (no amsgrad)."""
        grad = param.grad
        assert grad is not None
        state = self.state[param]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1
        step = float(state["step"])
        param.mul_(1 - lr * decay)
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias1, bias2 = 1 - beta1**step, 1 - beta2**step
        denom = (state["exp_avg_sq"].sqrt() / (bias2**0.5)).add_(eps)
        param.addcdiv_(state["exp_avg"], denom, value=-lr / bias1)

    def _sparse_step(
        self, param: torch.Tensor, lr: float, beta1: float, beta2: float, eps: float, decay: float
    ) -> None:
        """Gather the gradient's rows and their moments, update them, scatter back."""
        grad = param.grad
        assert grad is not None
        grad = grad.coalesce()
        rows = grad.indices()[0]
        values = grad.values()
        if self.sparse_rule == "sgd":
            # Plain SGD: a row moves in proportion to its gradient (see the module docstring).
            step_lr = lr if self.sparse_lr is None else self.sparse_lr
            param[rows] = (param[rows] * (1 - step_lr * decay) - step_lr * values).to(param.dtype)
            return
        state = self.state[param]
        if not state:
            state["row_step"] = torch.zeros(param.shape[0], dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        step = state["row_step"][rows] + 1
        state["row_step"][rows] = step
        exp_avg = state["exp_avg"][rows].lerp_(values, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(values, values, value=1 - beta2)
        state["exp_avg"][rows] = exp_avg
        state["exp_avg_sq"][rows] = exp_avg_sq
        shape = (-1,) + (1,) * (param.dim() - 1)
        bias1 = (1 - beta1**step).view(shape)
        bias2 = (1 - beta2**step).view(shape)
        denom = (exp_avg_sq.sqrt() / bias2.sqrt()).add_(eps)
        updated = param[rows] * (1 - lr * decay) - lr * exp_avg / bias1 / denom
        param[rows] = updated.to(param.dtype)
