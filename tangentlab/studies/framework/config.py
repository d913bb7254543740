"""Typed study configurations.

A study's configuration is a dataclass deriving from :class:`StudyConfig`; each field
is declared with :func:`option` (default, help, accepted values, bounds). A run's
configuration is built in layers, each overriding the previous one::

    defaults  <  preset (--preset NAME)  <  TOML file (--config FILE)  <  --set key=value

and validated *before any work starts*: a wrong value raises :class:`ConfigError`,
whose one-line message names the field, where the value came from and what is
accepted, e.g. ``config field 'dataset' (from --set): unknown dataset 'mnist';
accepted: digits, tinyimagenet``.

``--set`` values are read as TOML values when they parse (``3``, ``1e-3``, ``true``,
``[1, 2]``, ``"text"``) and as plain strings otherwise; tuple fields also accept
comma-separated lists (``--set representations=diag,kfac``). A TOML file holds the
same flat keys, plus optional ``preset = "NAME"`` and ``study = "NAME"``.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from ...errors import InvalidInputError


class ConfigError(InvalidInputError):
    """A configuration value is wrong. ``str(err)`` is one line naming the field and the
    accepted values; :attr:`field` is the field's name."""

    def __init__(self, field: str, problem: str, accepted: str | None = None, source: str | None = None):
        self.field = field
        where = f" (from {source})" if source and source != "default" else ""
        msg = f"config field {field!r}{where}: {problem}"
        if accepted:
            msg += f"; accepted: {accepted}"
        super().__init__(" ".join(msg.split()))


Choices = Sequence[Any] | Callable[[], Sequence[Any]]


