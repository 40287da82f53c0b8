"""The search space: which values each hyperparameter may take, as data.

``DEFAULT_SPACE`` is the family (everything the builder supports and the search
explores); a space file can only narrow it. Hyperparameter names equal the fields of
``MiniXceptionConfig`` and every default is the seed's, so the default configuration
of any space that allows it is the book's model.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xtune.errors import SpaceError
from xtune.spaces._config import CONV_TYPES, HEADS, OPTIMIZERS, PRESETS, MiniXceptionConfig

SEED = PRESETS["seed"]

GROUPS = ("architecture", "augmentation", "training")


@dataclass(frozen=True)
class Choice:
    """A hyperparameter taking one of ``values`` (ints, floats, strings or bools).

    Args:
        name: The hyperparameter (a ``MiniXceptionConfig`` field).
        values: The allowed values, in order.
        default: The value of the default configuration.
        group: "architecture", "augmentation" or "training".
        condition: ``(parent, parent_values)``: only active when the parent takes one
            of those values (KerasTuner's ``conditional_scope``).
    """

    name: str
    values: tuple
    default: Any
    group: str = "architecture"
    condition: tuple[str, tuple] | None = None

    def all_values(self) -> tuple:
        return self.values

    def describe(self) -> str:
        return ", ".join(_fmt(v) for v in self.values)


@dataclass(frozen=True)
class IntRange:
    """An integer hyperparameter from ``min_value`` to ``max_value`` by ``step``."""

    name: str
    min_value: int
    max_value: int
    default: int
    step: int = 1
    group: str = "architecture"
    condition: tuple[str, tuple] | None = None

    def all_values(self) -> tuple:
        return tuple(range(self.min_value, self.max_value + 1, self.step))

    def describe(self) -> str:
        return f"{self.min_value}..{self.max_value}" + (f" step {self.step}" if self.step != 1 else "")


@dataclass(frozen=True)
class FloatRange:
    """A float hyperparameter from ``min_value`` to ``max_value`` by ``step``."""

    name: str
    min_value: float
    max_value: float
    default: float
    step: float
    group: str = "architecture"
    condition: tuple[str, tuple] | None = None

    def all_values(self) -> tuple:
        n = math.floor((self.max_value - self.min_value) / self.step + 1e-9)
        return tuple(round(self.min_value + i * self.step, 10) for i in range(n + 1))

    def describe(self) -> str:
        return f"{_fmt(self.min_value)}..{_fmt(self.max_value)} step {_fmt(self.step)}"


Spec = Choice | IntRange | FloatRange

_BN = ("batch_norm", (True,))

#: The whole family, in sampling order. Every default is the seed's value.
FAMILY: tuple[Spec, ...] = (
    IntRange("num_stages", 1, 6, SEED.num_stages),
    Choice("base_width", (8, 16, 32, 64), SEED.base_width),
    Choice("width_growth", (1.0, 1.5, 2.0), SEED.width_growth),
    Choice("conv_type", CONV_TYPES, SEED.conv_type),
    Choice("residual", (True, False), SEED.residual),
    Choice("batch_norm", (True, False), SEED.batch_norm),
    Choice("bn_momentum", (0.99, 0.9), SEED.bn_momentum, condition=_BN),
    IntRange("convs_per_stage", 1, 3, SEED.convs_per_stage),
    Choice("kernel_size", (3, 5), SEED.kernel_size),
    Choice("stem_filters", (16, 32, 64), SEED.stem_filters),
    Choice("stem_kernel", (3, 5, 7), SEED.stem_kernel),
    Choice("head", HEADS, SEED.head),
    FloatRange("dropout", 0.0, 0.5, SEED.dropout, step=0.1),
    Choice("flip", ("none", "horizontal", "horizontal_and_vertical"), SEED.flip, group="augmentation"),
    Choice("rotation", (0.0, 0.1, 0.2), SEED.rotation, group="augmentation"),
    Choice("zoom", (0.0, 0.1, 0.2), SEED.zoom, group="augmentation"),
    Choice("optimizer", OPTIMIZERS, SEED.optimizer, group="training"),
    Choice("learning_rate", (1e-4, 3e-4, 1e-3, 3e-3), SEED.learning_rate, group="training"),
)


@dataclass(frozen=True)
class SearchSpace:
    """A (possibly narrowed) space over the family.

    Args:
        specs: One spec per hyperparameter, all of ``FAMILY``'s names, in its order.
            A spec with a single value is fixed.
        name: Where the space came from (a file path or a built-in name).
    """

    specs: tuple[Spec, ...] = FAMILY
    name: str = "default"

    def __getitem__(self, name: str) -> Spec:
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def searched(self) -> tuple[Spec, ...]:
        """The specs with more than one value."""
        return tuple(s for s in self.specs if len(s.all_values()) > 1)

    def fixed(self) -> tuple[Spec, ...]:
        """The specs with exactly one value."""
        return tuple(s for s in self.specs if len(s.all_values()) == 1)

    def default_config(self) -> MiniXceptionConfig:
        """The configuration made of every spec's default."""
        values: dict[str, Any] = {s.name: s.default for s in self.specs}
        return MiniXceptionConfig(**values)

    def num_configurations(self, group: str | None = None) -> int:
        """Distinct configurations, counting a conditional value only where it is active.

        Args:
            group: Count only the hyperparameters of this group ("architecture", ...).
        """
        specs = [s for s in self.specs if group is None or s.group == group]
        children = {s.condition[0]: s for s in specs if s.condition}
        total = 1
        for spec in specs:
            if spec.condition:
                continue
            child = children.get(spec.name)
            if child is None:
                total *= len(spec.all_values())
            else:
                assert child.condition is not None  # children holds conditional specs only
                n_child = len(child.all_values())
                total *= sum(n_child if v in child.condition[1] else 1 for v in spec.all_values())
        return total

    def to_dict(self) -> dict:
        """JSON-ready form (stored in a search's run.json, so a resume needs no file)."""
        return {
            "name": self.name,
            "specs": [{"kind": type(s).__name__, **dataclasses.asdict(s)} for s in self.specs],
        }

    @classmethod
    def from_dict(cls, data: dict) -> SearchSpace:
        """Inverse of ``to_dict``."""
        kinds = {"Choice": Choice, "IntRange": IntRange, "FloatRange": FloatRange}
        specs = []
        for raw in data["specs"]:
            raw = dict(raw)
            kind = kinds[raw.pop("kind")]
            if raw.get("values") is not None:
                raw["values"] = tuple(raw["values"])
            if raw.get("condition"):
                raw["condition"] = (raw["condition"][0], tuple(raw["condition"][1]))
            specs.append(kind(**raw))
        return cls(tuple(specs), name=data.get("name", "custom"))

    def extreme_config(self, largest: bool) -> MiniXceptionConfig:
        """The configuration with the most (or fewest) parameters.

        The parameter count grows with every architecture value (more stages, wider,
        standard conv, residual and batch norm on, bigger kernels), so the extreme is
        each hyperparameter at its extreme.
        """
        pick = max if largest else min
        values: dict[str, Any] = {}
        for spec in self.specs:
            if spec.group != "architecture":
                values[spec.name] = spec.default
            elif spec.name == "conv_type":
                allowed = spec.all_values()
                order = ["separable", "standard"] if largest else ["standard", "separable"]
                values[spec.name] = next(v for v in reversed(order) if v in allowed)
            else:
                values[spec.name] = pick(spec.all_values())
        return MiniXceptionConfig(**values)


DEFAULT_SPACE = SearchSpace()

_BUILTIN_DIR = Path(__file__).parent / "builtin"


def builtin_spaces() -> list[str]:
    """Names accepted by ``load_space`` besides file paths."""
    return ["default"] + sorted(p.stem for p in _BUILTIN_DIR.glob("*.toml"))


def load_space(ref: str | Path | SearchSpace | None = None) -> SearchSpace:
    """Load a space: a TOML file that narrows the family, or a built-in name.

    A file holds one key per hyperparameter to narrow; unnamed ones keep the family's
    values. Where the seed's value is narrowed away, the default becomes the allowed
    value nearest to it (or the first listed) unless the file gives one. A scalar fixes the value, a list restricts the choices, a table narrows a
    range (``{min = 2, max = 4}``, numeric hyperparameters only) or gives
    ``{values = [...], default = ...}``; ``default`` may go with either table form::

        conv_type = "separable"
        base_width = [16, 32]
        num_stages = { min = 2, max = 4 }
        dropout = { min = 0.0, max = 0.3, default = 0.2 }

    Args:
        ref: A path, a built-in name (see ``builtin_spaces()``), a ``SearchSpace``
            (returned as is), or None for the family.

    Raises:
        SpaceError: One line naming the file, the key and what is allowed.
    """
    if isinstance(ref, SearchSpace):
        return ref
    if ref is None or str(ref) == "default":
        return DEFAULT_SPACE
    path = Path(ref)
    if not path.exists() and (_BUILTIN_DIR / f"{ref}.toml").exists():
        path, label = _BUILTIN_DIR / f"{ref}.toml", str(ref)
    else:
        label = str(path)
    if not path.is_file():
        raise SpaceError(f"no space file or built-in space named {str(ref)!r} (built-in: {', '.join(builtin_spaces())})")
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SpaceError(f"{label}: not valid TOML: {error}") from None
    return narrow_space(table, name=label)


def narrow_space(overrides: dict[str, Any], base: SearchSpace = DEFAULT_SPACE, name: str = "custom") -> SearchSpace:
    """Narrow ``base`` by a mapping of hyperparameter name -> scalar, list or table.

    Raises:
        SpaceError: An unknown name, a value outside ``base``, an empty range.
    """
    names = [s.name for s in base.specs]
    for key in overrides:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise SpaceError(f"{name}: unknown hyperparameter {key!r}; {hint}allowed: {', '.join(names)}")
    specs = tuple(_narrow(spec, overrides[spec.name], name) if spec.name in overrides else spec for spec in base.specs)
    return SearchSpace(specs, name=name)


def _narrow(spec: Spec, override: Any, label: str) -> Spec:
    where = f"{label}: {spec.name}"
    allowed = spec.all_values()
    allowed_text = spec.describe()
    default: Any = None
    if isinstance(override, dict):
        extra = set(override) - {"min", "max", "values", "default"}
        if extra:
            raise SpaceError(f"{where}: unknown key {sorted(extra)[0]!r} (use min/max, values, default)")
        if "values" in override and ({"min", "max"} & set(override)):
            raise SpaceError(f"{where}: give either values or min/max, not both")
        default = override.get("default")
        if "values" in override:
            values = _check_values(spec, override["values"], where, allowed, allowed_text)
        elif {"min", "max"} & set(override):
            if not all(_is_number(v) for v in allowed):
                raise SpaceError(f"{where}: min/max only narrow numeric hyperparameters (allowed: {allowed_text})")
            lo, hi = override.get("min", min(allowed)), override.get("max", max(allowed))
            for bound in (lo, hi):
                if not _is_number(bound):
                    raise SpaceError(f"{where}: min/max must be numbers; got {bound!r}")
            if lo > hi:
                raise SpaceError(f"{where}: empty range, min {_fmt(lo)} > max {_fmt(hi)}")
            if lo < min(allowed) - 1e-12 or hi > max(allowed) + 1e-12:
                raise SpaceError(f"{where}: {{min = {_fmt(lo)}, max = {_fmt(hi)}}} reaches outside the family "
                                 f"(allowed: {allowed_text})")
            values = tuple(v for v in allowed if lo - 1e-12 <= v <= hi + 1e-12)
            if not values:
                raise SpaceError(f"{where}: no value of the family lies in [{_fmt(lo)}, {_fmt(hi)}] (allowed: {allowed_text})")
        else:
            values = allowed
    elif isinstance(override, list):
        values = _check_values(spec, override, where, allowed, allowed_text)
    else:
        values = _check_values(spec, [override], where, allowed, allowed_text)

    if default is not None:
        default = _check_values(spec, [default], where + " default", values, ", ".join(map(_fmt, values)))[0]
    elif any(_same(spec.default, v) for v in values):
        default = spec.default
    elif _is_number(spec.default) and all(_is_number(v) for v in values):
        default = min(values, key=lambda v: abs(v - spec.default))  # nearest to the seed
    else:
        default = values[0]
    if isinstance(spec, Choice):
        return dataclasses.replace(spec, values=values, default=default)
    if isinstance(spec, IntRange) and _is_arithmetic(values):
        step = values[1] - values[0] if len(values) > 1 else spec.step
        return dataclasses.replace(spec, min_value=values[0], max_value=values[-1], step=step, default=default)
    if isinstance(spec, FloatRange) and _is_arithmetic(values):
        step = round(values[1] - values[0], 10) if len(values) > 1 else spec.step
        return dataclasses.replace(spec, min_value=values[0], max_value=values[-1], step=step, default=default)
    # An irregular subset of a range becomes a choice.
    return Choice(spec.name, values, default, group=spec.group, condition=spec.condition)


def _check_values(spec, given, where, allowed, allowed_text) -> tuple:
    if not isinstance(given, list):
        raise SpaceError(f"{where}: values must be a list; got {given!r}")
    if not given:
        raise SpaceError(f"{where}: empty list (allowed: {allowed_text})")
    out = []
    for value in given:
        match = next((a for a in allowed if _same(a, value)), None)
        if match is None:
            raise SpaceError(f"{where} = {_fmt(value)} is outside the family (allowed: {allowed_text})")
        if match not in out:
            out.append(match)
    return tuple(sorted(out, key=allowed.index))


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
    if _is_number(a) and _is_number(b):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_arithmetic(values: tuple) -> bool:
    if len(values) < 3:
        return True
    step = values[1] - values[0]
    return all(math.isclose(values[i + 1] - values[i], step, abs_tol=1e-9) for i in range(len(values) - 1))


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
