"""Typed parameters of models and data sets, and plug-ins that add models and data sets to FedFleet.

A Python package offers models and data sets through entry points (importlib.metadata), e.g. in its
pyproject.toml:

    [project.entry-points."fedfleet.models"]
    residual_mlp = "fedfleet_example.models:RESIDUAL_MLP"
    [project.entry-points."fedfleet.datasets"]
    blobs = "fedfleet_example.datasets:BLOBS"

The entry point's name is the model's (data set's) name in job configs; the object it names is a
`ModelDeclaration` / `DatasetDeclaration`, or a plain mapping with the same fields (`build` or `load`,
`params`, `label`, `help`) for a package that would rather not import FedFleet at import time.

A model's `build(input_shape, num_classes, **params)` returns an `nn.Module` whose state_dict holds only
float32 parameters (the `Weights` convention of the whole FL core: no buffers such as batch norm's
running statistics). It runs on the phones too: the model's code must need nothing but the standard
library, torch and numpy — agent.pyz bundles the plug-in's pure-Python package (training/agent/build.py).
A data set's `load(seed=..., **params)` returns a `DatasetSplits`; it runs on the server only.

`validate_params` is the one check of a job's parameters against a declaration; the job form, the API and
`run_job` call it (through nets.validate_model_params / datasets.validate_dataset_params), and building a
plug-in model or loading a plug-in data set calls it again, so phone and server agree on what was meant.

A broken plug-in (an import error, a malformed declaration, a name taken by a built-in) never breaks
FedFleet: discovery leaves it out and records a `PluginProblem` saying why, for the admin to see.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any, Generic, TypeVar

MODELS_GROUP = "fedfleet.models"
DATASETS_GROUP = "fedfleet.datasets"
BUILT_IN = "built-in"

PARAM_TYPES = ("int", "float", "str", "bool", "ints")  # "ints": a list of integers (layer widths)
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# Keywords FedFleet itself passes: `seed` to every loader and model build; a model spec's own keys.
RESERVED_PARAM_NAMES = frozenset({"seed"})
RESERVED_MODEL_PARAM_NAMES = frozenset({"name", "input_shape", "num_classes"})
MAX_STR_LENGTH = 200
MAX_ITEMS_LIMIT = 64
_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
_FALSE_WORDS = frozenset({"false", "0", "no", "off"})


class DeclarationError(ValueError):
    """A malformed declaration (a plug-in's mistake, not a job's)."""


class ParamError(ValueError):
    """Parameters that do not fit a declaration; `problems` has one sentence per problem."""

    def __init__(self, subject: str, problems: Sequence[str]) -> None:
        self.subject = subject
        self.problems = tuple(problems)
        super().__init__(f"{subject}: " + "; ".join(self.problems))


class PluginError(ValueError):
    """A plug-in's own code failed while building a model or loading a data set."""


