"""Thread-pool limits for the duration of a ``with`` block.

Tiny models train much faster with few threads on a loaded machine, and study tables are
bit-identical only at a fixed thread count (float32 reductions are summed in an order
that depends on it), so studies pin both torch's intra-op pool and the BLAS pools that
numpy/scipy use outside torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads inside the block, restored afterwards
    (``None`` or ``0``: unchanged)."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def blas_threads(n: int) -> contextlib.AbstractContextManager[object]:
    """Limit the BLAS thread pools outside torch (numpy/scipy OpenBLAS or MKL) to ``n`` threads
    inside the block (``n = 0``, or no ``threadpoolctl``: unchanged)."""
    if n <= 0:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - shipped with scikit-learn
        return contextlib.nullcontext()
    with contextlib.suppress(ImportError):  # scipy ships its own BLAS: load it now so the limit covers it
        import scipy.linalg  # noqa: F401
    return threadpool_limits(limits=n, user_api="blas")
