"""What the server's and the trainer's configuration models share: one naming rule, one error shape.

Both are pydantic models so that one declaration gives the loader's checks, the field
descriptions and the JSON schema the Helm chart validates values with (ci/schema_gen.py). Keys
are camelCase (the chart's values) or snake_case (older files, tests), by one rule: to_camel.
Every refusal becomes a ConfigError whose message starts with the dotted path of the field, so
a bad values.yaml is fixed from the message alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, ValidationError
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails, PydanticCustomError

#: Largest count or size a setting may hold: int32, whatever YAML and Helm do to larger numbers
#: (Helm writes numbers from values files as float64, 1e+21 and up in exponent form).
INT32_MAX = 2**31 - 1

#: Config of every configuration model: camelCase aliases, snake_case accepted, unknown keys
#: refused, error paths in snake_case (the names the code and the docs use).
MODEL_CONFIG = ConfigDict(
    alias_generator=to_camel,
    validate_by_name=True,
    validate_by_alias=True,
    loc_by_alias=False,
    extra="forbid",
    use_attribute_docstrings=True,
)


class ConfigError(ValueError):
    """Invalid configuration; the message starts with the dotted path of the field at fault."""


def refuse(message: str, at: str = "") -> PydanticCustomError:
    """A refusal raised by a validator; `at` is the path below the validated field (e.g. `lstm`)."""
    return PydanticCustomError("config", "{message}", {"message": message, "at": at})


def _expected(ctx: dict[str, Any]) -> str:
    """pydantic's "'a', 'b' or 'c'" as "['a', 'b', 'c']"."""
    return "[" + str(ctx.get("expected", "")).replace(" or ", ", ") + "]"


_MESSAGES: dict[str, Callable[[ErrorDetails], str]] = {
    "missing": lambda e: "required",
    "extra_forbidden": lambda e: "unknown field",
    "model_type": lambda e: "must be a mapping",
    "model_attributes_type": lambda e: "must be a mapping",
    "dict_type": lambda e: "must be a mapping",
    "list_type": lambda e: "must be a list",
    "bool_type": lambda e: f"{e['input']!r} must be true or false",
    "bool_parsing": lambda e: f"{e['input']!r} must be true or false",
    "int_type": lambda e: f"{e['input']!r} must be an integer",
    "int_parsing": lambda e: f"{e['input']!r} must be an integer",
    "int_from_float": lambda e: f"{e['input']!r} must be an integer",
    "float_type": lambda e: f"{e['input']!r} must be a number",
    "float_parsing": lambda e: f"{e['input']!r} must be a number",
    "finite_number": lambda e: f"{e['input']!r} must be a finite number",
    "string_type": lambda e: f"{e['input']!r} must be a string",
    "string_too_short": lambda e: "must not be empty",
    "string_pattern_mismatch": lambda e: f"{e['input']!r} must match {e['ctx']['pattern']}",
    "literal_error": lambda e: f"{e['input']!r} is not one of {_expected(e['ctx'])}",
    "greater_than": lambda e: f"{e['input']!r} must be > {e['ctx']['gt']}",
    "greater_than_equal": lambda e: f"{e['input']!r} must be >= {e['ctx']['ge']}",
    "less_than": lambda e: f"{e['input']!r} must be < {e['ctx']['lt']}",
    "less_than_equal": lambda e: f"{e['input']!r} must be <= {e['ctx']['le']}",
}


def config_error(exc: ValidationError) -> ConfigError:
    """The first refusal of a validation, as `dotted.path: what is wrong`."""
    error = exc.errors(include_url=False)[0]
    ctx = error.get("ctx") or {}
    loc = list(error["loc"])
    if "[key]" in loc:  # a bad key of a mapping: the mapping is at fault
        loc = loc[: loc.index("[key]") - 1]
    parts = [str(p) for p in loc if not isinstance(p, int)]  # list items: the list is at fault
    if ctx.get("at"):
        parts.append(ctx["at"])
    path = ".".join(parts) or "config"
    describe = _MESSAGES.get(error["type"])
    text = ctx["message"] if error["type"] == "config" else describe(error) if describe else error["msg"]
    return ConfigError(f"{path}: {text}")


class YamlLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads exponent floats without a dot (`1e-07`, `1e+23`) as numbers.

    Helm's toYaml writes small and large numbers that way; YAML 1.1 (PyYAML) would read them as
    strings and refuse a value the chart accepted."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def dotted(config: Any, path: str) -> Any:
    """The value at a dotted snake_case path of a model (`lifecycle.drift.min_scored`)."""
    return reduce(getattr, path.split("."), config)


@dataclass(frozen=True)
class Bound:
    """A rule across fields: `field` (plus `plus`, when given) <=, >= or < `limit`, a field or a number.

    Declared by a model's module for its own check and for the chart (ci/schema_gen.py renders each
    into a `fail` of templates/_config_rules.tpl), as JSON Schema cannot compare two values."""

    field: str
    op: Literal["<=", ">=", "<"]
    limit: str | float
    plus: str = ""

    def sides(self, config: Any) -> tuple[Any, Any]:
        left = dotted(config, self.field) + (dotted(config, self.plus) if self.plus else 0)
        return left, dotted(config, self.limit) if isinstance(self.limit, str) else self.limit

    def broken(self, config: Any) -> bool:
        left, right = self.sides(config)
        return not bool(left <= right if self.op == "<=" else left >= right if self.op == ">=" else left < right)

    def describe(self, left: Any, right: Any, name: Callable[[str], str]) -> str:
        """What is wrong, after `field: `; `name` spells a path as the reader knows it (file or values)."""
        what = f"{name(self.plus)} + {name(self.field)} ({left})" if self.plus else f"{left}"
        limit = f"{name(self.limit)} ({right})" if isinstance(self.limit, str) else f"{right}"
        return f"{what} must be {self.op} {limit}"


@dataclass(frozen=True)
class Needs:
    """A rule across fields: `field` may be true only when `limit` (the field it needs) is true."""

    field: str
    limit: str
    why: str

    def sides(self, config: Any) -> tuple[Any, Any]:
        return dotted(config, self.field), dotted(config, self.limit)

    def broken(self, config: Any) -> bool:
        field, needed = self.sides(config)
        return bool(field and not needed)

    def describe(self, left: Any, right: Any, name: Callable[[str], str]) -> str:
        return f"needs {name(self.limit)} ({self.why})"


Rule = Bound | Needs
