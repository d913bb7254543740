"""The tangent-feature engine.

For one batch and an :class:`~tangentlab.outputs.OutputFunction`, the engine
produces a :class:`Capture`: for every layer on the *hook route*, its features
(from its inputs ``a``) and ``g``, the gradients of every pseudo-output
coordinate with respect to the layer's output, for all examples at once; and,
for parameters on the *generic route*, their per-example Jacobians from
``torch.func``. Representations, NTKs and Jacobian maps consume captures
(:mod:`tangentlab.engine.ops`); the engine knows nothing about them.

How ``g`` is obtained: forward hooks record each layer's inputs and the
autograd edge of its output (``get_gradient_edge``, which stays valid under
later in-place operations such as ``ReLU(inplace=True)``); one backward pass,
vectorized over the ``C`` output coordinates with ``is_grads_batched``, gives
``∂(Σ_n s_c(x_n))/∂out_layer`` which, because examples are independent, is
the per-example gradient ``∂s_c(x_n)/∂out_layer(x_n)`` in row ``n``.

Consumers that sum over output coordinates (diagonals, traces, dense and block sums)
take a batch in *output blocks* (:meth:`Engine.capture_blocks`, policy
:class:`~tangentlab.engine.blocks.OutputBlocks`): one forward, then one backward per
block of outputs with the graph retained, so only one block's ``g`` is alive.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from torch.autograd.graph import get_gradient_edge
from torch.func import functional_call, jacrev, vmap

from ..data import Batch, Batches, to_device
from ..distributed import Reducer, unwrap
from ..errors import InvalidInputError, NonFiniteError, TangentlabError
from ..layers.base import LayerRule, Tap, join_taps
from ..layers.registry import LayerRegistry
from ..memory import MemoryBudget
from ..outputs import Aux, OutputFunction, make_output
from ..progress import progress
from ..space import Layer, ParamSpace, Selector
from .blocks import ALL_OUTPUTS, AUTO_BLOCKS, OutputBlocks
from .chunks import limit_for, merge_batches, merge_limit
from .contexts import keep_tensors, math_attention, shared_modules
from .options import EngineOptions
from .plan import RoutePlan, check_coupling, check_params, input_mismatch, make_plan, patched_forwards, tap_forward
from .precision import Precision
from .recurrent import unfused_recurrent

#: target size (entries) of one output block's ``g`` under ``OutputBlocks.auto()``
OUTPUT_BLOCK_ELEMENTS = 1 << 25


@dataclass
class LayerCapture:
    """One hooked layer on one batch."""

    layer: Layer  # the selected parameters of this module
    module: nn.Module
    rule: LayerRule
    feat: Any
    g: torch.Tensor  # (C, N, *output_shape)


@dataclass
class Capture:
    """Everything the accumulators need from one batch."""

    index: int
    n: int
    n_outputs: int
    outputs: torch.Tensor  # (N, C) pseudo-outputs, detached
    layers: list[LayerCapture] = field(default_factory=list)
    generic: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (C, N, *shape)
    #: with output blocks (:class:`OutputBlocks`): this capture's g (and generic
    #: Jacobians) hold output coordinates ``out_start .. out_start + n_outputs`` of
    #: ``total_outputs``; a plain capture holds them all (``out_start = 0``)
    out_start: int = 0
    total_outputs: int = -1

    def __post_init__(self) -> None:
        if self.total_outputs < 0:
            self.total_outputs = self.n_outputs

    @property
    def out_slice(self) -> slice:
        """This capture's output coordinates among the batch's ``total_outputs``."""
        return slice(self.out_start, self.out_start + self.n_outputs)

    @property
    def first(self) -> bool:
        """Whether this is the first (or only) output block of its batch: per-batch,
        output-independent quantities (example counts, input factors) are taken from it."""
        return self.out_start == 0


class _FnModule(nn.Module):
    """Wraps ``output.forward(model, batch)`` so that ``functional_call`` can reparametrize it."""

    def __init__(self, model: nn.Module, output: OutputFunction):
        super().__init__()
        self.model = model
        self._output = output

    def forward(self, batch: tuple) -> torch.Tensor:
        return self._output.forward(self.model, batch)


@contextlib.contextmanager
def _requires_grad(params: Sequence[torch.Tensor]) -> Iterator[None]:
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


class Engine:
    """Computes tangent features of ``output`` for ``model`` on the parameters of ``space``.

    Parameters
    ----------
    model : nn.Module
        The network (not modified; BatchNorm must be in eval mode unless ``route='joint'``).
    output : str or OutputFunction or callable
        What matrix (see :func:`tangentlab.outputs.make_output`).
    params : selector or ParamSpace, optional
        Parameter selection (default: all trainable parameters).
    registry : LayerRegistry, optional
        Layer rules (default :meth:`LayerRegistry.default`).
    route : {"auto", "generic", "joint"}
        ``'auto'`` (hooks where a rule exists, ``torch.func`` elsewhere),
        ``'generic'`` (``torch.func`` for everything), or ``'joint'`` (Jacobian of
        the whole batch function; for batch-coupled models such as BatchNorm in
        train mode).
    seed : int
        Seed of the per-batch random generators (Monte-Carlo Fisher).
    memory_budget : Any
        See :class:`tangentlab.memory.MemoryBudget`.
    progress : bool, optional
        Progress bars (None: after 2 s on a terminal).
    distributed : bool or ProcessGroup, optional
        ``None``/``False`` (one process), ``True`` (the default
        ``torch.distributed`` process group) or a process group: each rank passes its
        own shard of the data and the accumulated sums are all-reduced
        (:mod:`tangentlab.distributed`). A ``DistributedDataParallel`` model is unwrapped.
    precision : str or dict or Precision, optional
        Mixed-precision policy (:class:`~tangentlab.engine.precision.Precision`):
        e.g. ``"bf16"`` (bf16 Jacobians under autocast, float32 accumulation),
        ``"bf16/fp64"``, ``"model/fp64"`` (float32 passes, float64 products and sums) or
        ``"tf32"`` (CUDA). ``engine.dtype`` is the accumulation dtype, ``engine.model_dtype``
        the parameters' (inputs must have it).
    """

    def __init__(self, model: nn.Module, output: OutputFunction | str | Any = "raw",
                 params: Selector | ParamSpace = None, *, registry: LayerRegistry | None = None,
                 route: str = "auto", seed: int = 0, memory_budget: Any = None,
                 progress: bool | None = None, distributed: Any = None, precision: Any = None):
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"model must be an nn.Module, got {type(model).__name__}")
        EngineOptions(route=route, registry=registry, seed=seed, memory_budget=memory_budget,
                      progress=progress, distributed=distributed, precision=precision)  # validates
        model = unwrap(model)
        self.reducer = Reducer.resolve(distributed)
        self.model = model
        self.output = make_output(output)
        self.space = params if isinstance(params, ParamSpace) else ParamSpace.from_model(model, params)
        self.params = self.space.check_model(model)
        self.model_dtype, self.device = check_params(self.params)
        self.precision = Precision.resolve(precision, self.model_dtype, self.device)
        #: dtype of the captured features after the capture, of all products and of the results
        self.dtype = self.precision.accumulate_dtype(self.model_dtype)
        self.registry = registry or LayerRegistry.default()
        self.route = route
        self.seed = int(seed)
        self.budget = MemoryBudget.resolve(memory_budget, self.device)
        self.show_progress = progress
        self._plan: RoutePlan | None = None
        #: examples per merged chunk (:meth:`captures` with ``merge``), set by the route plan's
        #: probe (or else the first capture)
        self.merge_limit: int | None = None
        self._wrapper = _FnModule(model, self.output)
        self._shared = shared_modules(model)

    @classmethod
    def from_options(cls, model: nn.Module, options: EngineOptions | None = None, output: Any = "raw",
                     params: Selector | ParamSpace = None) -> Engine:
        """The engine of ``model`` for ``output`` on ``params`` with ``options``
        (:class:`~tangentlab.engine.options.EngineOptions`; default options when ``None``)."""
        return cls(model, output, params, **(options or EngineOptions()).keywords())

    @property
    def options(self) -> EngineOptions:
        """This engine's settings, resolved (budget, reducer and precision objects)."""
        return EngineOptions(route=self.route, registry=self.registry, seed=self.seed, memory_budget=self.budget,
                             progress=self.show_progress, distributed=self.reducer, precision=self.precision)

    def with_space(self, space: ParamSpace) -> Engine:
        """The same engine (model, output, options) on another parameter selection ``space``."""
        return Engine.from_options(self.model, self.options, self.output, space)

    # ---- data ------------------------------------------------------------------
    def batches(self, data: Any, desc: str = "batches", start: int = 0) -> Iterator[tuple[int, Batch]]:
        """``(index, batch)`` on the engine's device, from batch ``start`` on (earlier
        batches are read but not moved), as the output reads them (:meth:`select`)."""
        src = data if isinstance(data, Batches) else Batches(data)
        for i, b in enumerate(progress(src, desc, self.show_progress)):
            if i >= start:
                yield i, to_device(self.select(b, i), self.device, self.model_dtype, i)

    def select(self, batch: Batch, index: int) -> Batch:
        """Batch ``index`` with its targets checked and only the examples that count in ``N``
        (:meth:`~tangentlab.outputs.OutputFunction.select`: e.g. the empirical Fisher drops
        the examples whose label is the loss's ``ignore_index``)."""
        return self.output.select(batch, index)

    def captures(self, data: Any, desc: str = "tangent features", blocks: OutputBlocks = ALL_OUTPUTS,
                 take: Callable[[int], bool] | None = None, merge: bool = False) -> Iterator[Capture]:
        """Captures of every batch (those whose index ``take`` accepts), under the
        output-block policy ``blocks`` (:class:`OutputBlocks`; default: one capture per batch).

        ``merge=True`` (for consumers that only *sum* over examples): consecutive batches are
        concatenated into chunks of up to :attr:`merge_limit` examples (fewer, larger matrix
        products; the sums are the same up to rounding), except for random outputs (their
        samples are drawn per batch) and the joint route. A capture's ``index`` then counts
        chunks."""
        src: Iterator[tuple[int, Batch, Any]] = ((i, b, None) for i, b in self.batches(data, desc))
        if merge and take is None and not self.output.random and self.route != "joint":
            src = merge_batches(self.batches(data, desc), self)
        for i, b, parts in src:
            if take is not None and not take(i):
                continue
            caps = self.capture_blocks(b, i, blocks)
            try:
                cap = next(caps)  # the checks and the forward pass run before the first capture
            except TangentlabError:
                for k, part in parts or ():  # the batch by batch error names the user's batch
                    for _ in self.capture_blocks(part, k, blocks):
                        pass
                raise
            if self.merge_limit is None:
                self.merge_limit = merge_limit(cap, self.budget.max_elements(self.dtype))
            yield cap
            yield from caps

    def generator(self, index: int) -> torch.Generator | None:
        """The random generator of batch ``index`` (same stream on every pass)."""
        if not self.output.random:
            return None
        gen = torch.Generator(device=self.device)
        h = hashlib.blake2b(f"{self.seed}:{index}".encode(), digest_size=8).digest()
        gen.manual_seed(int.from_bytes(h, "little") & ((1 << 63) - 1))
        return gen

    # ---- plan ------------------------------------------------------------------
    @contextlib.contextmanager
    def explain_inputs(self, batch: Batch, index: int = 0):
        """Turn a forward pass that fails on the inputs (e.g. a feature size or an integer
        dtype a Linear layer cannot take) into an :class:`InvalidInputError` naming the layer,
        what it got and what it expects; other failures are re-raised unchanged. The
        diagnosis (a forward pass on two examples) runs only after a failure."""
        try:
            yield
        except TangentlabError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised below unless explained
            # joint route: buffers are copies (BatchNorm in train mode must not update the model's)
            forward = ((lambda b: functional_call(self._wrapper, self.buffers(), (b,))) if self.route == "joint"
                       else (lambda b: self.output.forward(self.model, b)))
            why = input_mismatch(self.model, forward, _head(batch, 2))
            if why is None:
                raise
            raise InvalidInputError(f"batch {index}: {why}") from e

    def plan(self, batch: Batch) -> RoutePlan:
        """The route of every layer (hooks or ``torch.func``), probed on the first batch."""
        if self._plan is None:
            check_coupling(self.model, self.route == "joint")

            mods = dict(self.model.named_modules())
            layer_out: list[int] = []

            def size_hook(mod, args, kwargs, out):
                layer_out.extend(t.numel() for t in (out if isinstance(out, (tuple, list)) else (out,))
                                 if isinstance(t, torch.Tensor))

            def prober(b: Batch):
                def probe(hooks):
                    layer_out.clear()
                    sized = [(mods[lay.module], size_hook) for lay in self.space.layers if lay.module in mods]
                    handles = [m.register_forward_hook(h, with_kwargs=True) for m, h in [*hooks, *sized]]
                    try:
                        with torch.no_grad(), math_attention():
                            z = self.output.forward(self.model, b)
                    finally:
                        for h in handles:
                            h.remove()
                    n = max(1, b[0].shape[0])  # the chunk size from the probe: g entries of one example
                    if self.merge_limit is None and isinstance(z, torch.Tensor):
                        self.merge_limit = limit_for(z.numel() // n * max(1, sum(layer_out) // n),
                                                     self.budget.max_elements(self.dtype))
                probe.batch_size = b[0].shape[0]  # type: ignore[attr-defined]  # read by make_plan
                return probe

            # The probe only counts module calls: two examples show the same structure as
            # the whole batch at a fraction of the cost. A model that cannot run on a
            # 2-example slice (a hard-coded batch size, say) is probed on the full batch.
            small = _head(batch, 2)
            with self.explain_inputs(batch):
                if small is batch:
                    self._plan = make_plan(self.model, self.space, self.registry, self.route, prober(batch))
                else:
                    try:  # make_plan warns only after a successful probe: no duplicate warnings
                        plan = make_plan(self.model, self.space, self.registry, self.route, prober(small))
                    except Exception:  # noqa: BLE001 - retried on the full batch, which raises if it must
                        plan = make_plan(self.model, self.space, self.registry, self.route, prober(batch))
                    self._plan = plan
        return self._plan

    # ---- functional forward (generic route, matrix-free products) ----------------
    def buffers(self) -> dict[str, torch.Tensor]:
        """Buffers to pass to ``functional_call``: copies in joint mode (BatchNorm in train
        mode updates running statistics, which must not leak into the user's model)."""
        if self.route != "joint":
            return {}
        return {"model." + n: b.clone() for n, b in self.model.named_buffers()}

    def functional_outputs(self, params: dict[str, torch.Tensor], batch: Batch,
                           aux: Aux | int, buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Pseudo-outputs ``s`` (N, C) with the parameters replaced by ``params`` (and, in
        joint mode, the buffers by ``buffers`` or fresh copies).

        ``aux`` is the batch's auxiliary data, or the batch *index* (an int) to compute it
        from the detached outputs of this same forward pass (no extra forward)."""
        full = {"model." + n: p for n, p in params.items()}
        full.update(self.buffers() if buffers is None else buffers)
        with keep_tensors(self._shared):
            z = functional_call(self._wrapper, full, (batch,))
        if isinstance(aux, int):
            aux = self.output.prepare(z.detach(), batch, self.generator(aux))
        return self.output.head(z, aux, batch)

    def prepare(self, batch: Batch, index: int) -> tuple[torch.Tensor, Aux]:
        """Model outputs (no graph) and the detached auxiliary data of a batch."""
        with torch.no_grad(), math_attention():
            if self.route == "joint":
                with keep_tensors(self._shared):
                    z = functional_call(self._wrapper, self.buffers(), (batch,))
            else:
                z = self.output.forward(self.model, batch)
            aux = self.output.prepare(z, batch, self.generator(index))
        return z, aux

    def validate(self, batch: Batch, index: int) -> RoutePlan:
        """Route plan (refusing batch-coupled layers before any forward pass) and finite inputs."""
        plan = self.plan(batch)
        for k, t in enumerate(batch):
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
                rows = (~torch.isfinite(t.reshape(t.shape[0], -1))).any(1).nonzero().flatten().tolist()
                raise NonFiniteError(
                    f"batch {index}, element {k}: non-finite (NaN/Inf) values for examples "
                    f"{rows[:10]} of that batch"
                )
        return plan

    def check_outputs(self, s: torch.Tensor, n: int, index: int) -> None:
        """Refuse pseudo-outputs ``s`` of batch ``index`` not shaped ``(n, C)`` or not finite."""
        if s.dim() != 2 or s.shape[0] != n:
            raise InvalidInputError(
                f"batch {index}: outputs have shape {tuple(s.shape)}, expected ({n}, C): one row "
                "per example"
            )
        if not torch.isfinite(s).all():
            rows = (~torch.isfinite(s)).any(1).nonzero().flatten().tolist()
            raise NonFiniteError(
                f"batch {index}: non-finite (NaN/Inf) outputs for examples {rows[:10]} of that "
                "batch; check the inputs and the model's parameters"
            )

    # ---- the capture ------------------------------------------------------------
    def capture(self, batch: Batch, index: int = 0) -> Capture:
        """Features and ``g`` of every output coordinate of one batch, in one capture."""
        caps = list(self.capture_blocks(batch, index, ALL_OUTPUTS))
        assert len(caps) == 1
        return caps[0]

    def capture_blocks(self, batch: Batch, index: int = 0,
                       blocks: OutputBlocks = AUTO_BLOCKS) -> Iterator[Capture]:
        """Captures of one batch, each holding ``g`` for a block of output coordinates.

        For consumers that *sum over output coordinates* (diagonals, traces, dense and
        block sums): one forward pass, then one backward per block with the graph
        retained, so that only one block's ``g`` (``block·Σ_layers N·|out|`` entries) is
        alive at a time instead of all ``C``. ``blocks``: the policy
        (:class:`OutputBlocks`); ``auto()`` sizes a block's ``g`` to about
        :data:`OUTPUT_BLOCK_ELEMENTS` entries (all outputs when they fit). The features
        are shared by the blocks of a batch; :attr:`Capture.first` marks the first one.
        """
        plan = self.validate(batch, index)
        n = batch[0].shape[0]
        if self.output.needs_targets and len(batch) < 2:
            raise InvalidInputError(
                f"the {self.output.name} needs targets: batch {index} has no element 1 (y)"
            )
        prec = self.precision
        with prec.context(self.device), self.explain_inputs(batch, index):
            if plan.hooked:
                s, aux, records = self._hook_pass(plan, batch, index)
            else:
                z, aux = self.prepare(batch, index)
                with torch.no_grad():
                    s = self.output.head(z, aux, batch)
                self.check_outputs(s, n, index)
                records = []
            generic = self._generic_pass(plan, batch, aux) if plan.generic else {}
        c = s.shape[1]
        out_numel = sum(_prod(sh) for r in records for sh in _record_shapes(r))
        block = OutputBlocks.resolve(blocks).width(c, out_numel, OUTPUT_BLOCK_ELEMENTS)
        edges = [e for r in records for e in (r[2] if len(r) > 4 else (r[2],))]
        feats = None
        for start in range(0, c, block):
            stop = min(c, start + block)
            with prec.context(self.device):
                gs = self._backward(s, edges, records, start, stop, retain=stop < c) if records else []
                if feats is None:  # after the first backward: e.g. padded conv inputs are not alive during it
                    with torch.no_grad():  # shared by the blocks of this batch
                        feats = [h.rule.tap_features(h.module, r[4]) if len(r) > 4 else
                                 h.rule.features(h.module, *self._detached(r)) for h, r in zip(plan.hooked, records)]
                    outputs = s.detach()
                    if not prec.is_default:  # rounded to the compute dtype, then to the accumulation dtype
                        feats, outputs, generic = (prec.cast(t, self.dtype) for t in (feats, outputs, generic))
            if not prec.is_default:
                gs = prec.cast(gs, self.dtype)
            layers = [LayerCapture(h.layer, h.module, h.rule, f, g) for h, f, g in zip(plan.hooked, feats, gs)]
            gen = generic if (start, stop) == (0, c) else {k: v[start:stop] for k, v in generic.items()}
            yield Capture(index, n, stop - start, outputs, layers, gen, out_start=start, total_outputs=c)
            del layers, gs

    @staticmethod
    def _detached(record: tuple) -> tuple[tuple, dict]:
        args, kwargs = record[:2]
        return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args), kwargs

    def _hook_pass(self, plan: RoutePlan, batch: Batch, index: int):
        records: dict[int, list] = {id(h.module): [] for h in plan.hooked}

        def hook(mod, args, kwargs, out):
            records[id(mod)].append((args, kwargs, get_gradient_edge(out), tuple(out.shape)))

        def tapped(h):  # the rule's tapped forward records the layer itself (layers/base.py)
            def forward(*args, **kwargs):
                tap = Tap(h.layer.module)
                out = h.rule.tapped_forward(h.module, tap, *args, **kwargs)
                records[id(h.module)].append((args, kwargs, tap.edges, tap.shapes, tap))
                return out
            return h.module, forward

        hooked_params = [self.params[p.name] for h in plan.hooked for p in h.layer.params]
        taps = [tapped(h) for h in plan.hooked if h.rule.tapped(h.module)]
        taps += [(mod, tap_forward(mod, rule, Tap(path, active=False))) for path, mod, rule in plan.passive]
        handles = [h.module.register_forward_hook(hook, with_kwargs=True) for h in plan.hooked
                   if not h.rule.tapped(h.module)]
        try:
            with torch.enable_grad(), _requires_grad(hooked_params), math_attention(), patched_forwards(taps):
                z = self.output.forward(self.model, batch)
                aux = self.output.prepare(z.detach(), batch, self.generator(index))
                s = self.output.head(z, aux, batch)
        finally:
            for handle in handles:
                handle.remove()
        self.check_outputs(s, batch[0].shape[0], index)
        for h in plan.hooked:
            k = len(records[id(h.module)])
            if k != 1:
                raise InvalidInputError(
                    f"batch {index}: module {h.layer.module!r} was called {k} times, but once on the "
                    "first batch (data-dependent control flow); pass route='generic'"
                )
            shape = records[id(h.module)][0][3]
            if not isinstance(shape, list) and (not shape or shape[0] != batch[0].shape[0]):
                raise InvalidInputError(
                    f"batch {index}: the output of module {h.layer.module!r} has shape {shape}, not the "
                    f"{batch[0].shape[0]} examples first (e.g. a sequence-first layout); pass route='generic'")
        return s, aux, [records[id(h.module)][0] for h in plan.hooked]

    def _backward(self, s: torch.Tensor, edges: list, records: list, first: int, stop: int,
                  retain: bool) -> list[torch.Tensor]:
        """``g`` for every layer, output coordinates ``first .. stop``: gradients of each
        with respect to the layer outputs, ``(stop − first, N, *out_shape)`` per layer.
        ``retain``: keep the graph for later blocks."""
        n, c = s.shape
        shapes = [sh for r in records for sh in _record_shapes(r)]
        out_numel = sum(_prod(sh) for sh in shapes)
        # vectorize over output coordinates in chunks that fit the budget (x3 for backward temporaries)
        chunk = max(1, min(c, self.budget.max_elements(s.dtype) // max(1, 3 * out_numel)))
        results: list[list[torch.Tensor | None]] = [[] for _ in edges]
        eye = torch.eye(c, dtype=s.dtype, device=s.device)
        for start in range(first, stop, chunk):
            end = min(stop, start + chunk)
            last = end == stop and not retain
            cot = eye[start:end, None, :].expand(end - start, n, c)
            grads: tuple[torch.Tensor | None, ...] | None = None
            if end - start > 1:
                try:
                    grads = torch.autograd.grad(s, edges, grad_outputs=cot, is_grads_batched=True,
                                                retain_graph=not last, allow_unused=True)
                except RuntimeError:
                    grads = None  # an op without a batching rule: fall back to a loop
            if grads is None:
                per = [torch.autograd.grad(s, edges, grad_outputs=cot[k],
                                           retain_graph=not (last and k == end - start - 1),
                                           allow_unused=True)
                       for k in range(end - start)]
                grads = tuple(
                    None if per[0][j] is None else torch.stack([p[j] for p in per])
                    for j in range(len(edges))
                )
            for j, gj in enumerate(grads):
                results[j].append(gj)
        per_edge = []
        for j, sh in enumerate(shapes):
            parts = results[j]
            if any(p is None for p in parts):  # layer output does not reach the outputs
                per_edge.append(s.new_zeros(stop - first, *sh))
            else:
                done = cast(list[torch.Tensor], parts)
                per_edge.append(torch.cat(done, 0) if len(done) > 1 else done[0])
        out, j = [], 0  # tapped records own several consecutive edges
        for r in records:
            k = len(r[2]) if len(r) > 4 else 1
            out.append(join_taps(per_edge[j:j + k], n) if len(r) > 4 else per_edge[j])
            j += k
        return out

    def _generic_pass(self, plan: RoutePlan, batch: Batch, aux: Aux) -> dict[str, torch.Tensor]:
        names = plan.generic
        fixed = {n: p.detach() for n, p in self.model.named_parameters() if n not in names}
        pg = {n: self.params[n].detach() for n in names}

        if plan.joint:
            # buffers are explicit inputs: BatchNorm in train mode updates them in place
            def f_batch(pg, bufs):
                return self.functional_outputs({**fixed, **pg}, batch, aux, bufs)

            with math_attention():
                jac = jacrev(f_batch)(pg, self.buffers())  # name -> (N, C, *shape)
            return {k: v.transpose(0, 1) for k, v in jac.items()}

        aux_items = sorted(aux.items()) if aux else []
        n_b = len(batch)

        def f_one(pg, *flat):
            b = tuple(t.unsqueeze(0) if isinstance(t, torch.Tensor) else t for t in flat[:n_b])
            a = {k: v.unsqueeze(0) for (k, _), v in zip(aux_items, flat[n_b:])}
            s = self.functional_outputs({**fixed, **pg}, b, a or None)
            return s[0]

        ins = (*batch, *[v for _, v in aux_items])
        in_dims = (None, *[0 if isinstance(t, torch.Tensor) else None for t in ins])
        with math_attention(), unfused_recurrent(plan.unfuse):
            jac = vmap(jacrev(f_one), in_dims=in_dims, randomness="different")(pg, *ins)
        return {k: v.transpose(0, 1) for k, v in jac.items()}  # (C, N, *shape)


def _record_shapes(record: tuple) -> list[tuple[int, ...]]:
    """Output shapes of a hook record ``(args, kwargs, edge, shape)``, or the tapped shapes of a
    tapped record ``(args, kwargs, edges, shapes, tap)``."""
    return list(record[3]) if len(record) > 4 else [record[3]]


def _head(batch: Batch, k: int) -> Batch:
    """The first ``k`` examples of a batch (every tensor with the batch's leading size is
    sliced); the batch itself when it has at most ``k`` examples."""
    n = batch[0].shape[0]
    if n <= k:
        return batch
    return tuple(t[:k] if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == n else t for t in batch)


def _prod(shape: tuple[int, ...]) -> int:
    k = 1
    for d in shape:
        k *= d
    return k


def make_engine(model: nn.Module, options: EngineOptions | None = None, output: Any = "raw",
                params: Selector | ParamSpace = None) -> Engine:
    """The engine of ``model`` for ``output`` on ``params`` built from ``options``: the one
    way every entry point (and the optimizers) build engines."""
    return Engine.from_options(model, options, output, params)
