"""Spectra and alignments of Gram matrices (NTKs, layer NTKs, representation Grams).

Conventions (thesis ch. 6):

* A multi-output kernel is the ``(N·C, N·C)`` matrix with rows ``n·C + c``
  (example-major, as :meth:`tangentlab.FMatDense.as_matrix`); a 4-D ``(N, N, C, C)``
  kernel or an :class:`~tangentlab.FMatDense` is accepted and flattened that way.
* Centering modes: ``"examples"`` (default) centers the tangent features over the N
  examples separately for each output, ``K_c = (H_N ⊗ I_C) K (H_N ⊗ I_C)``;
  ``"full"`` is the CKA centering of all ``r = N·C`` rows, ``K_c = H_r K H_r``;
  ``None`` leaves K as it is. ``H_m = I_m − 11ᵀ/m``.
* Eigenvalues are sorted in decreasing order; tiny negative eigenvalues from
  round-off are clipped to zero by the statistics that need a distribution.
* All reductions are done in float64; scalars are returned as Python floats.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InvalidInputError

CENTERINGS = ("examples", "full", None)


def _matrix(K: Any) -> torch.Tensor:
    """``K`` as a square float64 matrix (accepts FMatDense, 4-D (N, N, C, C) and 2-D tensors)."""
    if hasattr(K, "as_matrix"):
        K = K.as_matrix()
    if not isinstance(K, torch.Tensor):
        K = torch.as_tensor(K)
    if K.dim() == 4:
        n1, n2, c, d = K.shape
        K = K.permute(0, 2, 1, 3).reshape(n1 * c, n2 * d)
    if K.dim() != 2 or K.shape[0] != K.shape[1]:
        raise InvalidInputError(f"expected a square kernel matrix, got shape {tuple(K.shape)}")
    if not torch.isfinite(K).all():
        raise InvalidInputError("the kernel contains NaN or Inf")
    return K.to(torch.float64)


def _n_outputs(K: Any, n_outputs: int | None) -> int:
    if n_outputs is not None:
        return int(n_outputs)
    if hasattr(K, "shape") and len(K.shape) == 4:
        return int(K.shape[2])
    return 1


def centering_matrix_apply(M: torch.Tensor, centering: str | None = "examples", n_outputs: int = 1) -> torch.Tensor:
    """Apply the centering projector to the rows of ``M`` (``(r,)`` or ``(r, k)``), r = N·C.

    Parameters
    ----------
    M : torch.Tensor
        ``(r,)`` or ``(r, k)``.
    centering : {"examples", "full", None}
        The centering mode (see the module docstring).
    n_outputs : int
        ``C``.

    Returns
    -------
    torch.Tensor
        ``P M``, the shape of ``M``.
    """
    if centering not in CENTERINGS:
        raise InvalidInputError(f"centering={centering!r}; accepted: 'examples', 'full', None")
    if centering is None:
        return M
    squeeze = M.dim() == 1
    X = M.unsqueeze(1) if squeeze else M
    r = X.shape[0]
    if centering == "full":
        X = X - X.mean(dim=0, keepdim=True)
    else:
        if r % n_outputs:
            raise InvalidInputError(f"{r} rows are not a multiple of n_outputs={n_outputs}")
        Xv = X.reshape(r // n_outputs, n_outputs, -1)
        X = (Xv - Xv.mean(dim=0, keepdim=True)).reshape(r, -1)
    return X.squeeze(1) if squeeze else X


def center(K: Any, centering: str | None = "examples", n_outputs: int | None = None) -> torch.Tensor:
    """The centered kernel ``P K P`` for the projector of ``centering`` (see the module doc).

    Parameters
    ----------
    K : FMatDense or torch.Tensor
        A symmetric kernel: ``(r, r)`` with ``r = N·C``, ``(N, N, C, C)``, or an FMatDense.
    centering : {"examples", "full", None}
        The centering mode (see the module docstring).
    n_outputs : int, optional
        ``C`` (None: from a 4-D kernel, else 1).

    Returns
    -------
    torch.Tensor
        ``(r, r)``, float64.
    """
    c = _n_outputs(K, n_outputs)
    Km = _matrix(K)
    Km = centering_matrix_apply(Km, centering, c)
    return centering_matrix_apply(Km.T.contiguous(), centering, c).T.contiguous()


def eigh_desc(K: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (decreasing) and eigenvectors (columns) of a symmetric kernel, float64.

    Parameters
    ----------
    K : FMatDense or torch.Tensor
        A symmetric kernel: ``(r, r)`` with ``r = N·C``, ``(N, N, C, C)``, or an FMatDense.

    Returns
    -------
    evals : torch.Tensor
        ``(r,)``, decreasing.
    evecs : torch.Tensor
        ``(r, r)``, eigenvectors as columns.
    """
    Km = _matrix(K)
    evals, evecs = torch.linalg.eigh(0.5 * (Km + Km.T))
    return evals.flip(0), evecs.flip(1)


