"""The workloads W1–W7: models, data, sizes, flop counts.

A :class:`Workload` names the adapter method that computes it (``task``), the
quantities it reports (W3: one per Fisher representation; W4: ``mv``, ``vTMv``,
``trace``), its cases (full and ``--quick`` sizes) and a flop count for the
lower bound. A workload whose quantities are computed by different adapter methods
(W7: NTK, Fishers, implicit product, per-example gradients of one model) maps each
quantity to its ``(method, adapter quantity)`` in ``tasks``. :func:`Workload.build` is
deterministic: every subprocess that builds a case gets bit-identical models, inputs and
vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from . import flops, models

SEED = 0


@dataclass
class Case:
    """Everything an adapter needs for one (workload, size)."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor | None = None
    v: dict[str, torch.Tensor] | None = None  # a parameter-space vector (named like the model)
    batch_size: int | None = None  # examples per batch where the workload prescribes batching
    budget_bytes: int | None = None  # memory budget for blockwise workloads
    n_classes: int = 10

    @property
    def n(self) -> int:
        return self.x.shape[0]

    def to(self, device: str | torch.device) -> Case:
        """The same case on ``device`` (model, inputs, labels and vector moved; in place for the model)."""
        return replace(self, model=self.model.to(device), x=self.x.to(device),
                       y=None if self.y is None else self.y.to(device),
                       v=None if self.v is None else {k: t.to(device) for k, t in self.v.items()})

    @property
    def n_params(self) -> int:
        return models.n_params(self.model)


@dataclass
class Workload:
    id: str
    title: str
    task: str  # the adapter method: full_ntk, fisher, implicit_fisher, per_example_grads, blockwise_ntk
    cases: list[dict[str, Any]]
    quick_cases: list[dict[str, Any]]
    make: Callable[..., Case]
    work: Callable[[Case, str], float]  # flops of the cheapest known algorithm, per quantity
    work_note: str
    quantities: tuple[str, ...] = ("",)
    extra_work: Callable[[Case], dict[str, float]] = field(default=lambda case: {})
    #: quantity -> (adapter method, quantity passed to it); default ``(task, quantity)``
    tasks: dict[str, tuple[str, str]] = field(default_factory=dict)

    def row_task(self, quantity: str) -> tuple[str, str]:
        """The adapter method that computes ``quantity`` and the quantity it is asked for."""
        return self.tasks.get(quantity, (self.task, quantity))

    def case_list(self, quick: bool) -> list[dict[str, Any]]:
        return self.quick_cases if quick else self.cases

    def build(self, params: dict[str, Any]) -> Case:
        return self.make(**params)