def option(default: Any, help: str = "", *, choices: Choices | None = None, min: float | None = None,
           max: float | None = None, nonempty: bool = True) -> Any:
    """A config field: ``default`` (tuples for sequences), ``help`` text, ``choices`` (a
    sequence, or a callable returning one at validation time, e.g. the representations
    registered now), inclusive bounds ``min``/``max`` (on each element of a tuple), and
    ``nonempty`` for tuples."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "nonempty": nonempty}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple default for sequence fields")
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Preset:
    """A named set of overrides (``values``); ``needs_gpu`` is for the help text (the
    ``device`` field's validation is what rejects a GPU preset on a CPU machine)."""

    description: str
    values: Mapping[str, Any]
    needs_gpu: bool = False


@dataclass
class StudyConfig:
    """Fields shared by every study. Subclasses add their own fields and presets."""

    #: Named presets of this study: name -> :class:`Preset`.
    PRESETS: ClassVar[dict[str, Preset]] = {}

    seed: int = option(0, "random seed (data split, initialization, minibatches, probe vectors)", min=0,
                       max=2**32 - 1)
    device: str = option("cpu", "torch device: cpu, cuda or auto (cuda when available)",
                         choices=("cpu", "cuda", "auto"))
    threads: int = option(2, "torch intra-op threads while the study runs (0: torch's default)", min=0)
    progress: str = option("auto", "progress bars: auto (on a terminal), on, off", choices=("auto", "on", "off"))

    # filled by build_config (not fields): where each value came from
    def __post_init__(self) -> None:
        self._sources: dict[str, str] = {}

    # ---- hooks -------------------------------------------------------------------------
    def validate(self) -> None:
        """Cross-field checks of a subclass (raise :class:`ConfigError`); called after the
        per-field checks."""

    # ---- helpers -----------------------------------------------------------------------
    def source(self, name: str) -> str:
        return getattr(self, "_sources", {}).get(name, "default")

    def error(self, name: str, problem: str, accepted: str | None = None) -> ConfigError:
        """A :class:`ConfigError` for field ``name`` that says where its value came from."""
        return ConfigError(name, problem, accepted, self.source(name))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @property
    def progress_flag(self) -> bool | None:
        return {"auto": None, "on": True, "off": False}[self.progress]

    def resolved_device(self) -> str:
        if self.device == "auto":
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def check(self) -> None:
        """Per-field checks (types were coerced already), the GPU check, then :meth:`validate`."""
        for f in fields(self):
            _check_field(self, f, getattr(self, f.name))
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                preset = self._sources.get("device", "")
                why = f" ({preset} needs a GPU)" if preset.startswith("preset") else ""
                raise self.error("device", f"'cuda' requested{why} but this machine has no CUDA device",
                                 "cpu, auto")
        self.validate()


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


# ---------------------------------------------------------------------------------------------
# types and coercion
# ---------------------------------------------------------------------------------------------
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return {int: "integer", float: "number", str: "string", bool: "true/false", type(None): "none"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def coerce(name: str, tp: Any, value: Any, source: str = "default") -> Any:
    """``value`` converted to the field type ``tp`` (int, float, str, bool, ``X | None``,
    ``tuple[X, ...]``), else :class:`ConfigError`."""
    bad = ConfigError(name, f"expected {_type_name(tp)}, got {value!r}", source=source)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(name, a, value, source)
            except ConfigError:
                pass
        raise bad
    if origin is tuple:
        (elem, *_rest) = typing.get_args(tp)
        if isinstance(value, str):
            items: list[Any] = [s.strip() for s in value.split(",") if s.strip()]
            # each item may itself be a TOML scalar ("1e-3")
            items = [parse_value(s) for s in items]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [value]
        return tuple(coerce(name, elem, v, source) for v in items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    raise bad from None
                if f.is_integer():
                    return int(f)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise TypeError(f"unsupported config field type {tp!r} for {name!r}")  # pragma: no cover


def parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML value when it parses, else the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, KeyError):
        return text


def _accepted(choices: Choices | None) -> list[Any] | None:
    if choices is None:
        return None
    return list(choices() if callable(choices) else choices)


def _fmt_list(xs: Iterable[Any]) -> str:
    return ", ".join(str(x) for x in xs)


def _check_field(cfg: StudyConfig, f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    src = cfg.source(f.name)
    items = value if isinstance(value, tuple) else (value,)
    if isinstance(value, tuple):
        if meta.get("nonempty", True) and not value:
            raise ConfigError(f.name, "must not be empty", source=src)
        if meta.get("choices") is not None and len(set(value)) != len(value):
            raise ConfigError(f.name, f"has duplicates: {_fmt_list(value)}", source=src)
    accepted = _accepted(meta.get("choices"))
    lo, hi = meta.get("min"), meta.get("max")
    for v in items:
        if accepted is not None and v not in accepted:
            what = "value" if not isinstance(value, tuple) else "item"
            raise ConfigError(f.name, f"unknown {what} {v!r}", _fmt_list(accepted), src)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if v != v:
                raise ConfigError(f.name, "must not be NaN", source=src)
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                rng = (f"between {lo} and {hi}" if lo is not None and hi is not None
                       else f">= {lo}" if lo is not None else f"<= {hi}")
                raise ConfigError(f.name, f"{v!r} is out of range", rng, src)


# ---------------------------------------------------------------------------------------------
# building a configuration
# ---------------------------------------------------------------------------------------------
def field_types(cls: type[StudyConfig]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _normalize_key(cls: type[StudyConfig], key: str, source: str) -> str:
    k = key.strip().replace("-", "_")
    names = [f.name for f in fields(cls)]
    if k not in names:
        close = difflib.get_close_matches(k, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(k or key, f"unknown field{hint}", _fmt_list(names), source)
    return k


def parse_sets(pairs: Sequence[str]) -> list[tuple[str, Any]]:
    """``["k=v", ...]`` → ``[(k, parsed v), ...]`` (see :func:`parse_value`)."""
    out = []
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(pair, "--set needs key=value", source="--set")
        k, v = pair.split("=", 1)
        out.append((k, parse_value(v.strip())))
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """The flat ``key = value`` mapping of a config file: TOML, or YAML for ``.yaml``/``.yml``
    files (a flat ``key: value`` mapping; needs PyYAML, a dependency of the project)."""
    p = Path(path)
    yaml_file = p.suffix.lower() in (".yaml", ".yml")
    try:
        if yaml_file:
            import yaml

            with open(p, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
            if data is None:
                return {}
            if not isinstance(data, dict):
                raise ConfigError("--config", f"{str(p)!r} is not a YAML mapping", "flat `key: value` lines")
            return data
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("--config", f"no such file {str(p)!r}", "a readable TOML or YAML file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("--config", f"{str(p)!r} is not valid TOML ({e})", "flat `key = value` lines") from None
    except ImportError:
        raise ConfigError("--config", f"{str(p)!r} is YAML but PyYAML is not installed",
                          "pip install pyyaml, or a TOML file") from None
    except Exception as e:  # yaml.YAMLError (PyYAML imported lazily)
        if yaml_file and type(e).__module__.startswith("yaml"):
            raise ConfigError("--config", f"{str(p)!r} is not valid YAML ({e})", "flat `key: value` lines") from None
        raise


def build_config(cls: type[StudyConfig], *, preset: str | None = None, toml: str | Path | None = None,
                 sets: Sequence[str] | Sequence[tuple[str, Any]] = (), study: str | None = None,
                 check: bool = True) -> StudyConfig:
    """Defaults < ``preset`` < ``toml`` file < ``sets`` (``"k=v"`` strings or ``(k, value)``
    pairs), coerced to the field types and (``check=True``) validated."""
    types_ = field_types(cls)
    layers: list[tuple[str, dict[str, Any]]] = []
    file_values: dict[str, Any] = {}
    if toml is not None:
        file_values = dict(read_toml(toml))
        file_study = file_values.pop("study", None)
        if study is not None and file_study is not None and file_study != study:
            raise ConfigError("study", f"{str(toml)!r} is for study {file_study!r}, not {study!r}", study,
                              f"file {toml}")
        file_preset = file_values.pop("preset", None)
        if preset is None and file_preset is not None:
            preset = str(file_preset)
        for k, v in file_values.items():
            if isinstance(v, dict):
                raise ConfigError(k, "tables are not config fields (use flat `key = value` lines)",
                                  source=f"file {toml}")
    if preset is not None:
        if preset not in cls.PRESETS:
            raise ConfigError("preset", f"unknown preset {preset!r}", _fmt_list(cls.PRESETS) or "(none)")
        layers.append((f"preset {preset!r}", dict(cls.PRESETS[preset].values)))
    if toml is not None:
        layers.append((f"file {toml}", file_values))
    pairs = parse_sets([s for s in sets if isinstance(s, str)]) + [s for s in sets if not isinstance(s, str)]
    if pairs:
        layers.append(("--set", dict(pairs)))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, layer in layers:
        for key, raw in layer.items():
            k = _normalize_key(cls, key, source)
            values[k] = coerce(k, types_[k], raw, source)
            sources[k] = source
    cfg = cls(**values)
    cfg._sources = sources
    if check:
        cfg.check()
    return cfg


def config_from_dict(cls: type[StudyConfig], data: Mapping[str, Any], check: bool = False) -> StudyConfig:
    """Rebuild a stored configuration (``config.json``); unknown keys are an error."""
    types_ = field_types(cls)
    values = {}
    for key, raw in data.items():
        k = _normalize_key(cls, key, "stored config")
        values[k] = coerce(k, types_[k], raw, "stored config")
    cfg = cls(**values)
    if check:
        cfg.check()
    return cfg


def describe(cls: type[StudyConfig]) -> str:
    """A text table of the fields (name, default, help) and presets, for ``--help``-style output."""
    types_ = field_types(cls)
    lines = []
    for f in fields(cls):
        d = f.default
        acc = _accepted(f.metadata.get("choices")) if not callable(f.metadata.get("choices")) else None
        extra = f" [{_fmt_list(acc)}]" if acc else ""
        lines.append(f"  {f.name:<22} {_type_name(types_[f.name]):<18} default {_plain(d)!r}{extra}  "
                     f"{f.metadata.get('help', '')}")
    if cls.PRESETS:
        lines.append("presets:")
        for name, p in cls.PRESETS.items():
            lines.append(f"  {name:<22} {p.description}{' (needs a GPU)' if p.needs_gpu else ''}")
    return "\n".join(lines)
