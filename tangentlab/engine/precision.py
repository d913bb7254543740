"""Mixed-precision policy of the engine: the dtype the tangent features are *computed* in
and the dtype they are *accumulated* in.

``Precision(compute, accumulate)``:

* ``compute`` — the forward/backward passes that produce each layer's inputs ``a`` and
  output-gradients ``g`` (and the matrix-free ``J v`` / ``Jᵀ u`` passes):

  - ``"model"`` (default): the model's own dtype, no change;
  - ``"bf16"`` / ``"fp16"``: under :func:`torch.autocast` with that dtype (the model stays in
    float32; matmuls and convolutions run in the low precision), and the captured
    ``a``, ``g`` and outputs are rounded to it — i.e. the Jacobian is a bf16/fp16 Jacobian;
  - ``"tf32"``: float32 with TF32 matmuls and convolutions (CUDA only; 10-bit mantissa
    products, float32 sums).

* ``accumulate`` — the dtype of everything after the capture: the per-layer products
  (``(a aᵀ) ⊙ (g gᵀ)``, squared-activation matmuls, Kronecker factors), the sums over
  examples, and the returned matrix. ``None`` (default): the model's dtype; ``torch.float32``
  or ``torch.float64`` (a float32 model then gets float64 Fishers and kernels, with the
  float32 round-off of the forward/backward passes only).

Measured errors against float64 are in ``benchmarks/PRECISION.md``
(``python -m benchmarks.precision``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InvalidInputError

#: compute modes and the low-precision dtype each rounds to (None: no rounding)
COMPUTE = {"model": None, "bf16": torch.bfloat16, "fp16": torch.float16, "tf32": None}
_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "fp32": "model", "float32": "model",
            "default": "model"}
ACCUMULATE = (torch.float32, torch.float64)


@dataclass(frozen=True)
class Precision:
    """See the module docstring."""

    compute: str = "model"
    accumulate: torch.dtype | None = None

    @classmethod
    def resolve(cls, spec: Any, model_dtype: torch.dtype, device: torch.device) -> Precision:
        """``spec``: ``None``, a :class:`Precision`, a compute-mode string (``"bf16"``,
        ``"fp16"``, ``"tf32"``, ``"model"``; low-precision modes then accumulate in
        float32), ``"bf16/fp64"``-style ``compute/accumulate`` strings, or a dict of the
        fields. Checked against the model's dtype and device."""
        if spec is None:
            p = cls()
        elif isinstance(spec, Precision):
            p = spec
        elif isinstance(spec, dict):
            p = cls(**spec)
        elif isinstance(spec, str):
            comp, _, acc = spec.partition("/")
            acc_dtype: Any = {"": None, "fp32": torch.float32, "float32": torch.float32, "fp64": torch.float64,
                         "float64": torch.float64}.get(acc.strip().lower(), "bad")
            if acc_dtype == "bad":
                raise InvalidInputError(f"precision {spec!r}: accumulate dtype {acc!r} is not fp32 or fp64")
            p = cls(comp, acc_dtype)
        else:
            raise InvalidInputError(f"precision must be None, a Precision, a dict or a string like 'bf16' or "
                                    f"'bf16/fp64', got {type(spec).__name__}")
        comp = _ALIASES.get(str(p.compute).lower(), str(p.compute).lower())
        if comp not in COMPUTE:
            raise InvalidInputError(f"precision compute={p.compute!r}: accepted values are "
                                    f"{', '.join(COMPUTE)} (bf16/fp16: torch.autocast; tf32: CUDA only)")
        acc_out = p.accumulate
        if acc_out is None and comp in ("bf16", "fp16"):
            acc_out = torch.float32 if model_dtype != torch.float64 else torch.float64
        if acc_out is not None and acc_out not in ACCUMULATE:
            raise InvalidInputError(f"precision accumulate={acc_out}: accepted values are torch.float32 and "
                                    "torch.float64 (or None: the model's dtype)")
        if comp != "model" and model_dtype != torch.float32:
            raise InvalidInputError(f"precision compute={comp!r} needs a float32 model (autocast/TF32 act on "
                                    f"float32 ops); the model is {model_dtype}")
        if comp == "tf32" and device.type != "cuda":
            raise InvalidInputError("precision compute='tf32' is a CUDA mode (TF32 tensor cores); on "
                                    f"{device.type} use 'bf16' or 'model'")
        if comp == "fp16" and device.type == "cpu" and not _cpu_fp16_autocast():
            raise InvalidInputError("this torch build has no float16 CPU autocast; use 'bf16'")
        return cls(comp, acc_out)

    @property
    def low(self) -> torch.dtype | None:
        """The dtype the captured features are rounded to (``None``: no rounding)."""
        return COMPUTE[self.compute]

    def accumulate_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        return self.accumulate or model_dtype

    @contextlib.contextmanager
    def context(self, device: torch.device) -> Iterator[None]:
        """The compute mode around a forward/backward pass."""
        if self.low is not None:
            with torch.autocast(device_type=device.type, dtype=self.low):
                yield
        elif self.compute == "tf32":
            old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            try:
                yield
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
        else:
            yield

    def cast(self, obj: Any, dtype: torch.dtype) -> Any:
        """Floating tensors in ``obj`` (nested tuples/lists/dicts/dataclasses) rounded to the compute
        dtype (low-precision modes), then converted to ``dtype``."""
        if isinstance(obj, torch.Tensor):
            if not obj.is_floating_point():
                return obj
            if self.low is not None:
                obj = obj.to(self.low)
            return obj if obj.dtype == dtype else obj.to(dtype)
        if isinstance(obj, tuple):
            return tuple(self.cast(o, dtype) for o in obj)
        if isinstance(obj, list):
            return [self.cast(o, dtype) for o in obj]
        if isinstance(obj, dict):
            return {k: self.cast(v, dtype) for k, v in obj.items()}
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):  # a layer rule's features
            return dataclasses.replace(obj, **{f.name: self.cast(getattr(obj, f.name), dtype)
                                               for f in dataclasses.fields(obj) if f.init})
        return obj

    @property
    def is_default(self) -> bool:
        return self.compute == "model" and self.accumulate is None


def _cpu_fp16_autocast() -> bool:
    try:
        with torch.autocast(device_type="cpu", dtype=torch.float16):
            torch.ones(2, 2) @ torch.ones(2, 2)
        return True
    except (RuntimeError, AssertionError):  # pragma: no cover - older builds
        return False
