"""Reference recipes written with ``torch.func`` (no library beyond PyTorch).

Two recipe families, as two adapters:

* :class:`TorchFuncJacobian` materializes per-example derivatives:
  ``vmap(jacrev)`` Jacobians then an einsum contraction (the "Jacobian
  contraction" NTK of the PyTorch *neural tangent kernels* tutorial), a dense
  Jacobian reference for the Fisher diagonal and trace, ``vmap(grad)``
  per-example gradients, and a blockwise Jacobian contraction for large N.
* :class:`TorchFuncProducts` never materializes a Jacobian: NTK-vector products
  (``vmap`` over ``vjp`` then ``jvp``, also from the tutorial) and Fisher-vector
  products ``Jᵀ H J v`` by ``jvp`` + ``vjp``.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, grad, jacrev, jvp, vjp, vmap
from torch.nn import functional

from ..workloads import Case
from .base import ALL, Adapter, math_attention

# Bytes that one vectorized chunk of a recipe may use for its batched tangents/Jacobians.
CHUNK_BYTES = 2 * 2**30


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


def _single(model):
    """``f(params, x)`` on one example (no batch dim in or out)."""
    def f(p, x):
        return functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)
    return f


def _scaled(model):
    """``f(params, x, s) = s · z(x)``: one example's pseudo-outputs for a fixed matrix ``s``."""
    def f(p, x, s):
        return s @ functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)
    return f


