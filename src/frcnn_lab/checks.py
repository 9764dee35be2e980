"""Range checks for the typed configs of the parts, and the one way to build a typed config from a mapping.

Each part's config dataclass checks its own values in ``__post_init__`` with a ``Checks`` collector, which raises
one ConfigError listing every problem of that part, each naming the key, its value and the valid choices or range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from frcnn_lab.errors import ConfigError

T = TypeVar("T")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple, ListConfig))


def positive_numbers(values: Any) -> bool:
    """A non-empty list of numbers > 0, or a non-empty list of such lists (one per feature level)."""
    if not is_sequence(values) or not values:
        return False
    if all(is_sequence(v) for v in values):
        return all(positive_numbers(v) for v in values)
    return all(is_number(v) and v > 0 for v in values)


def shown(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


class Checks:
    """Collects the problems of one config group (``prefix``: its key, e.g. ``rpn``); ``done`` raises them."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.problems = prefix, []

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, message: str) -> None:
        self.problems.append(message)

    def require(self, name: str, value: Any, ok: bool, expected: str) -> bool:
        if not ok:
            self.fail(f"{self.key(name)}={shown(value)!r} must be {expected}")
        return ok

    def choice(self, name: str, value: Any, allowed: Iterable[Any]) -> bool:
        allowed = list(allowed)
        if all(isinstance(a, str) for a in allowed):
            allowed = sorted(allowed)
        if value not in allowed:
            self.fail(f"{self.key(name)}={shown(value)!r} is unknown; choose one of {allowed}")
            return False
        return True

    def integer(self, name: str, value: Any, minimum: int) -> bool:
        return self.require(name, value, is_int(value) and value >= minimum, f"an integer >= {minimum}")

    def fraction(self, name: str, value: Any) -> bool:
        return self.require(name, value, is_number(value) and 0 <= value <= 1, "in [0, 1]")

    def non_negative(self, name: str, value: Any) -> bool:
        return self.require(name, value, is_number(value) and 0 <= value < math.inf, "finite and >= 0")

    def positive(self, name: str, value: Any) -> bool:
        return self.require(name, value, is_number(value) and 0 < value < math.inf, "finite and > 0")

    def box_weights(self, name: str, value: Any) -> bool:
        ok = is_sequence(value) and len(value) == 4 and positive_numbers(value)
        return self.require(name, value, ok, "4 numbers > 0 (dx, dy, dw, dh)")

    def part(self, build: Callable[[], T]) -> T | None:
        """``build()``: a part's config that checks itself (e.g. ``data``'s preprocessing); its problems join these."""
        try:
            return build()
        except ConfigError as error:
            self.problems += error.problems
            return None

    def done(self) -> None:
        if self.problems:
            raise ConfigError("invalid config:\n  " + "\n  ".join(self.problems), self.problems)


def free_form_fields(cls: type) -> set[str]:
    """The fields typed ``Any`` that default to a mapping: each option sets them whole (a source's own keys, an
    optimiser's arguments), nothing of the default's keys merged in."""
    return {f.name for f in fields(cls) if f.type in ("Any", Any) and isinstance(getattr(cls(), f.name), dict)}


def typed(cls: type[T], value: T | Mapping[str, Any] | None = None, key: str = "") -> T:
    """``value`` as the dataclass ``cls``: None -> ``cls()``, an instance as it is, a mapping (a dict, a DictConfig,
    a checkpoint's hyperparameters) merged over ``cls``'s defaults, with OmegaConf's type checks and the class's
    own range checks. An unknown key or a value of the wrong type is a ConfigError naming it."""
    if value is None:
        return cls()
    if is_dataclass(value) and isinstance(value, cls):
        return value
    try:
        base = OmegaConf.structured(cls)
        for name in free_form_fields(cls) & set(value):
            base[name] = None  # a mapping given for a free-form key (data.source, optim.optimizer) replaces it whole
        merged = OmegaConf.merge(base, value)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        where = ".".join(part for part in (key, str(error.full_key or "")) if part)
        problem = f"{where}: {error.msg.splitlines()[0]}" if where else error.msg.splitlines()[0]
        raise ConfigError(f"invalid config: {problem}", [problem]) from None
