"""Error types raised by tangentlab.

Every error a user can trigger derives from :class:`TangentlabError`, and each
also derives from the closest built-in exception so existing ``except`` clauses
keep working.
"""

from __future__ import annotations


class TangentlabError(Exception):
    """Base class of every error raised on purpose by tangentlab."""


class UnsupportedOperationError(TangentlabError, NotImplementedError):
    """A representation was asked for a verb it cannot do.

    The message always names a representation (or another verb) that can do it;
    the suggestion is also available as :attr:`alternative`.

    Parameters
    ----------
    representation : str
        The class name of the representation.
    verb : str
        The verb it cannot do.
    alternative : str
        A representation or verb that can.
    why : str
        Why not (optional).
    """

    def __init__(self, representation: str, verb: str, alternative: str, why: str = ""):
        self.representation = representation
        self.verb = verb
        self.alternative = alternative
        msg = f"{representation} cannot do `{verb}`"
        if why:
            msg += f" ({why})"
        msg += f"; use {alternative} instead."
        super().__init__(msg)


class MemoryBudgetError(TangentlabError, MemoryError):
    """An allocation would exceed the memory budget.

    Raised *before* allocating, with the size that was asked for and a cheaper
    representation or option that would fit.

    Parameters
    ----------
    what : str
        What was to be allocated.
    nbytes : int
        Its size in bytes.
    budget : int
        The budget in bytes.
    suggestion : str
        A cheaper representation or option that fits.
    """

    def __init__(self, what: str, nbytes: int, budget: int, suggestion: str):
        self.what = what
        self.nbytes = nbytes
        self.budget = budget
        self.suggestion = suggestion
        super().__init__(
            f"{what} needs {format_bytes(nbytes)}, over the memory budget of "
            f"{format_bytes(budget)}. {suggestion} (The budget is set with "
            f"`memory_budget=` or the TANGENTLAB_MEMORY_BUDGET environment variable.)"
        )


class InvalidInputError(TangentlabError, ValueError):
    """The data, a vector or an argument is malformed (empty, ragged, wrong shape...)."""


class NonFiniteError(InvalidInputError):
    """NaN or Inf appeared in the model outputs of a batch."""


class UnsupportedLayerError(TangentlabError, TypeError):
    """A module cannot be handled as configured (e.g. BatchNorm in train mode)."""


class MixedDeviceDtypeError(TangentlabError, TypeError):
    """Parameters or inputs live on different devices or have different dtypes."""


def format_bytes(n: float) -> str:
    """Human-readable size, e.g. ``1.5 GiB``.

    Parameters
    ----------
    n : float
        A number of bytes.

    Returns
    -------
    str
        The size in binary units (B, KiB, MiB, ...).
    """
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    x = float(n)
    for u in units:
        if abs(x) < 1024 or u == units[-1]:
            return f"{x:.0f} {u}" if u == "B" else f"{x:.1f} {u}"
        x /= 1024
    return f"{x:.1f} EiB"  # pragma: no cover