# --------------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Param:
    """One typed parameter: its name, type (int, float, str, bool, or ints: a list of integers),
    default, inclusive bounds (min/max: of the value, or of each item of an ints list), help text, the
    allowed values of a str parameter (choices) and the longest an ints list may be (max_items)."""

    name: str
    type: str
    default: Any
    min: float | None = None
    max: float | None = None
    help: str = ""
    choices: tuple[str, ...] = ()
    max_items: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.default, list):  # a frozen, hashable default for ints
            object.__setattr__(self, "default", tuple(self.default))
        if isinstance(self.choices, list):
            object.__setattr__(self, "choices", tuple(self.choices))
        problems = self._declaration_problems()
        if problems:
            raise DeclarationError(f"parameter {self.name!r}: " + "; ".join(problems))

    def _declaration_problems(self) -> list[str]:
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            return ["a name is 1-40 characters of a-z, 0-9 and _, starting with a letter"]
        if self.name in RESERVED_PARAM_NAMES:
            return [f"{self.name!r} is reserved for FedFleet"]
        if self.type not in PARAM_TYPES:
            return [f"type must be one of {', '.join(PARAM_TYPES)}, got {self.type!r}"]
        problems = []
        for bound in ("min", "max"):
            value = getattr(self, bound)
            if value is not None and (_not_a_number(value) or not math.isfinite(value)):
                problems.append(f"{bound} must be a finite number")
        if self.min is not None and self.max is not None and not problems and self.min > self.max:
            problems.append(f"min {self.min} is above max {self.max}")
        if (self.min is not None or self.max is not None) and self.type in ("str", "bool"):
            problems.append(f"a {self.type} parameter has no min/max")
        if self.choices and (self.type != "str" or not all(isinstance(c, str) for c in self.choices)):
            problems.append("choices are for str parameters and must be strings")
        if not isinstance(self.max_items, int) or not 1 <= self.max_items <= MAX_ITEMS_LIMIT:
            problems.append(f"max_items must be an integer in 1..{MAX_ITEMS_LIMIT}")
        if not isinstance(self.help, str):
            problems.append("help must be a string")
        if not problems:
            default_problem = self.check(self.default)[1]
            if default_problem:
                problems.append(f"the default does not fit the declaration: {default_problem}")
        return problems

    def check(self, value: Any) -> tuple[Any, str | None]:
        """(normalised value, None) when `value` fits, else (None, why not)."""
        if self.type == "ints":
            return self._check_ints(value)
        if self.type == "bool":
            return (
                (value, None) if isinstance(value, bool) else (None, f"must be true or false, got {value!r}")
            )
        if self.type == "str":
            return self._check_str(value)
        number: float | int | None
        if self.type == "int":
            number = _as_int(value)
            if number is None:
                return None, f"must be an integer, got {value!r}"
        else:
            if _not_a_number(value) or not math.isfinite(value):
                return None, f"must be a finite number, got {value!r}"
            number = float(value)
        problem = self._range_problem(number)
        return (None, problem) if problem else (number, None)

    def _check_str(self, value: Any) -> tuple[Any, str | None]:
        if not isinstance(value, str):
            return None, f"must be a string, got {value!r}"
        if len(value) > MAX_STR_LENGTH:
            return None, f"must be at most {MAX_STR_LENGTH} characters"
        if self.choices and value not in self.choices:
            return None, f"must be one of {', '.join(self.choices)}, got {value!r}"
        return value, None

    def _check_ints(self, value: Any) -> tuple[Any, str | None]:
        if not isinstance(value, list | tuple) or not value:
            return None, f"must be a non-empty list of integers, got {value!r}"
        if len(value) > self.max_items:
            return None, f"must have at most {self.max_items} items, got {len(value)}"
        maybe = [_as_int(item) for item in value]
        items = [item for item in maybe if item is not None]
        if len(items) != len(maybe):
            return None, f"must be a list of integers, got {list(value)!r}"
        for item in items:
            problem = self._range_problem(item)
            if problem:
                return None, f"every item {problem}"
        return tuple(items), None

    def _range_problem(self, number: float) -> str | None:
        if self.min is not None and number < self.min:
            return f"must be >= {_show(self.min)}, got {_show(number)}"
        if self.max is not None and number > self.max:
            return f"must be <= {_show(self.max)}, got {_show(number)}"
        return None

    def parse(self, text: str) -> Any:
        """A form's text input as this parameter's type (empty text means the default); the result still
        goes through `check`. Raises ValueError for text that is not of the type."""
        text = text.strip()
        if not text:
            return self.default
        if self.type == "str":
            return text
        if self.type == "bool":
            word = text.lower()
            if word in _TRUE_WORDS | _FALSE_WORDS:
                return word in _TRUE_WORDS
            raise ValueError(f"must be true or false, got {text!r}")
        if self.type == "ints":
            return [_parse_int(part) for part in re.split(r"[\s,]+", text.strip(", ")) if part]
        return _parse_int(text) if self.type == "int" else _parse_float(text)

    def to_json(self) -> dict[str, Any]:
        """What the job form and the API show of a parameter."""
        default = list(self.default) if isinstance(self.default, tuple) else self.default
        out: dict[str, Any] = {"name": self.name, "type": self.type, "default": default, "help": self.help}
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        if self.choices:
            out["choices"] = list(self.choices)
        if self.type == "ints":
            out["max_items"] = self.max_items
        return out

    def json_default(self) -> Any:
        return list(self.default) if isinstance(self.default, tuple) else self.default


def _not_a_number(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int | float)


