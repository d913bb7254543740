"""Per-layer statistics of one optimization step: the rule's features of the layer inputs and
the output gradients ``g`` of shape ``(C, N, *out)``.

``fisher="empirical"``: ``g`` are the per-example gradients of the training loss, read from
the user's backward pass by a :class:`~tangentlab.optim.recording.Recorder` (for a
``loss_reduction="mean"`` loss they are ``(1/N)`` of the per-example ones and are rescaled by
``N``). ``fisher="true"``: one extra pass of the tangent-feature engine on the same inputs
with the model's own likelihood (``"softmax"``: one sampled label per example, a fresh
sample every step, reproducible from ``seed``; ``"gaussian"``: the exact Fisher of
``N(f(x), I)``; ``"bernoulli"``: of independent sigmoid outputs).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from ..engine import Engine, EngineOptions
from ..engine import make_engine as engine_from_options
from ..errors import InvalidInputError
from ..layers.norm import batchnorm_coupling
from ..outputs import make_output
from ..space import ParamSpace
from .blocks import ParamBlock
from .recording import Recorder

Stats = dict[str, tuple[Any, torch.Tensor, int]]  # module path -> (features, g (C, N, *out), N)

OUTPUTS = {"softmax": ("mc", "n_samples"), "gaussian": ("regression", None), "bernoulli": ("binary", None)}


def make_engine(model: nn.Module, params: list[torch.Tensor], likelihood: str, n_samples: int,
                options: EngineOptions) -> Engine:
    """The engine of the true-Fisher statistics: the model's ``likelihood`` over ``params``,
    built from the optimizer's engine ``options`` like every other engine."""
    kind, opt = OUTPUTS[likelihood]
    output = make_output(kind, **({opt: n_samples} if opt else {}))
    names = [n for n, p in model.named_parameters() if any(p is q for q in params)]
    return engine_from_options(model, options, output, ParamSpace.from_model(model, names))


def check_modes(blocks: list[ParamBlock]) -> None:
    """Refuse a BatchNorm that has been switched to training mode after its block was set up in
    eval mode (the block's statistics use the running statistics, the forward pass would not)."""
    for b in blocks:
        coupled = batchnorm_coupling(b.module)
        if coupled:
            raise InvalidInputError(
                f"layer {b.name!r} ({type(b.module).__name__}) {coupled}, but the optimizer preconditions it "
                "with running statistics: keep it in eval mode, or build the optimizer with the model in "
                "training mode (the BatchNorm then goes to the fallback optimizer)")


def empirical_statistics(blocks: list[ParamBlock], recorder: Recorder, loss_reduction: str) -> Stats:
    recorder.check()
    out: Stats = {}
    for b in blocks:
        if b.name in out:
            continue
        rec = recorder.records[b.name]
        g = rec["gout"].unsqueeze(0)
        n = g.shape[1]
        if loss_reduction == "mean":
            g = g * n
        if "tap" in rec:  # a tapped rule (recording.RecordingTap): features from what the tap saved
            feat = b.rule.tap_features(b.module, rec["tap"])
        else:
            feat = b.rule.features(b.module, rec["args"], rec["kwargs"])
        out[b.name] = (feat, g, n)
    return out


def model_input(recorder: Recorder) -> torch.Tensor:
    """The one tensor input of the model's last forward pass (true Fisher)."""
    if recorder.inputs is None:
        raise InvalidInputError("fisher='true' needs a forward pass of the model before step()")
    args, kwargs = recorder.inputs
    if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
        raise InvalidInputError("fisher='true' needs a model called as model(x) with one tensor input")
    return args[0]


def true_statistics(engine: Engine, blocks: list[ParamBlock], recorder: Recorder, step: int) -> Stats:
    """Statistics of the engine's pass on the last forward pass's inputs (batch index ``step``)."""
    x = model_input(recorder)
    recorder.recording = False
    try:
        cap = engine.capture((x,), index=step)
    finally:
        recorder.recording = True
    by_module = {lc.layer.module: lc for lc in cap.layers}
    out: Stats = {}
    for b in blocks:
        lc = by_module.get(b.name)
        if lc is None:
            raise InvalidInputError(f"layer {b.name!r} is not on the engine's hook route")
        out[b.name] = (lc.feat, lc.g, cap.n)
    return out


def raw_inputs(model: nn.Module, blocks: list[ParamBlock], recorder: Recorder) -> dict[str, torch.Tensor]:
    """Raw inputs of the given modules on the last forward pass's inputs, by a gradient-free
    forward pass (the engine keeps patches, not the raw inputs an SUA factor needs)."""
    got: dict[str, torch.Tensor] = {}
    handles = [b.module.register_forward_hook(lambda m, a, o, name=b.name: got.__setitem__(name, a[0].detach()))
               for b in blocks]
    recorder.recording = False
    try:
        with torch.no_grad():
            args, kwargs = cast(tuple[tuple, dict], recorder.inputs)  # set by the forward pass
            model(*args, **kwargs)
    finally:
        recorder.recording = True
        for h in handles:
            h.remove()
    return got


def batch_size(fisher: str, recorder: Recorder) -> int:
    """``N``, the number of examples of the current minibatch on this rank."""
    if fisher == "true":
        return int(cast(tuple[tuple, dict], recorder.inputs)[0][0].shape[0])
    return int(recorder.records[recorder.names[0]]["gout"].shape[0])


__all__ = ["Stats", "batch_size", "check_modes", "empirical_statistics", "make_engine", "raw_inputs", "true_statistics"]