def _eigs(eigs: torch.Tensor) -> torch.Tensor:
    e = torch.as_tensor(eigs).to(torch.float64).flatten()
    if e.numel() == 0:
        raise InvalidInputError("no eigenvalues given")
    return torch.sort(e.clamp_min(0.0), descending=True).values


def effective_rank(eigs: torch.Tensor) -> float:
    """Roy–Vetterli effective rank ``exp(H(μ))``, ``μ_j = λ_j / Σλ`` (zero eigenvalues skipped).

    Lies in ``[1, rank K]``; an all-zero spectrum has effective rank 0.

    Parameters
    ----------
    eigs : torch.Tensor
        The eigenvalues ``(r,)`` (sorted here in decreasing order).

    Returns
    -------
    float
        The effective rank.
    """
    e = _eigs(eigs)
    total = e.sum()
    if total <= 0:
        return 0.0
    mu = e[e > 0] / total
    return float(torch.exp(-(mu * mu.log()).sum()))


def trace_ratios(eigs: torch.Tensor, ks: Any = None) -> torch.Tensor:
    """Top-k mass ``T_k = Σ_{j≤k} λ_j / Σ_j λ_j`` for ``k = 1..r`` (or only the ``ks`` given).

    The thesis writes ``Σ_{j<k}``; its code takes the top ``k+1``. Here ``T_k`` is the
    mass of the ``k`` largest eigenvalues, so ``T_r = 1``.

    Parameters
    ----------
    eigs : torch.Tensor
        The eigenvalues ``(r,)`` (sorted here in decreasing order).
    ks : sequence of int, optional
        Orders ``k`` in ``1..r`` (None: all).

    Returns
    -------
    torch.Tensor
        ``T_k``, ``(r,)`` or ``(len(ks),)``.

    Raises
    ------
    InvalidInputError
        For an order outside ``1..r``.
    """
    e = _eigs(eigs)
    total = e.sum()
    cum = e.cumsum(0) / total if total > 0 else torch.zeros_like(e)
    if ks is None:
        return cum
    idx = torch.as_tensor(ks, dtype=torch.long).flatten()
    if (idx < 1).any() or (idx > e.numel()).any():
        raise InvalidInputError(f"trace ratio orders must lie in 1..{e.numel()}, got {idx.tolist()}")
    return cum[idx - 1]


