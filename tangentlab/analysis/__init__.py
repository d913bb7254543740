"""Analysis of kernels, spectra and training trajectories.

* :mod:`.kernels`: spectrum statistics (effective rank, trace ratios), kernel
  alignment, centered kernel alignment (CKA) with label kernels, kernel PCA,
  kernel distance, label energy on top eigenvectors.

These functions take plain tensors (an ``(r, r)`` Gram matrix, eigenvalues, labels),
so they work on any kernel: an NTK from :func:`tangentlab.ntk` (``K.as_matrix()``),
a per-layer NTK, a representation Gram matrix.
"""

from .kernels import (
    center,
    centering_matrix_apply,
    cka,
    cka_with_labels,
    effective_rank,
    eigh_desc,
    kernel_alignment,
    kernel_distance,
    kernel_pca,
    label_energy,
    label_vector,
    spectrum_stats,
    trace_ratios,
)

__all__ = [
    "center", "centering_matrix_apply", "cka", "cka_with_labels", "effective_rank", "eigh_desc",
    "kernel_alignment", "kernel_distance", "kernel_pca", "label_energy", "label_vector",
    "spectrum_stats", "trace_ratios",
]
