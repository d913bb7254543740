"""tangentlab through its public entry points (``tl.ntk``, ``tl.fim``, ``tl.jacobian``)."""

from __future__ import annotations

from ..workloads import Case
from .base import ALL, Adapter, refusing


def _refusals(run):
    """tangentlab's refusals (a representation not defined for some layer) as "cannot compute"."""
    from tangentlab.errors import UnsupportedLayerError

    return refusing(run, (UnsupportedLayerError,), "tangentlab")


class TangentlabAdapter(Adapter):
    name = "tangentlab"
    module = "tangentlab"
    description = "tl.ntk / tl.fim / tl.jacobian (per-layer a and g, Gram trick where cheaper)"
    covers = {"full_ntk": ALL, "fisher": ("diag", "kfac", "ekfac"),
              "implicit_fisher": ("mv", "vTMv", "trace"),
              "per_example_grads": ALL, "blockwise_ntk": ALL}

    def full_ntk(self, case: Case, quantity: str):
        import tangentlab as tl

        def run():
            return tl.ntk(case.model, case.x, batch_size=case.batch_size or case.n, progress=False).data
        return run

    def fisher(self, case: Case, quantity: str):
        import tangentlab as tl

        def run():
            fm = tl.fim(case.model, case.x, kind="exact", representation=quantity,
                        batch_size=case.batch_size, progress=False)
            v = tl.PVector(fm.space, case.v)
            if quantity == "diag":
                return {"diag": fm.diag().flat(), "mv": fm.mv(v).flat()}
            return {"mv": fm.mv(v).flat()}  # kfac / ekfac (EKFAC with its corrected diagonal s*)
        return _refusals(run)

    def implicit_fisher(self, case: Case, quantity: str):
        import tangentlab as tl

        fm = tl.fim(case.model, case.x, kind="exact", representation="implicit",
                    batch_size=case.batch_size, progress=False)
        v = tl.PVector(fm.space, case.v)
        if quantity == "mv":
            return lambda: fm.mv(v).flat()
        if quantity == "vTMv":
            return lambda: fm.vTMv(v)
        return fm.trace

    def per_example_grads(self, case: Case, quantity: str):
        import tangentlab as tl

        def run():
            j = tl.jacobian(case.model, (case.x, case.y), output="empirical", batch_size=case.n,
                            progress=False)
            return j.data.reshape(case.n, -1)  # (N, 1, P): one loss per example
        return run

    def blockwise_ntk(self, case: Case, quantity: str):
        import tangentlab as tl

        def run():
            k = tl.ntk(case.model, case.x, batch_size=case.batch_size, memory_budget=case.budget_bytes,
                       progress=False)
            return k.data[:, :, 0, 0]
        return run