def spectrum_stats(eigs: torch.Tensor, ks: Any = (), ratios: Any = ()) -> dict[str, float]:
    """``max``, ``mean``, ``median`` eigenvalue, ``erank``, ``trace``, then ``T_k`` for ``k`` in
    ``ks`` and ``λ_k/λ_1`` for ``k`` in ``ratios`` (keys ``T{k}`` and ``ratio{k}``).

    Parameters
    ----------
    eigs : torch.Tensor
        The eigenvalues ``(r,)`` (sorted here in decreasing order).
    ks : sequence of int
        Orders of the trace ratios (those above ``r`` are skipped).
    ratios : sequence of int
        Orders of the eigenvalue ratios (those outside ``1..r`` are skipped).

    Returns
    -------
    dict of str to float
        The statistics.
    """
    e = _eigs(eigs)
    out = {"max": float(e[0]), "mean": float(e.mean()), "median": float(e.median()),
           "erank": effective_rank(e), "trace": float(e.sum())}
    ks = [int(k) for k in ks if int(k) <= e.numel()]
    if ks:
        for k, t in zip(ks, trace_ratios(e, ks).tolist(), strict=True):
            out[f"T{k}"] = t
    for k in ratios:
        k = int(k)
        if 1 <= k <= e.numel():
            out[f"ratio{k}"] = float(e[k - 1] / e[0]) if e[0] > 0 else 0.0
    return out


def kernel_alignment(K1: Any, K2: Any) -> float:
    """Uncentered kernel alignment ``KA = Tr[K1 K2] / (‖K1‖_F ‖K2‖_F)`` (Cristianini et al.).

    Parameters
    ----------
    K1, K2 : FMatDense or torch.Tensor
        Kernels of one shape, as in :func:`center`.

    Returns
    -------
    float
        The alignment (0 when a kernel is zero).

    Raises
    ------
    InvalidInputError
        For kernels of different shapes.
    """
    A, B = _matrix(K1), _matrix(K2)
    if A.shape != B.shape:
        raise InvalidInputError(f"kernels of different shapes {tuple(A.shape)} and {tuple(B.shape)}")
    den = torch.linalg.norm(A) * torch.linalg.norm(B)
    return float((A * B).sum() / den) if den > 0 else 0.0


def kernel_distance(K0: Any, K1: Any) -> float:
    """Kernel distance ``1 − KA(K0, K1)`` (0 for proportional kernels).

    Parameters
    ----------
    K0, K1 : FMatDense or torch.Tensor
        Kernels of one shape.

    Returns
    -------
    float
        The distance.
    """
    return 1.0 - kernel_alignment(K0, K1)


def cka(K1: Any, K2: Any, centering: str | None = "examples", n_outputs: int | None = None) -> float:
    """Centered kernel alignment ``Tr[K1_c K2_c] / (‖K1_c‖_F ‖K2_c‖_F)`` (Cortes et al.).

    Parameters
    ----------
    K1, K2 : FMatDense or torch.Tensor
        Kernels of one shape.
    centering : {"examples", "full", None}
        The centering mode (see the module docstring).
    n_outputs : int, optional
        ``C`` (None: from a 4-D kernel, else 1).

    Returns
    -------
    float
        The CKA.
    """
    c = _n_outputs(K1, n_outputs)
    return kernel_alignment(center(K1, centering, c), center(K2, centering, c))


def label_vector(y: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """The label vector ``Y`` whose outer product is the label kernel ``K_Y = Y Yᵀ``.

    Integer class labels give the concatenated one-hot vectors (length ``N·C``,
    example-major, matching the NTK's row order); float labels (±1 binary targets,
    regression targets ``(N,)`` or ``(N, C)``) are flattened as they are.

    Parameters
    ----------
    y : torch.Tensor
        ``(N,)`` integer labels, or float targets.
    num_classes : int, optional
        ``C`` for integer labels (None: ``max(y) + 1``).

    Returns
    -------
    torch.Tensor
        ``Y``, float64, flat.

    Raises
    ------
    InvalidInputError
        For labels that are not 1-D or not in ``0..C−1``.
    """
    y = torch.as_tensor(y)
    if y.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool):
        if y.dim() != 1:
            raise InvalidInputError(f"class labels must be 1-D, got shape {tuple(y.shape)}")
        c = int(num_classes) if num_classes is not None else int(y.max()) + 1
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= c):
            raise InvalidInputError(f"class labels must lie in 0..{c - 1}")
        return torch.nn.functional.one_hot(y.long(), c).to(torch.float64).flatten()
    return y.to(torch.float64).flatten()