def _activation_numel(model, x1) -> int:
    """Elements of all module outputs for one example (a proxy for activation memory)."""
    total = [0]

    def hook(mod, args, out):
        if isinstance(out, torch.Tensor):
            total[0] += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in handles:
            h.remove()
    return max(1, total[0])


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _flat_rows(d: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    return torch.cat([t.reshape(n, -1) for t in d.values()], 1)


def _cov(z: torch.Tensor) -> torch.Tensor:
    """``H = diag(p) − p pᵀ`` per example: ``(N, C, C)``."""
    p = torch.softmax(z, -1)
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


def _sqrt_cov(z: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of ``H`` per example (eigh in float64): ``S S = H``.

    The Fisher references differentiate the pseudo-outputs ``S z`` (``S`` detached), so
    that ``diag(Jᵀ H J)`` and ``trace(H J Jᵀ)`` are sums of squares of that Jacobian; the
    expanded form ``Σ p_c G_cc − pᵀ G p`` cancels badly in float32 for confident
    predictions (relative errors near 1e-4 on W4)."""
    h = _cov(z.double())
    e, u = torch.linalg.eigh(h)
    return ((u * e.clamp_min(0).sqrt()[:, None, :]) @ u.transpose(1, 2)).to(z.dtype)


def _h_mul(z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``H u`` per example without forming ``H``."""
    p = torch.softmax(z, -1)
    return p * u - p * (p * u).sum(-1, keepdim=True)


class TorchFuncJacobian(Adapter):
    name = "torch.func vmap(jacrev/grad)"
    description = ("per-example Jacobians with vmap(jacrev) (vmap(grad) for W5), contracted with "
                   "einsum / matmul")
    covers = {"full_ntk": ALL, "fisher": ("diag",), "implicit_fisher": ("trace",),
              "per_example_grads": ALL, "blockwise_ntk": ALL}

    def full_ntk(self, case: Case, quantity: str):
        f, params, x = _single(case.model), _params(case.model), case.x

        def run():
            jac = vmap(jacrev(f), (None, 0))(params, x)  # name -> (N, C, *shape)
            k = None
            for j in jac.values():
                j = j.flatten(2)
                t = torch.einsum("Naf,Mbf->NMab", j, j)
                k = t if k is None else k.add_(t)
            return k
        return run

    def fisher(self, case: Case, quantity: str):
        model, f, params = case.model, _scaled(case.model), _params(case.model)
        v = _flat(case.v.values())

        def run():
            diag = torch.zeros(sum(p.numel() for p in params.values()), device=case.x.device)
            for s in range(0, case.n, case.batch_size):
                xb = case.x[s:s + case.batch_size]
                with torch.no_grad():
                    sq = _sqrt_cov(model(xb))
                jac = vmap(jacrev(f), (None, 0, 0))(params, xb, sq)  # Jacobian of S z: name -> (B, C, *shape)
                diag += _flat(j.pow(2).sum((0, 1)) for j in jac.values())  # diag(Jᵀ H J)
                del jac
            diag /= case.n
            return {"diag": diag, "mv": diag * v}
        return run

    def implicit_fisher(self, case: Case, quantity: str):
        model, f, params = case.model, _scaled(case.model), _params(case.model)
        p = sum(t.numel() for t in params.values())
        block = max(1, CHUNK_BYTES // (2 * case.n_classes * p * 4))

        def run():
            tr = torch.zeros((), dtype=torch.float64, device=case.x.device)
            for s in range(0, case.n, block):
                xb = case.x[s:s + block]
                with torch.no_grad():
                    sq = _sqrt_cov(model(xb))
                jac = vmap(jacrev(f), (None, 0, 0))(params, xb, sq)  # Jacobian of S z: name -> (B, C, *shape)
                for j in jac.values():  # trace(H J Jᵀ) = ‖S J‖², cascade-summed (a float32 dot
                    tr += j.pow(2).sum().double()  # over 10⁷–10⁸ terms loses ~1e-4)
                del jac
            return (tr / case.n).float()
        return run

    def per_example_grads(self, case: Case, quantity: str):
        model, params = case.model, _params(case.model)

        def loss(p, x, y):
            z = functional_call(model, p, (x.unsqueeze(0),))
            return functional.cross_entropy(z, y.unsqueeze(0))

        def run():
            g = vmap(grad(loss), (None, 0, 0))(params, case.x, case.y)
            return _flat_rows(g, case.n)
        return run

    def blockwise_ntk(self, case: Case, quantity: str):
        f, params, x, b = _single(case.model), _params(case.model), case.x, case.batch_size
        p = sum(t.numel() for t in params.values())
        n = case.n
        keep = (n * p + n * n) * 4 <= case.budget_bytes  # store the whole Jacobian if it fits

        def jac_block(i):
            xb = x[i * b:(i + 1) * b]
            return _flat_rows(vmap(jacrev(f), (None, 0))(params, xb), xb.shape[0])  # (B, P)

        def run():
            nb = (n + b - 1) // b
            k = torch.empty(n, n, device=x.device)
            stored = [jac_block(i) for i in range(nb)] if keep else None
            for i in range(nb):
                ji = stored[i] if keep else jac_block(i)
                for j in range(i + 1):
                    jj = stored[j] if keep else (ji if j == i else jac_block(j))
                    t = ji @ jj.T
                    k[i * b:(i + 1) * b, j * b:(j + 1) * b] = t
                    if j != i:
                        k[j * b:(j + 1) * b, i * b:(i + 1) * b] = t.T
            return k
        return run


class TorchFuncProducts(Adapter):
    name = "torch.func jvp/vjp products"
    description = ("matrix-free: NTK-vector products (vmap over vjp then jvp), Fisher-vector "
                   "products Jᵀ H J v by jvp + vjp")
    covers = {"full_ntk": ALL, "implicit_fisher": ("mv", "vTMv")}

    def full_ntk(self, case: Case, quantity: str):
        """The tutorial's ``get_ntk`` with its inner ``vmap`` over the examples of ``x2``
        replaced by one batched evaluation (examples do not interact in eval mode): per row
        example, ``C`` vjps give the tangents ``J(x1)ᵀ e_c`` and one batched jvp gives
        ``J(X2) J(x1)ᵀ e_c`` for all of ``X2``. The per-pair form of the tutorial batches
        ``N·N·C`` parameter-sized tangents and is slower by orders of magnitude at these sizes."""
        model, params, x = case.model, _params(case.model), case.x
        f1 = _single(model)
        p = sum(t.numel() for t in params.values())
        n, c = case.n, case.n_classes
        act = _activation_numel(model, x[:1])
        # per row example: C tangents of size P and their jvp activations on all of X2
        chunk = max(1, CHUNK_BYTES // (4 * c * 3 * (p + n * act)))

        def f2(pp):
            return functional_call(model, pp, (x,))

        def get_ntk(x1):
            out, vjp_fn = vjp(lambda pp: f1(pp, x1), params)

            def slice_(vec):
                (vjps,) = vjp_fn(vec)
                return jvp(f2, (params,), (vjps,))[1]  # (N2, D)

            basis = torch.eye(out.numel(), dtype=out.dtype, device=out.device)
            return vmap(slice_)(basis)  # (C, N2, D): [c, m, d] = <J(x1)_c, J(x2_m)_d>

        def run():
            with math_attention():  # forward-mode AD: no fused attention kernels
                return vmap(get_ntk, chunk_size=chunk)(x).permute(0, 2, 1, 3).contiguous()
        return run

    def implicit_fisher(self, case: Case, quantity: str):
        model, params, x = case.model, _params(case.model), case.x
        v = {k: case.v[k] for k in params}

        def f(pp):
            return functional_call(model, pp, (x,))

        def mv():
            with math_attention():  # forward-mode AD: no fused attention kernels
                z, jv = jvp(f, (params,), (v,))
                _, vjp_fn = vjp(f, params)
                (g,) = vjp_fn(_h_mul(z, jv))
            return _flat(g.values()) / case.n

        def vtmv():
            with math_attention():
                z, jv = jvp(f, (params,), (v,))
            return (jv * _h_mul(z, jv)).sum() / case.n
        return mv if quantity == "mv" else vtmv
