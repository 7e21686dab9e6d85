"""A config from a model, a dict or a JSON/YAML file, with pydantic's errors made one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError

__all__ = ["load_config"]

M = TypeVar("M", bound=BaseModel)


def load_config(
    model: type[M], source: M | dict[str, Any] | str | Path | None = None, **overrides: Any
) -> M:
    """Build a config from a model instance, a dict, or a JSON/YAML file, plus overrides.

    Raises
    ------
    ConfigError
        A value is invalid; the message names the field and the problem.
    """
    if isinstance(source, model):
        data = source.model_dump()
    elif isinstance(source, (str, Path)):
        data = _read_file(Path(source))
    else:
        data = dict(source or {})
    data.update(overrides)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, model.__name__)) from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file '{path}': {exc.strerror}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of option names to values")
    return data


def _one_line(exc: ValidationError, name: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or name
        parts.append(f"{loc}={err.get('input')!r}: {err['msg']}")
    return f"invalid {name}: " + "; ".join(parts)
