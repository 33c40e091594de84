"""Reading and validating data files: path-precise :class:`ConfigError` for every problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ..vocab import ACTION_TYPES
from .base import ConfigError
from .checks import semantic_problems
from .model import Site


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith(("function-", "tagged-union")):
            continue  # pydantic internals, not part of the user's path
        else:
            out += f".{part}" if out else str(part)
    return out


def _pydantic_problems(err: ValidationError, data: Any) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors(include_url=False):
        loc = list(e["loc"])
        # Discriminated unions insert the tag ("staffing") into the path: drop it.
        cleaned: list[Any] = []
        for part in loc:
            if cleaned and isinstance(part, str) and part in ACTION_TYPES and isinstance(cleaned[-1], int):
                continue
            cleaned.append(part)
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        problems.append((_loc(tuple(cleaned)), msg))
    return problems


M = TypeVar("M", bound=BaseModel)


def validate_file_model(cls: type[M], data: Any, source: str, semantic: Callable[[M], list[tuple[str, str]]]) -> M:
    """Validate parsed YAML as ``cls``, then its cross-field ``semantic`` checks; raise
    :class:`ConfigError` naming each bad path. Shared by every data file (site, scenarios)."""
    if not isinstance(data, dict):
        raise ConfigError(source, [("", f"top level must be a mapping, got {type(data).__name__}")])
    try:
        obj = cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(source, _pydantic_problems(e, data)) from None
    problems = semantic(obj)
    if problems:
        raise ConfigError(source, problems)
    return obj


def parse_site(data: Any, source: str = "<site>") -> Site:
    """Validate already-parsed YAML data; raise :class:`ConfigError` naming each bad path."""
    return validate_file_model(Site, data, source, semantic_problems)


# libyaml's safe loader when present (the same safe subset, ~10× faster: a 10,000-zone site file
# of 8.5 MB takes 15 s of CPU with it, minutes without), else the pure-Python one.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_site(path: str | Path) -> Site:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), [("", f"cannot read: {e.strerror or e}")]) from None
    try:
        data = yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(str(path), [(where, f"YAML syntax: {problem}")]) from None
    return parse_site(data, str(path))