def _as_int(value: Any) -> int | None:
    """An integer, or an integral float (JSON clients may send 3.0); never a bool."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"must be an integer, got {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"must be a number, got {text!r}") from None


def _show(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def validate_params(
    subject: str, params: Sequence[Param], given: Mapping[str, Any], *, from_text: bool = False
) -> dict[str, Any]:
    """Every declared parameter's value (given, else its default), checked against the declaration.

    `from_text=True` parses string values first (what a form posts). All problems — unknown names, wrong
    types, out-of-range values — are collected into one ParamError, one sentence each. ints values come
    back as lists (JSON-able, the form a model spec carries)."""
    if not isinstance(given, Mapping):
        raise ParamError(subject, [f"parameters must be an object, got {type(given).__name__}"])
    declared = {p.name: p for p in params}
    problems = []
    unknown = sorted(str(name) for name in given if name not in declared)
    if unknown:
        takes = ", ".join(declared) or "no parameters"
        problems.append(f"unknown parameter(s) {', '.join(unknown)} (it takes {takes})")
    values: dict[str, Any] = {}
    for name, param in declared.items():
        raw = given.get(name, param.default)
        if from_text and isinstance(raw, str):
            try:
                raw = param.parse(raw)
            except ValueError as exc:
                problems.append(f"{name} {exc}")
                continue
        value, problem = param.check(raw)
        if problem:
            problems.append(f"{name} {problem}")
        else:
            values[name] = list(value) if isinstance(value, tuple) else value
    if problems:
        raise ParamError(subject, problems)
    return values


def coerce_params(raw: Any) -> tuple[Param, ...]:
    """A declaration's `params`: Param objects or mappings of Param's fields."""
    if raw is None:
        return ()
    if isinstance(raw, Mapping) or not isinstance(raw, Iterable):
        raise DeclarationError("params must be a list of parameters")
    out = []
    for item in raw:
        if isinstance(item, Param):
            out.append(item)
        elif isinstance(item, Mapping):
            try:
                out.append(Param(**item))
            except TypeError as exc:  # missing or unknown field
                raise DeclarationError(f"parameter {item.get('name')!r}: {exc}") from None
        else:
            raise DeclarationError(f"a parameter must be a Param or a mapping, got {type(item).__name__}")
    names = [p.name for p in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DeclarationError(f"parameter(s) declared twice: {', '.join(duplicates)}")
    return tuple(out)


# ------------------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class ModelDeclaration:
    """A model: `build(input_shape, num_classes, **params) -> nn.Module`. `data_kwargs` names keywords
    the data set supplies (DatasetSplits.model_kwargs, e.g. the CTR model's table sizes), which are not
    job parameters."""

    name: str
    build: Callable[..., Any]
    params: tuple[Param, ...] = ()
    label: str = ""
    help: str = ""
    origin: str = BUILT_IN
    data_kwargs: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", coerce_params(self.params))
        object.__setattr__(self, "data_kwargs", frozenset(self.data_kwargs))
        if not callable(self.build):
            raise DeclarationError(f"model {self.name!r}: build must be callable")
        _check_text_fields(self.name, self.label, self.help)
        taken = sorted({p.name for p in self.params} & (RESERVED_MODEL_PARAM_NAMES | self.data_kwargs))
        if taken:
            raise DeclarationError(
                f"model {self.name!r}: parameter(s) {', '.join(taken)} are set by FedFleet or the data set"
            )

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.json_default() for p in self.params}

    def validate(self, given: Mapping[str, Any], *, from_text: bool = False) -> dict[str, Any]:
        return validate_params(f"model {self.name!r}", self.params, given, from_text=from_text)

    def to_json(self) -> dict[str, Any]:
        return _declaration_json(self.name, self.label, self.help, self.origin, self.params)


@dataclass(frozen=True)
class DatasetDeclaration:
    """A data set: `load(seed=..., **params) -> DatasetSplits`."""

    name: str
    load: Callable[..., Any]
    params: tuple[Param, ...] = ()
    label: str = ""
    help: str = ""
    origin: str = BUILT_IN

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", coerce_params(self.params))
        if not callable(self.load):
            raise DeclarationError(f"data set {self.name!r}: load must be callable")
        _check_text_fields(self.name, self.label, self.help)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.json_default() for p in self.params}

    def validate(self, given: Mapping[str, Any], *, from_text: bool = False) -> dict[str, Any]:
        return validate_params(f"data set {self.name!r}", self.params, given, from_text=from_text)

    def to_json(self) -> dict[str, Any]:
        return _declaration_json(self.name, self.label, self.help, self.origin, self.params)


def _check_text_fields(name: Any, label: Any, help_text: Any) -> None:
    if not isinstance(name, str):
        raise DeclarationError("name must be a string")
    if not isinstance(label, str) or not isinstance(help_text, str):
        raise DeclarationError(f"{name!r}: label and help must be strings")


def _declaration_json(
    name: str, label: str, help_text: str, origin: str, params: Sequence[Param]
) -> dict[str, Any]:
    return {
        "name": name,
        "label": label or name,
        "help": help_text,
        "origin": origin,
        "params": [p.to_json() for p in params],
    }


Declaration = TypeVar("Declaration", ModelDeclaration, DatasetDeclaration)


def coerce_declaration(kind: type[Declaration], name: str, origin: str, obj: Any) -> Declaration:
    """The object an entry point names, as a declaration named after the entry point."""
    if isinstance(obj, kind):
        if obj.name and obj.name != name:
            raise DeclarationError(f"declares the name {obj.name!r} but its entry point is {name!r}")
        return replace(obj, name=name, origin=origin)
    if isinstance(obj, Mapping):
        fields_ = {"params", "label", "help"}
        fields_ |= {"build", "data_kwargs"} if kind is ModelDeclaration else {"load"}
        unknown = sorted(set(obj) - fields_)
        if unknown:
            raise DeclarationError(
                f"unknown field(s) {', '.join(map(str, unknown))} (known: {', '.join(sorted(fields_))})"
            )
        try:
            return kind(name=name, origin=origin, **obj)
        except TypeError as exc:
            raise DeclarationError(str(exc)) from None
    raise DeclarationError(
        f"the entry point must name a {kind.__name__} or a mapping, got {type(obj).__name__}"
    )


# ---------------------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class PluginProblem:
    """Why an installed plug-in was left out."""

    group: str
    name: str
    origin: str
    reason: str

    def __str__(self) -> str:
        return f"{self.group} {self.name!r} ({self.origin}): {self.reason}"


@dataclass(frozen=True)
class Discovered(Generic[Declaration]):
    declarations: dict[str, Declaration]
    problems: tuple[PluginProblem, ...]

    def unknown(self, kind: str, name: str, known: Sequence[str]) -> ValueError:
        """The error for a name that is not available: why, when an installed plug-in was refused."""
        for problem in self.problems:
            if problem.name == name:
                return ValueError(
                    f"{kind} plug-in {name!r} ({problem.origin}) is not available: {problem.reason}"
                )
        return ValueError(f"unknown {kind} {name!r}; known: {', '.join(known)}")


def entry_point_origin(entry_point: metadata.EntryPoint) -> str:
    dist = entry_point.dist
    return f"{dist.name} {dist.version}" if dist is not None else f"module {entry_point.module}"


def discover(
    kind: type[Declaration],
    group: str,
    entry_points: Iterable[metadata.EntryPoint],
    *,
    reserved: Collection[str] = (),
) -> Discovered[Declaration]:
    """Load each entry point and coerce what it names; a plug-in that fails is left out with a reason.

    `reserved` are the built-ins' names: a plug-in cannot replace a built-in (a job that says "mlp" must
    mean FedFleet's MLP whatever is installed). Two plug-ins with one name are both refused, for the same
    reason: which one a job meant would depend on the order packages were installed in."""
    points = list(entry_points)
    claims = Counter(point.name for point in points)
    declarations: dict[str, Declaration] = {}
    problems: list[PluginProblem] = []
    for point in points:
        origin = entry_point_origin(point)
        try:
            declarations[point.name] = _declaration_of(kind, point, origin, reserved, claims[point.name])
        except DeclarationError as exc:
            problems.append(PluginProblem(group, point.name, origin, str(exc)))
    return Discovered(declarations, tuple(problems))


def _declaration_of(
    kind: type[Declaration], point: metadata.EntryPoint, origin: str, reserved: Collection[str], claims: int
) -> Declaration:
    if not NAME_PATTERN.match(point.name):
        raise DeclarationError("a name is 1-40 characters of a-z, 0-9 and _, starting with a letter")
    if point.name in reserved:
        raise DeclarationError(f"{point.name!r} is a built-in name")
    if claims > 1:
        raise DeclarationError(f"{claims} installed plug-ins declare {point.name!r}")
    try:
        obj = point.load()
    except Exception as exc:  # noqa: BLE001 - a plug-in's import may fail any way; FedFleet goes on
        raise DeclarationError(f"cannot be imported: {type(exc).__name__}: {exc}") from None
    return coerce_declaration(kind, point.name, origin, obj)


@functools.cache
def installed(group: str, reserved: frozenset[str]) -> Discovered[Any]:
    """The plug-ins installed in this interpreter (cached: entry points are read once per process; call
    `refresh()` after installing one into a running process)."""
    kind: type[Any] = ModelDeclaration if group == MODELS_GROUP else DatasetDeclaration
    if group not in (MODELS_GROUP, DATASETS_GROUP):
        raise ValueError(f"unknown plug-in group {group!r}")
    return discover(kind, group, metadata.entry_points(group=group), reserved=reserved)


def refresh() -> None:
    installed.cache_clear()


def call_plugin(what: str, origin: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a plug-in's code; whatever it raises becomes a PluginError (a ValueError) naming the plug-in,
    so a job fails with a reason instead of a worker crashing."""
    try:
        return function(*args, **kwargs)
    except ValueError as exc:  # the plug-in's own explanation of a bad input
        raise PluginError(f"{what}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - third-party code: any failure is reported, never raised raw
        raise PluginError(f"{what} ({origin}) failed: {type(exc).__name__}: {exc}") from exc
