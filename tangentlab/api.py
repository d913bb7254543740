"""Entry points close to the maths: :func:`fim`, :func:`ntk`, :func:`jacobian`.

Conventions shared by all three:

* ``data`` is a tensor of inputs, a tuple ``(x, y, ...)`` of tensors, a
  ``DataLoader`` or a list of batches; tensors are split into batches of
  ``batch_size``.
* Matrices are *means over examples* and *sums over output coordinates*:
  ``F = (1/N) Σ_n Σ_c φ_c(x_n) φ_c(x_n)ᵀ``, with ``N`` the number of examples
  actually seen (``drop_last`` loaders count correctly).
* Kernels are plain Gram tensors ``K[n, m, c, d] = ⟨φ_c(x_n), φ_d(x'_m)⟩``, so
  ``eig(K) / N`` are the non-zero eigenvalues of the matching ``F``.
* The engine keywords ``route``, ``registry``, ``seed``, ``memory_budget``,
  ``progress``, ``distributed`` and ``precision`` (or all of them as
  ``options=EngineOptions(...)``) are the fields of
  :class:`~tangentlab.engine.options.EngineOptions`, with the same defaults and checks
  in every entry point (also :func:`tangentlab.ntk_large.ntk_tiled` and
  :class:`~tangentlab.ntk_large.NTKOperator`).
* ``distributed``: for :func:`fim`, ``data`` is this rank's shard and the sums are
  all-reduced (the Fisher of the union of the shards). For :func:`ntk` and
  :func:`jacobian`, which index every example, every rank passes the same full data,
  the ranks split the work (kernel tiles, batches) and every rank gets the
  single-process result (:mod:`tangentlab.distributed`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .data import Batches
from .engine import EngineOptions, make_engine
from .errors import InvalidInputError
from .fmat import FMatDense, build_ntk
from .kron import check_approx
from .layers.registry import LayerRegistry
from .maps import PushForwardDense, PushForwardImplicit
from .outputs import EmpiricalFisher, MonteCarloFisher, OutputFunction, Regression, make_output
from .pmat import PMat
from .pmat.registry import lookup as lookup_representation
from .space import ParamSpace, Selector


def _fisher_output(kind: Any, n_samples: int | None, loss: Any, variance: float | None) -> OutputFunction:
    if isinstance(kind, str):
        key = kind.lower()
        if n_samples is not None and key not in ("mc", "monte-carlo"):
            raise InvalidInputError("n_samples only applies to kind='mc'")
        if loss is not None and key != "empirical":
            raise InvalidInputError("loss only applies to kind='empirical'")
        if variance is not None and key not in ("regression", "gauss-newton"):
            raise InvalidInputError("variance only applies to kind='regression'")
        if key in ("mc", "monte-carlo"):
            return MonteCarloFisher(1 if n_samples is None else n_samples)
        if key == "empirical":
            return EmpiricalFisher(loss)
        if key in ("regression", "gauss-newton"):
            return Regression(1.0 if variance is None else variance)
    elif n_samples is not None or loss is not None or variance is not None:
        raise InvalidInputError("n_samples/loss/variance apply to string kinds only")
    return make_output(kind)


def fim(model: nn.Module, data: Any, kind: Any = "exact", representation: Any = "dense", *,
        params: Selector | ParamSpace = None, n_samples: int | None = None, loss: Any = None,
        variance: float | None = None, centering: bool = False, batch_size: int | None = None,
        route: str = "auto", registry: LayerRegistry | None = None, seed: int = 0,
        memory_budget: Any = None, progress: bool | None = None, mixed: dict | None = None,
        kfac_approx: str = "expand", distributed: Any = None, precision: Any = None,
        options: EngineOptions | None = None) -> PMat:
    """Fisher information matrix (or GGN / empirical Fisher) of ``model`` on ``data``.

    ``F = (1/N) Σ_n Σ_c φ_c(x_n) φ_c(x_n)ᵀ`` where the pseudo-outputs ``s_c``
    depend on ``kind``:

    * ``"exact"``: softmax classifier, ``E_{y~p}[∇log p_y ∇log p_yᵀ]`` in closed form
      (``C−1`` outputs; a model with one logit is refused: its softmax is constant, use
      ``"binary"``);
    * ``"mc"``: the same with ``n_samples`` sampled labels per example;
    * ``"binary"``: sigmoid classifier with one logit;
    * ``"regression"``: Gaussian ``N(f(x), variance·I)``, i.e. ``JᵀJ/(N·variance)``
      (the Gauss–Newton matrix); ``"raw"`` is the same with unit variance;
    * ``"empirical"``: ``(1/N) Σ ∇ℓ_n ∇ℓ_nᵀ`` of per-example losses ``loss(z, y)``
      (default cross-entropy); needs targets. With class labels (the default loss, or an
      ``nn.CrossEntropyLoss``/``nn.NLLLoss`` with ``reduction='none'``) the examples whose
      label is the loss's ``ignore_index`` (``-100`` by default) are skipped: they have no
      loss, so they neither contribute nor count in ``N`` (the Fisher of the labelled
      examples; a batch with every label ignored is refused). Labels are checked: out of
      ``0 .. C−1`` or float ``(N,)`` labels are refused, ``int32`` and ``(N, 1)`` labels are
      converted to ``int64`` ``(N,)``;
    * a callable ``(model, batch) -> (N, C)``: the Jacobian outer products of its outputs.

    ``representation`` is a registered name or class: ``"dense"``, ``"diag"``, ``"blockdiag"``,
    ``"quasidiag"``, ``"lowrank"``, ``"kfac"``, ``"ekfac"``, ``"mixed"``, ``"implicit"`` and any
    added with :func:`tangentlab.pmat.register` (:func:`tangentlab.pmat.representations` lists
    them with what each stores and its memory).
    ``mixed`` (with ``representation="mixed"``) maps module paths or module types to
    representation names, overriding the default (EKFAC for Linear/Conv/Embedding,
    BlockDiag elsewhere). ``params`` restricts the parameter space; ``centering=True``
    centers the tangent features (``φ − E φ``).

    ``kfac_approx`` (``representation="kfac"``/``"ekfac"`` only): how the Kronecker factors
    treat a weight shared over ``T`` positions (sequence Linear, Conv; Eschenhagen et al.,
    2023): ``"expand"`` (positions as extra examples) or ``"reduce"`` (inputs averaged and
    output gradients summed over the positions first; cheaper, ``N·I²`` instead of ``N·T·I²``
    for ``A``). The default ``"expand"`` is KFC's classic normalization for convolutions and
    is exact when the outputs keep the positions (per-token or per-pixel outputs); ``"reduce"``
    is exact when the positions are pooled before a linear read-out (sequence or image
    classifiers). They coincide for ``T = 1``. EKFAC's ``s*`` uses the per-example gradients
    with either.

    ``distributed=True`` (or a process group): ``data`` is this rank's shard; the sums
    are all-reduced so every rank gets the Fisher of the union of the shards
    (see :mod:`tangentlab.distributed`).

    ``precision``: mixed-precision policy, e.g. ``"bf16"`` (bf16 Jacobians, float32
    sums), ``"model/fp64"`` (float64 products and sums for a float32 model); see
    :mod:`tangentlab.engine.precision` and ``benchmarks/PRECISION.md`` for the errors.

    Parameters
    ----------
    model : nn.Module
        The network; its outputs ``f(x)`` are ``(N, C)`` logits or regression outputs.
    data : Any
        The examples: a tensor of inputs, a tuple ``(x, y, ...)``, a DataLoader or a list of
        batches (see :class:`tangentlab.data.Batches`); ``y`` is needed by ``"empirical"``.
    kind : str or OutputFunction or callable
        The pseudo-outputs, as listed above.
    representation : str or type
        The storage of ``F``, as listed above.
    params : selector or ParamSpace, optional
        The parameters ``θ`` (names, module prefixes, modules, a predicate, or a space);
        None: those with ``requires_grad``.
    n_samples : int, optional
        Sampled labels per example (``kind="mc"`` only; default 1).
    loss : callable, optional
        Per-example loss ``(z, y) -> (N,)`` (``kind="empirical"`` only; default cross-entropy).
    variance : float, optional
        The Gaussian's variance (``kind="regression"`` only; default 1).
    centering : bool
        Center the tangent features, ``φ − E φ`` (a covariance instead of a second moment).
    batch_size : int, optional
        Split tensors into batches of this size (loaders keep theirs). The sums over
        examples may capture consecutive batches together, in chunks whose output-gradients
        stay within a fixed bound (same matrix up to rounding; not for Monte-Carlo outputs,
        whose labels are drawn per batch).
    route : str
        ``"auto"``, ``"generic"`` or ``"joint"``: how per-example gradients are computed.
    registry : LayerRegistry, optional
        The layer rules (default: the built-in ones).
    seed : int
        Seed of the sampled labels (``"mc"``), drawn per batch.
    memory_budget : Any
        Bytes (int or a string like ``"2GB"``) for the allocations the user did not size
        (default: half the free memory).
    progress : bool, optional
        Show progress bars (None: after 2 s on a terminal).
    mixed : dict, optional
        Module paths or types to representation names (``representation="mixed"``).
    kfac_approx : {"expand", "reduce"}
        The Kronecker factors of a weight shared over positions (``"kfac"``/``"ekfac"``), as
        described above.
    distributed : bool or process group, optional
        Sum over the ranks' shards, as described above.
    precision : str or dict or Precision, optional
        The mixed-precision policy, as described above.
    options : EngineOptions, optional
        All engine settings at once (:class:`EngineOptions`); the engine keywords ``route``
        to ``precision`` must then keep their defaults.

    Returns
    -------
    PMat
        ``F`` (``P × P``) in the requested representation, normalized by the number of
        examples ``N`` (mean over examples, sum over output coordinates).

    Raises
    ------
    InvalidInputError
        For arguments that do not fit ``kind``, bad labels, or data of the wrong shape.
    UnsupportedLayerError
        For a representation that a layer of the model cannot take (e.g. KFAC of a layer
        without a Kronecker rule).
    MemoryBudgetError
        When the representation does not fit the memory budget.
    """
    opts = EngineOptions.merge(options, route=route, registry=registry, seed=seed, memory_budget=memory_budget,
                               progress=progress, distributed=distributed, precision=precision)
    output = _fisher_output(kind, n_samples, loss, variance)
    engine = make_engine(model, opts, output, params)
    rep = lookup_representation(representation)
    extra = {}
    if rep.name in ("kfac", "ekfac"):
        extra["kfac_approx"] = check_approx(kfac_approx)
    elif kfac_approx != "expand":
        raise InvalidInputError("kfac_approx= applies to representation='kfac' or 'ekfac' only")
    if mixed is not None:
        if rep.name != "mixed":
            raise InvalidInputError("mixed= applies to representation='mixed' only")
        return rep.build(engine, Batches(data, batch_size), centering=centering, assign=mixed)
    return rep.build(engine, Batches(data, batch_size), centering=centering, **extra)


def ntk(model: nn.Module, x1: Any, x2: Any = None, *, output: Any = "raw",
        params: Selector | ParamSpace = None, per_layer: bool = False, centering: bool = False,
        batch_size: int | None = None, route: str = "auto", registry: LayerRegistry | None = None,
        seed: int = 0, memory_budget: Any = None, progress: bool | None = None, distributed: Any = None,
        precision: Any = None, options: EngineOptions | None = None) -> FMatDense:
    """Empirical neural tangent kernel ``K[n, m, c, d] = ⟨∂f_c(x_n)/∂θ, ∂f_d(x'_m)/∂θ⟩``.

    ``x2=None`` gives the kernel of ``x1`` with itself (each off-diagonal block
    computed once). Layout ``(N1, N2, C, D)``; no normalization. ``output`` may be
    a kind (``"raw"``, ``"exact"``...) or a callable ``(model, batch) -> (N, C)``
    such as a class difference ``lambda m, b: m(b[0])[:, 1] - m(b[0])[:, 0]``.
    ``per_layer=True`` also returns each layer's contribution (``K.layer(name)``);
    ``centering=True`` centers the tangent features by their mean over ``x1``.
    ``precision``: mixed-precision policy (as in :func:`fim`). ``distributed``: every rank
    passes the same ``x1``/``x2``; the kernel tiles are dealt round-robin to the ranks, as in
    :func:`tangentlab.ntk_large.ntk_tiled`, and every rank gets the whole kernel.

    Parameters
    ----------
    model : nn.Module
        The network.
    x1 : Any
        The first set of examples (``N1``), as ``data`` in :func:`fim`.
    x2 : Any, optional
        The second set (``N2``); None: ``x1``.
    output : str or OutputFunction or callable
        The outputs ``f`` whose tangent features are compared (default the raw outputs).
    params : selector or ParamSpace, optional
        The parameters, as in :func:`fim`.
    per_layer : bool
        Keep each layer's contribution.
    centering : bool
        Center the tangent features by their mean over ``x1``.
    batch_size : int, optional
        Split tensors into batches of this size.
    route, registry, seed, memory_budget, progress, distributed, precision, options
        Engine settings, as in :func:`fim` (``distributed`` as described above).

    Returns
    -------
    FMatDense
        The kernel ``(N1, N2, C, D)``, not normalized.
    """
    opts = EngineOptions.merge(options, route=route, registry=registry, seed=seed, memory_budget=memory_budget,
                               progress=progress, distributed=distributed, precision=precision)
    engine = make_engine(model, opts, make_output(output), params)
    b2 = None if x2 is None else Batches(x2, batch_size)
    return build_ntk(engine, Batches(x1, batch_size), b2, per_layer=per_layer, centering=centering)


def jacobian(model: nn.Module, data: Any, *, output: Any = "raw", params: Selector | ParamSpace = None,
             implicit: bool = False, batch_size: int | None = None, route: str = "auto",
             registry: LayerRegistry | None = None, seed: int = 0, memory_budget: Any = None,
             progress: bool | None = None, distributed: Any = None, precision: Any = None,
             options: EngineOptions | None = None) -> PushForwardDense | PushForwardImplicit:
    """The Jacobian ``J`` of the outputs on ``data`` as a map ``PVector → FVector``.

    Dense: ``J`` stored as ``(N, C, P)``; ``implicit=True``: forward-mode products,
    nothing stored. ``J.T`` is the pull-back ``Jᵀ``. ``precision`` as in :func:`fim`.
    ``distributed``: every rank passes the same full ``data`` and the ranks split its
    batches; ``J`` (and ``J v``, ``Jᵀ u``) are all-reduced, the same on every rank.

    Parameters
    ----------
    model : nn.Module
        The network.
    data : Any
        The ``N`` examples, as in :func:`fim`.
    output : str or OutputFunction or callable
        The outputs ``f`` (``C`` per example) to differentiate (default the raw outputs).
    params : selector or ParamSpace, optional
        The parameters (``P``), as in :func:`fim`.
    implicit : bool
        Matrix-free forward/backward products instead of the stored ``(N, C, P)`` tensor.
    batch_size : int, optional
        Split tensors into batches of this size.
    route, registry, seed, memory_budget, progress, distributed, precision, options
        Engine settings, as in :func:`fim` (``distributed`` as described above).

    Returns
    -------
    PushForwardDense or PushForwardImplicit
        ``J``, mapping a :class:`PVector` to an ``(N, C)`` :class:`FVector`, not normalized.
    """
    opts = EngineOptions.merge(options, route=route, registry=registry, seed=seed, memory_budget=memory_budget,
                               progress=progress, distributed=distributed, precision=precision)
    engine = make_engine(model, opts, make_output(output), params)
    b = Batches(data, batch_size)
    if implicit:
        return PushForwardImplicit(engine, b)
    return PushForwardDense.from_engine(engine, b)