def case_label(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _vector(model: nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED + 1)
    return {k: torch.randn(p.shape, generator=g) for k, p in model.named_parameters()}


# ---- builders -----------------------------------------------------------------------------
def _mlp_ntk(n: int) -> Case:
    torch.manual_seed(SEED)
    model = models.mlp(64, 256, 10)
    return Case(model, torch.randn(n, 64))


def _cnn_ntk(n: int) -> Case:
    torch.manual_seed(SEED)
    model = models.small_cnn()
    return Case(model, torch.randn(n, 1, 16, 16))


def _mlp_fisher(n: int, batch_size: int) -> Case:
    torch.manual_seed(SEED)
    model = models.mlp(64, 256, 10)
    x = torch.randn(n, 64)
    return Case(model, x, v=_vector(model), batch_size=batch_size)


def _resnet_fisher(n: int, width: int = 64, size: int = 32) -> Case:
    torch.manual_seed(SEED)
    model = models.resnet18(10, width)
    x = torch.randn(n, 3, size, size)
    return Case(model, x, v=_vector(model), batch_size=n)


def _cnn_pegrads(n: int) -> Case:
    torch.manual_seed(SEED)
    model = models.small_cnn()
    x = torch.randn(n, 1, 16, 16)
    y = torch.randint(0, 10, (n,))
    return Case(model, x, y)


def _scalar_ntk(n: int, block: int, budget_gib: float) -> Case:
    torch.manual_seed(SEED)
    model = models.mlp(64, 256, 1)
    return Case(model, torch.randn(n, 64), batch_size=block, budget_bytes=int(budget_gib * 2**30),
                n_classes=1)


def _transformer(model: str, n: int, seq: int = 12) -> Case:
    """W7: token ids ``(N, seq)`` below 50, labels, a parameter vector; one batch of ``N``."""
    torch.manual_seed(SEED)
    net = models.transformer(model)
    x = torch.randint(0, 50, (n, seq))
    y = torch.randint(0, 10, (n,))
    return Case(net, x, y, v=_vector(net), batch_size=n)


# ---- flop counts ---------------------------------------------------------------------------
def _shapes(case: Case):
    return flops.layer_shapes(case.model, case.x[:1])


def _ntk_work(case: Case, q: str) -> float:
    return flops.ntk(_shapes(case), case.n, case.n_classes)


def _ntk_extra(case: Case) -> dict[str, float]:
    return {"dense Jacobian contraction 2(NC)²P": flops.dense_jacobian_contraction(
        case.n_params, case.n, case.n_classes)}


def _fisher_work(case: Case, q: str) -> float:
    s, c = _shapes(case), case.n_classes - 1
    if q == "kfac":
        return flops.kfac_fisher(s, case.n, c)
    if q == "ekfac":
        return flops.ekfac_fisher(s, case.n, c)
    return flops.diag_fisher(s, case.n, c, case.n_params)


def _implicit_work(case: Case, q: str) -> float:
    s = _shapes(case)
    if q == "mv":
        return flops.fisher_mv(s, case.n)
    if q == "vTMv":
        return flops.fisher_vtmv(s, case.n)
    return flops.sq_norms(s, case.n, case.n_classes - 1, case.n_params)


def _pegrad_work(case: Case, q: str) -> float:
    return flops.per_example_grads(_shapes(case), case.n)


#: W7's rows: quantity -> (adapter method, adapter quantity)
TRANSFORMER_TASKS = {
    "NTK": ("full_ntk", ""), "diag": ("fisher", "diag"), "kfac": ("fisher", "kfac"),
    "ekfac": ("fisher", "ekfac"), "mv": ("implicit_fisher", "mv"),
    "per-example grads": ("per_example_grads", ""),
}
_TRANSFORMER_WORK = {"full_ntk": _ntk_work, "fisher": _fisher_work, "implicit_fisher": _implicit_work,
                     "per_example_grads": _pegrad_work}


def _transformer_work(case: Case, q: str) -> float:
    task, quantity = TRANSFORMER_TASKS[q]
    return _TRANSFORMER_WORK[task](case, quantity)


WORKLOADS: dict[str, Workload] = {w.id: w for w in [
    Workload(
        "W1", "full NTK (N x N x 10 x 10) of MLP 64-256-256-10, Tanh (P = 85,002)", "full_ntk",
        [{"n": 100}, {"n": 200}], [{"n": 16}], _mlp_ntk, _ntk_work,
        "forward + C backward passes to the layer outputs + per-layer Gram trick (a·a')(g·g'), "
        "symmetric pairs once", extra_work=_ntk_extra),
    Workload(
        "W2", "full NTK of CNN conv(1->16)-ReLU-conv(16->32)-ReLU-AvgPool(4)-Linear(512->10) on "
        "1x16x16 (P = 9,930)", "full_ntk",
        [{"n": 100}], [{"n": 12}], _cnn_ntk, _ntk_work,
        "forward + C backward passes + per layer min(Gram trick, per-example materialization + "
        "contraction), symmetric pairs once", extra_work=_ntk_extra),
    Workload(
        "W3", "exact-classification Fisher of the W1 MLP, build + one mv", "fisher",
        [{"n": 1000, "batch_size": 100}], [{"n": 60, "batch_size": 30}], _mlp_fisher, _fisher_work,
        "all: forward + (C-1) backward passes; diag: one (Σ g²)ᵀ(a²) matmul per layer; kfac: "
        "factor sums A = Σ ããᵀ, B = Σ_c Σ g gᵀ (symmetric halves) + B V A; ekfac: kfac factors + "
        "eigh of A and B + rotations of ã and g + (Σ (U_Bᵀg)²)ᵀ(U_Aᵀã)² + two-rotation mv",
        quantities=("diag", "kfac", "ekfac")),
    Workload(
        "W4", "implicit exact-classification Fisher of a CIFAR ResNet-18 (BatchNorm in eval mode, "
        "P = 11,173,962), 3x32x32 inputs", "implicit_fisher",
        [{"n": 64}], [{"n": 4, "width": 8, "size": 16}], _resnet_fisher, _implicit_work,
        "mv: forward + forward-mode tangent + backward; vTMv: forward + tangent; trace: forward + "
        "(C-1) backward passes + per-layer min(ghost norm, materialized) squared norms",
        quantities=("mv", "vTMv", "trace")),
    Workload(
        "W5", "per-example gradients (cross-entropy) of the W2 CNN", "per_example_grads",
        [{"n": 256}], [{"n": 32}], _cnn_pegrads, _pegrad_work,
        "forward + one backward + per-example weight gradients Σ_t g aᵀ"),
    Workload(
        "W6", "NTK of a scalar-output MLP 64-256-256-1 (P = 82,689), blockwise within a memory budget",
        "blockwise_ntk",
        [{"n": 10000, "block": 1000, "budget_gib": 4.0}], [{"n": 400, "block": 100, "budget_gib": 1.0}],
        _scalar_ntk, _ntk_work,
        "forward + one backward + per-layer Gram trick, symmetric pairs once", extra_work=_ntk_extra),
    Workload(
        "W7", "transformer classifiers on token sequences of length 12 (vocabulary 50, 10 classes): "
        "Embedding(50, 64), 2 post-norm encoder layers (d_model 64, 4 heads, feed-forward 128, no dropout), "
        "mean over tokens, Linear(64, 10), P = 70,794; model=encoder: nn.TransformerEncoder, model=gpt: "
        "nn.Linear q/k/v/out around F.scaled_dot_product_attention", "transformer",
        [{"model": "encoder", "n": 32}, {"model": "gpt", "n": 32}],
        [{"model": "encoder", "n": 6}, {"model": "gpt", "n": 6}], _transformer, _transformer_work,
        "as W1 (NTK), W3 (diag, kfac, ekfac with one mv), W4 (mv) and W5 (per-example gradients), "
        "with the attention projections as sequence Linear layers (T = 12), the attention products "
        "Q Kᵀ and A V in the forward, tangent and backward passes, LayerNorm and softmax element-wise",
        quantities=tuple(TRANSFORMER_TASKS), tasks=TRANSFORMER_TASKS),
]}
