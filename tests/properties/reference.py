"""Float64 references of a drawn :class:`~tests.properties.grammar.Case`, from the
brute-force Jacobians of :mod:`tests.oracle` (torch.func, nothing from tangentlab except
the Monte-Carlo label stream, which is the engine's documented per-batch generator)."""

from __future__ import annotations

import copy

import torch

from tangentlab.engine import Engine

from .. import oracle
from .grammar import Case


def trainable(case: Case) -> list[str]:
    """Names of the parameters tangentlab differentiates by default (the trainable ones)."""
    return [name for name, p in case.model.named_parameters() if p.requires_grad]


def columns(case: Case, names: list[str]) -> torch.Tensor:
    """Indices of the parameters ``names`` among the flattened trainable parameters."""
    params, out, offset = dict(case.model.named_parameters()), [], 0
    for name in trainable(case):
        numel = params[name].numel()
        if name in names:
            out.append(torch.arange(offset, offset + numel))
        offset += numel
    return torch.cat(out)


def mc_labels(case: Case) -> torch.Tensor:
    """The ``(N, k)`` labels the Monte-Carlo Fisher samples: batch ``i`` draws from the
    engine's generator of batch ``i`` (seeded by ``(seed, i)``), ``y ~ softmax(f(x))``."""
    eng = Engine(case.model, case.output(), seed=case.seed)
    out = []
    for i, (xb, _) in enumerate(case.batches):
        with torch.no_grad():
            p = torch.softmax(case.model(xb), -1)
        out.append(torch.multinomial(p, case.n_samples, replacement=True, generator=eng.generator(i)))
    return torch.cat(out)


def jacobian(case: Case) -> torch.Tensor:
    """The raw Jacobian ``(N, C, P)`` of the trainable parameters (on a copy of the model)."""
    return oracle.jacobian(copy.deepcopy(case.model), case.x, trainable(case))


def features(case: Case) -> torch.Tensor:
    """Tangent features ``Φ`` ``(N, C', P)`` of the case's kind, so that ``F = Σ_n Φ_nᵀΦ_n / N``
    and the kernel of the same outputs is ``K = Φ Φᵀ``."""
    # on a copy: torch.func.functional_call leaves a module used at several places holding
    # the replacement tensors (tests/oracle.py calls it), which would change the case's model
    model, x, y, names = copy.deepcopy(case.model), case.x, case.y, trainable(case)
    n = x.shape[0]
    if case.kind in ("raw", "regression"):
        return oracle.jacobian(model, x, names) / case.variance ** 0.5
    if case.kind == "empirical":
        return oracle.loss_grads(model, x, y, names)[:, None, :]
    if case.kind == "mc":
        k = case.n_samples
        labels = mc_labels(case)
        g = oracle.loss_grads(model, x.repeat_interleave(k, 0), labels.reshape(-1), names)
        return -g.reshape(n, k, -1) / k ** 0.5
    j = oracle.jacobian(model, x, names)
    with torch.no_grad():
        z = model(x)
    if case.kind == "binary":
        p = torch.sigmoid(z)
        return j * torch.sqrt(p * (1 - p))[:, :, None]
    if case.kind == "exact":  # J_zᵀ (diag p − p pᵀ) J_z = Φᵀ Φ with Φ = S^{1/2} J (symmetric root)
        p = torch.softmax(z, -1)
        s = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        vals, vecs = torch.linalg.eigh(s)
        root = vecs @ torch.diag_embed(vals.clamp_min(0).sqrt()) @ vecs.transpose(1, 2)
        return root @ j
    raise ValueError(f"no reference for kind {case.kind!r}")


def fisher(case: Case, phi: torch.Tensor, centering: bool = False) -> torch.Tensor:
    """``F = (1/N) Σ_n Φ_nᵀ Φ_n``; ``centering``: of ``Φ_n − (1/N) Σ_m Φ_m``."""
    if centering:
        phi = phi - phi.mean(0, keepdim=True)
    return torch.einsum("ncp,ncq->pq", phi, phi) / phi.shape[0]