def cka_with_labels(K: Any, y: torch.Tensor, centering: str | None = "examples",
                    num_classes: int | None = None) -> float:
    """``CKA(K, Y Yᵀ) = Y_cᵀ K_c Y_c / (‖K_c‖_F ‖Y_c‖²)`` without forming ``Y Yᵀ``.

    ``y``: class labels (one-hot label kernel over the ``N·C`` rows) or float targets.
    The number of outputs is ``K``'s size divided by the number of examples.

    Parameters
    ----------
    K : FMatDense or torch.Tensor
        A symmetric kernel: ``(r, r)`` with ``r = N·C``, ``(N, N, C, C)``, or an FMatDense.
    y : torch.Tensor
        ``(N,)`` labels or float targets.
    centering : {"examples", "full", None}
        The centering mode (see the module docstring).
    num_classes : int, optional
        ``C`` for integer labels.

    Returns
    -------
    float
        The CKA with the label kernel.

    Raises
    ------
    InvalidInputError
        When the kernel's size does not match the labels.
    """
    Km = _matrix(K)
    Y = label_vector(y, num_classes)
    n = torch.as_tensor(y).shape[0]
    if Km.shape[0] != Y.numel() or Km.shape[0] % n:
        raise InvalidInputError(f"kernel of size {Km.shape[0]} does not match {n} examples with label vector "
                                f"of length {Y.numel()}")
    c = Km.shape[0] // n
    Kc = center(Km, centering, c)
    Yc = centering_matrix_apply(Y, centering, c)
    den = torch.linalg.norm(Kc) * Yc.dot(Yc)
    return float(Yc @ Kc @ Yc / den) if den > 0 else 0.0


def kernel_pca(K: Any, k: int, centering: str | None = "examples", n_outputs: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel-PCA coordinates of the ``r`` rows on the top ``k`` components.

    Returns ``(coords (r, k), eigenvalues (k,))`` with ``coords[:, j] = √λ_j u_j`` for the
    eigenpairs ``(λ_j, u_j)`` of the centered kernel.

    Parameters
    ----------
    K : FMatDense or torch.Tensor
        A symmetric kernel: ``(r, r)`` with ``r = N·C``, ``(N, N, C, C)``, or an FMatDense.
    k : int
        The number of components (at most ``r``).
    centering : {"examples", "full", None}
        The centering mode (see the module docstring).
    n_outputs : int, optional
        ``C`` (None: from a 4-D kernel, else 1).

    Returns
    -------
    coords : torch.Tensor
        ``(r, k)``.
    evals : torch.Tensor
        ``(k,)``, clipped at 0.
    """
    Kc = center(K, centering, _n_outputs(K, n_outputs))
    evals, evecs = eigh_desc(Kc)
    k = min(int(k), evals.numel())
    lam = evals[:k].clamp_min(0.0)
    return evecs[:, :k] * lam.sqrt(), lam


def label_energy(evecs: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Cumulative energy ``‖U_kᵀ Y‖² / ‖Y‖²`` of the labels on the top-``k`` eigenvectors, ``k = 1..r``.

    ``evecs`` are the eigenvectors (columns, decreasing eigenvalues) of a kernel on the
    same rows as :func:`label_vector` ``(y)``.

    Parameters
    ----------
    evecs : torch.Tensor
        ``(r, k)``, eigenvectors as columns.
    y : torch.Tensor
        ``(N,)`` labels or float targets.
    num_classes : int, optional
        ``C`` for integer labels.

    Returns
    -------
    torch.Tensor
        ``(k,)``, non-decreasing, at most 1.

    Raises
    ------
    InvalidInputError
        When the eigenvectors' rows do not match the label vector.
    """
    Y = label_vector(y, num_classes)
    U = torch.as_tensor(evecs).to(torch.float64)
    if U.shape[0] != Y.numel():
        raise InvalidInputError(f"eigenvectors have {U.shape[0]} rows, label vector has {Y.numel()}")
    proj = (U.T @ Y) ** 2
    return proj.cumsum(0) / Y.dot(Y)
