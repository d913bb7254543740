"""Probes during training: NTK spectra and alignments at log-spaced steps.

A :class:`Probe` holds fixed probe batches (:class:`ProbeSet`: inputs and labels, e.g.
100 training and 100 test examples) and, given a model, evaluates on each of them
(thesis ch. 6):

* the empirical NTK ``K[n, m, c, d] = ⟨∂f_c(x_n)/∂θ, ∂f_d(x_m)/∂θ⟩`` by :func:`tangentlab.ntk`
  (per-layer engine, float64 copy of the model), flattened to the ``(N·C) × (N·C)``
  matrix with rows ``n·C + c`` and centered according to ``centering``
  (``"examples"``: ``(H_N ⊗ I_C) K (H_N ⊗ I_C)``, i.e. tangent features centered over the
  examples for each output; ``"full"``: ``H_r K H_r`` with ``r = N·C``; ``None``: uncentered);
* its spectrum ``λ_1 ≥ … ≥ λ_r`` (float64 ``eigh``): ``max``, ``mean`` (= Tr K_c / r),
  ``median``, ``trace``, the effective rank ``erank = exp(H(λ/Σλ))`` (zero eigenvalues
  skipped), the top-k mass ``T_k = Σ_{j≤k} λ_j / Σ_j λ_j`` for ``ks`` and ``λ_k/λ_1`` for
  ``ratios`` (metric names ``T{k}``, ``ratio{k}``);
* ``cka``: the centered kernel alignment with the label kernel ``Y Yᵀ`` (``Y`` the
  concatenated one-hot labels, same row order; ``±1`` for a single-output binary model):
  ``Y_cᵀ K_c Y_c / (‖K_c‖_F ‖Y_c‖²)``; with ``per_layer`` the same for each layer's kernel
  ``K^ℓ`` (rows with ``layer`` = the module path, ``K = Σ_ℓ K^ℓ``);
* ``kernel_distance``: ``1 − ⟨K_c(0), K_c(t)⟩_F / (‖K_c(0)‖_F ‖K_c(t)‖_F)`` against the
  reference kernel (by default the first one evaluated; :meth:`Probe.set_reference`);
* ``loss`` (cross-entropy; binary cross-entropy with logits for one output) and
  ``accuracy`` of the model on the probe batch;
* the kernel-PCA coordinates ``√λ_j u_j`` of the ``r`` rows on the top ``n_pca``
  components of ``K_c`` (returned in :attr:`ProbeResult.pca`, not as metric rows), and
  optionally the whole spectrum (:attr:`ProbeResult.spectra`).

Rows are tidy: ``{"step", "probe", "metric", "layer", "value"}`` (``layer`` is ``""`` for
the whole network). Schedules: :func:`thesis_schedule` (``0`` and ``5·⌊1.15^k⌋``, thesis
ch. 6) and :func:`decade_schedule` (``0`` and ``round(10^{k/10})``).

Use from a training loop: :class:`ProbeCallback` (``cb(step, model)``), the plain loop
:func:`train_with_probes` (seeded minibatches from
:class:`~tangentlab.studies.framework.training.BatchStream`, resumable), or, when PyTorch
Lightning is installed, :func:`lightning_callback`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...analysis.kernels import (
    CENTERINGS,
    center,
    cka_with_labels,
    eigh_desc,
    kernel_distance,
    spectrum_stats,
)
from ...api import ntk
from ...errors import InvalidInputError
from ...training import BatchStream, train_step

ROW_COLUMNS = ["step", "probe", "metric", "layer", "value"]
SCHEDULES = ("thesis", "decade")
#: Metric groups a :class:`Probe` can compute.
METRIC_GROUPS = ("spectrum", "cka", "layers", "distance", "loss", "pca")


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------
def _growing_steps(step_k: Callable[[int], int], max_step: int, include_last: bool) -> list[int]:
    """``{0} ∪ {step_k(k) : k = 0, 1, …, while ≤ max_step}`` (``step_k`` nondecreasing and
    unbounded), plus ``max_step`` when ``include_last``; sorted, deduplicated."""
    steps = {0}
    k = 0
    while (s := step_k(k)) <= max_step:
        steps.add(s)
        k += 1
    if include_last and max_step >= 0:
        steps.add(int(max_step))
    return sorted(steps)


def thesis_schedule(max_step: int, base: float = 1.15, scale: int = 5, include_last: bool = True) -> list[int]:
    """``{0} ∪ {scale·⌊base^k⌋ : k = 0, 1, …} ∩ [0, max_step]`` (thesis ch. 6: ``5·⌊1.15^k⌋``),
    sorted and deduplicated, plus ``max_step`` itself when ``include_last``."""
    if base <= 1 or scale < 1:
        raise InvalidInputError(f"thesis_schedule needs base > 1 and scale >= 1, got base={base}, scale={scale}")
    return _growing_steps(lambda k: scale * math.floor(base ** k), max_step, include_last)


def decade_schedule(max_step: int, per_decade: int = 10, include_last: bool = True) -> list[int]:
    """``{0} ∪ {round(10^{k/per_decade}) : k = 0, 1, …} ∩ [0, max_step]`` (``per_decade = 10``:
    ``round(10^{0.1k})``), plus ``max_step`` when ``include_last``."""
    if per_decade < 1:
        raise InvalidInputError(f"decade_schedule needs per_decade >= 1, got {per_decade}")
    return _growing_steps(lambda k: int(round(10 ** (k / per_decade))), max_step, include_last)


def log_schedule(kind: str, max_step: int, base: float = 1.15) -> list[int]:
    """:func:`thesis_schedule` (``kind="thesis"``, growth ``base``) or :func:`decade_schedule`."""
    if kind == "thesis":
        return thesis_schedule(max_step, base)
    if kind == "decade":
        return decade_schedule(max_step)
    raise InvalidInputError(f"unknown schedule {kind!r}; accepted: {', '.join(SCHEDULES)}")


# ---------------------------------------------------------------------------------------------
# the probe
# ---------------------------------------------------------------------------------------------
@dataclass
class ProbeSet:
    """A fixed probe batch: inputs ``x`` and labels ``y`` (class indices, or ``{0, 1}`` /
    ``±1`` targets for a single-output binary model)."""

    name: str
    x: torch.Tensor
    y: torch.Tensor


@dataclass
class ProbeResult:
    """What one :meth:`Probe.evaluate` call returns.

    ``rows``: tidy metric rows; ``pca``: ``probe → (r, n_pca)`` kernel-PCA coordinates;
    ``spectra``: ``probe → (r,)`` eigenvalues (descending, when ``keep_spectrum``);
    ``eigvecs``: ``probe → (r, k)`` top eigenvectors of ``K_c`` (when ``keep_eigvecs = k``)."""

    step: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    pca: dict[str, torch.Tensor] = field(default_factory=dict)
    spectra: dict[str, torch.Tensor] = field(default_factory=dict)
    eigvecs: dict[str, torch.Tensor] = field(default_factory=dict)

    def value(self, probe: str, metric: str, layer: str = "") -> float:
        """The value of one metric row (``KeyError`` when absent)."""
        for r in self.rows:
            if r["probe"] == probe and r["metric"] == metric and r["layer"] == layer:
                return float(r["value"])
        raise KeyError((probe, metric, layer))


def label_target(y: torch.Tensor, n_outputs: int) -> torch.Tensor:
    """The labels whose :func:`~tangentlab.analysis.kernels.label_vector` matches a kernel with
    ``n_outputs`` outputs: class indices for ``C > 1`` (one-hot), ``±1`` floats for ``C = 1``
    (``{0, 1}`` labels are mapped to ``2y − 1``)."""
    if n_outputs > 1:
        return y.long()
    yf = y.to(torch.float64).flatten()
    if bool(((yf == 0) | (yf == 1)).all()):
        yf = 2 * yf - 1
    return yf


def probe_loss(out: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean loss and accuracy of outputs ``out`` (``(N, C)``): cross-entropy for ``C > 1``;
    binary cross-entropy with logits for ``C = 1`` (labels ``{0, 1}`` or ``±1``)."""
    if out.shape[1] > 1:
        loss = nn.functional.cross_entropy(out, y.long())
        acc = (out.argmax(1) == y.long()).to(torch.float64).mean()
        return float(loss), float(acc)
    z = out[:, 0]
    t = label_target(y, 1)
    t01 = (t > 0).to(z.dtype)
    loss = nn.functional.binary_cross_entropy_with_logits(z, t01)
    acc = ((z > 0) == (t > 0)).to(torch.float64).mean()
    return float(loss), float(acc)


class Probe:
    """Evaluates kernel metrics of a model on fixed probe batches (see the module docstring).

    ``metrics``: the groups to compute among :data:`METRIC_GROUPS`; ``ks`` / ``ratios``:
    orders of ``T_k`` and ``λ_k/λ_1``; ``centering``: ``"examples"``, ``"full"`` or ``None``;
    ``n_pca``: kernel-PCA components; ``keep_spectrum``: return all eigenvalues;
    ``keep_eigvecs``: return the top-k eigenvectors; ``dtype``: precision of the kernel
    (float64 by default; the model is copied to it)."""

    def __init__(self, probes: Sequence[ProbeSet], *, metrics: Iterable[str] = METRIC_GROUPS,
                 ks: Sequence[int] = (), ratios: Sequence[int] = (), centering: str | None = "examples",
                 n_pca: int = 3, keep_spectrum: bool = False, keep_eigvecs: int = 0,
                 dtype: torch.dtype = torch.float64, batch_size: int | None = None):
        if centering not in CENTERINGS:
            raise InvalidInputError(f"centering={centering!r}; accepted: 'examples', 'full', None")
        metrics = tuple(metrics)
        bad = [m for m in metrics if m not in METRIC_GROUPS]
        if bad:
            raise InvalidInputError(f"unknown probe metrics {bad}; accepted: {', '.join(METRIC_GROUPS)}")
        names = [p.name for p in probes]
        if len(set(names)) != len(names) or not names:
            raise InvalidInputError(f"probe names must be unique and non-empty, got {names}")
        for p in probes:
            if p.x.shape[0] != p.y.shape[0] or p.x.shape[0] < 2:
                raise InvalidInputError(f"probe {p.name!r}: {p.x.shape[0]} inputs for {p.y.shape[0]} labels "
                                        "(need equal sizes, at least 2)")
        self.probes = list(probes)
        self.metrics = metrics
        self.ks = tuple(int(k) for k in ks)
        self.ratios = tuple(int(k) for k in ratios)
        self.centering = centering
        self.n_pca = int(n_pca)
        self.keep_spectrum = keep_spectrum
        self.keep_eigvecs = int(keep_eigvecs)
        self.dtype = dtype
        self.batch_size = batch_size
        self.reference: dict[str, torch.Tensor] = {}

    # ---- kernels -------------------------------------------------------------------------------
    def _model(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` in the probe's dtype, in eval mode (the model itself is untouched)."""
        m = copy.deepcopy(model).to(dtype=self.dtype)
        return m.eval()

    def kernel(self, model: nn.Module, probe: ProbeSet, per_layer: bool = False):
        """The raw NTK (:class:`~tangentlab.FMatDense`) of ``model`` on ``probe`` (model used as is)."""
        dev = next(model.parameters()).device
        return ntk(model, probe.x.to(dev, self.dtype), per_layer=per_layer, batch_size=self.batch_size,
                   progress=False)

    def set_reference(self, model: nn.Module) -> None:
        """Take ``model``'s centered kernels as the reference of ``kernel_distance`` (nothing to do
        when ``distance`` is not among the metrics)."""
        if "distance" not in self.metrics:
            return
        m = self._model(model)
        for p in self.probes:
            K = self.kernel(m, p)
            self.reference[p.name] = center(K, self.centering, K.shape[2])

    # ---- evaluation ------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, step: int, vectors: bool = True) -> ProbeResult:
        """All metric rows of ``model`` at ``step`` (the model is not modified).

        ``vectors=False`` skips what needs eigenvectors (kernel PCA, ``keep_eigvecs``): the
        spectrum then comes from ``eigvalsh`` (eigenvalues only, cheaper than ``eigh``)."""
        m = self._model(model)
        res = ProbeResult(int(step))
        per_layer = "layers" in self.metrics
        want_pca = vectors and "pca" in self.metrics and self.n_pca > 0
        want_vecs = vectors and self.keep_eigvecs > 0
        for p in self.probes:
            rows = res.rows

            def add(metric: str, value: float, layer: str = "", name: str = p.name) -> None:
                rows.append({"step": int(step), "probe": name, "metric": metric, "layer": layer,
                             "value": float(value)})

            if "loss" in self.metrics:
                with torch.no_grad():
                    out = m(p.x.to(next(m.parameters()).device, self.dtype))
                loss, acc = probe_loss(out.reshape(out.shape[0], -1), p.y.to(out.device))
                add("loss", loss)
                add("accuracy", acc)
            if not set(self.metrics) & {"spectrum", "cka", "layers", "distance", "pca"}:
                continue
            K = self.kernel(m, p, per_layer)
            C = int(K.shape[2])
            Kc = center(K, self.centering, C)
            y = label_target(p.y, C)
            n_classes = C if C > 1 else None
            if "spectrum" in self.metrics or self.keep_spectrum or want_vecs or want_pca:
                if want_vecs or want_pca:
                    evals, evecs = eigh_desc(Kc)
                else:
                    evals, evecs = torch.linalg.eigvalsh(0.5 * (Kc + Kc.T)).flip(0), None
                if "spectrum" in self.metrics:
                    for k, v in spectrum_stats(evals, self.ks, self.ratios).items():
                        add(k, v)
                if self.keep_spectrum:
                    res.spectra[p.name] = evals.clamp_min(0.0)
                if want_vecs:
                    res.eigvecs[p.name] = evecs[:, :self.keep_eigvecs]
                if want_pca:  # = kernel_pca(Kc, n_pca, centering=None), from the same eigenpairs
                    k = min(self.n_pca, evals.numel())
                    res.pca[p.name] = evecs[:, :k] * evals[:k].clamp_min(0.0).sqrt()
            if "cka" in self.metrics:
                add("cka", cka_with_labels(Kc, y, self.centering, n_classes))
            if per_layer and K.layers:
                for name, Kl in K.layers.items():
                    add("cka", cka_with_labels(Kl, y, self.centering, n_classes), name)
            if "distance" in self.metrics:
                if p.name not in self.reference:
                    self.reference[p.name] = Kc
                add("kernel_distance", kernel_distance(self.reference[p.name], Kc))
        return res


# ---------------------------------------------------------------------------------------------
# callbacks and the training loop
# ---------------------------------------------------------------------------------------------
class ProbeCallback:
    """``cb(step, model)`` evaluates ``probe`` when ``step`` is in ``steps`` (else does nothing).

    Each :class:`ProbeResult` goes to ``sink(result)`` when given, and is kept in
    :attr:`results` otherwise (:attr:`rows` concatenates their metric rows). Steps already
    probed are skipped (a step is probed once even if called twice). ``vector_steps``: the
    steps at which eigenvectors (kernel PCA, kept eigenvectors) are computed (default: all)."""

    def __init__(self, probe: Probe, steps: Iterable[int], sink: Callable[[ProbeResult], None] | None = None,
                 vector_steps: Iterable[int] | None = None):
        self.probe = probe
        self.steps = set(int(s) for s in steps)
        self.vector_steps = None if vector_steps is None else set(int(s) for s in vector_steps)
        self.sink = sink
        self.results: list[ProbeResult] = []
        self.done: set[int] = set()

    def __call__(self, step: int, model: nn.Module) -> ProbeResult | None:
        """Probe ``model`` at ``step`` if it is a scheduled step not probed yet; returns the result
        (``None`` otherwise)."""
        step = int(step)
        if step not in self.steps or step in self.done:
            return None
        vectors = self.vector_steps is None or step in self.vector_steps
        res = self.probe.evaluate(model, step, vectors=vectors)
        self.done.add(step)
        if self.sink is not None:
            self.sink(res)
        else:
            self.results.append(res)
        return res

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The metric rows of every kept result, in probing order."""
        return [r for res in self.results for r in res.rows]


@dataclass
class TrainingState:
    """What :func:`train_with_probes` needs to resume: the step reached and the minibatch stream."""

    step: int
    stream: BatchStream


def train_with_probes(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
                      steps: int, batch_size: int, seed: int = 0,
                      callbacks: Sequence[Callable[[int, nn.Module], Any]] = (),
                      loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                      state: TrainingState | None = None,
                      on_step: Callable[[int, float], None] | None = None,
                      after_callbacks: Callable[[int, TrainingState], None] | None = None,
                      progress: bool | None = None, desc: str = "training") -> TrainingState:
    """Minibatch training for ``steps`` optimizer steps with callbacks.

    At each step ``t = start … steps`` every callback is called as ``cb(t, model)`` *before*
    update ``t`` (so ``t = 0`` sees the initialization and ``t = steps`` the final model),
    then ``after_callbacks(t, state)`` (e.g. to save a checkpoint), then — for ``t < steps``
    — one :func:`~tangentlab.studies.framework.training.train_step` on the next minibatch of a
    :class:`~tangentlab.studies.framework.training.BatchStream` seeded with ``seed`` (``batch_size ≥ N``
    is full-batch gradient descent), and ``on_step(t, loss)``. ``state`` (from an earlier
    call or a checkpoint) resumes at ``state.step``. Returns the final state; the model is
    left in eval mode."""
    from tqdm.auto import tqdm

    st = state or TrainingState(0, BatchStream(x.shape[0], min(batch_size, x.shape[0]), seed))
    bar = tqdm(total=steps, initial=st.step, desc=desc, unit="step", leave=False,
               disable=None if progress is None else not progress)
    try:
        for t in range(st.step, steps + 1):
            st.step = t
            for cb in callbacks:
                cb(t, model)
            if after_callbacks is not None:
                after_callbacks(t, st)
            if t == steps:
                break
            idx = st.stream.next().to(x.device)
            loss = train_step(model, opt, x[idx], y[idx], loss_fn)
            if on_step is not None:
                on_step(t, loss)
            bar.update(1)
            if not math.isfinite(loss):
                raise InvalidInputError(f"training diverged at step {t} (loss {loss}); lower the learning rate")
    finally:
        bar.close()
        model.eval()
    return st


def bce_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits of a single-output model (labels ``{0, 1}`` or ``±1``)."""
    t = label_target(y, 1).to(out.dtype)
    return nn.functional.binary_cross_entropy_with_logits(out.reshape(-1), (t > 0).to(out.dtype))


def lightning_available() -> bool:
    """Whether ``lightning`` or ``pytorch_lightning`` can be imported."""
    try:
        import lightning  # noqa: F401
    except ImportError:
        try:
            import pytorch_lightning  # noqa: F401
        except ImportError:
            return False
    return True


def lightning_callback(callback: ProbeCallback) -> Any:
    """A PyTorch Lightning ``Callback`` that calls ``callback(trainer.global_step, pl_module)``
    at the start of training and after every training batch. Needs ``lightning`` or
    ``pytorch_lightning`` (an :class:`ImportError` naming them otherwise)."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            raise ImportError("lightning_callback needs `lightning` or `pytorch_lightning` installed") from None

    class ProbeLightningCallback(pl.Callback):  # type: ignore[misc,name-defined]
        def __init__(self, cb: ProbeCallback):
            super().__init__()
            self.cb = cb

        def on_train_start(self, trainer: Any, pl_module: nn.Module) -> None:
            self.cb(trainer.global_step, pl_module)

        def on_train_batch_end(self, trainer: Any, pl_module: nn.Module, *args: Any, **kwargs: Any) -> None:
            self.cb(trainer.global_step, pl_module)

    return ProbeLightningCallback(callback)


def rows_by(rows: Iterable[Mapping[str, Any]], probe: str, metric: str, layer: str = "") -> list[tuple[int, float]]:
    """``(step, value)`` of one probe × metric × layer, sorted by step (values as floats)."""
    out = [(int(r["step"]), float(r["value"])) for r in rows
           if r["probe"] == probe and r["metric"] == metric and (r.get("layer") or "") == layer]
    return sorted(out)
