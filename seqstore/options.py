"""Command-line options made from the pydantic config models, so they cannot drift.

Each option's type, choices, default and help come from one field of
:class:`~seqstore.config.ConvertConfig` or :class:`~seqstore.config.BenchConfig`: the help is
the first sentence of the field's entry in the model's numpydoc ``Attributes`` section, the
default is the field's. ``seqstore convert --help`` therefore says what ``convert()`` does.
"""

from __future__ import annotations

import argparse
import inspect
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .errors import ConfigError

__all__ = [
    "READER_OPTION_HELP",
    "add_model_options",
    "field_docs",
    "model_values",
    "reader_options",
]

_ENTRY = re.compile(r"^(\w+(?:, \w+)*) :")


def field_docs(model: type[BaseModel]) -> dict[str, str]:
    """The first sentence of each attribute's entry in ``model``'s numpydoc docstring."""
    docs: dict[str, str] = {}
    names: list[str] = []
    lines = inspect.cleandoc(model.__doc__ or "").splitlines()
    for line in lines[lines.index("Attributes") + 2 if "Attributes" in lines else 0 :]:
        entry = _ENTRY.match(line)
        if entry:
            names = entry.group(1).split(", ")
        elif line.startswith("    ") and names:
            for name in names:
                docs[name] = f"{docs.get(name, '')} {line.strip()}".strip()
        elif not line.strip():
            names = []
    return {name: _plain(text.split(". ")[0].rstrip(".")) for name, text in docs.items()}


def _plain(text: str) -> str:
    """reST markup as a terminal shows it: :func:`~a.b` -> a.b, ``x`` -> x."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")


def _kind(annotation: Any) -> tuple[Any, bool]:
    """The type an option parses to (or a tuple of choices), and whether None is allowed."""
    args = typing.get_args(annotation)
    optional = (
        typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args
    )
    if optional:
        annotation = next(a for a in args if a is not type(None))
    if typing.get_origin(annotation) is Literal:
        return tuple(typing.get_args(annotation)), optional
    return annotation, optional


def add_model_options(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    names: Sequence[str],
    *,
    help: dict[str, str] | None = None,
) -> None:
    """Add an option ``--field-name`` for each of ``names``, fields of ``model``.

    Parameters
    ----------
    parser
        Where the options go.
    model
        The pydantic model whose fields they set.
    names
        The fields, in the order ``--help`` lists them.
    help
        Help text to use instead of the docstring's, by field name.
    """
    docs = field_docs(model) | (help or {})
    for name in names:
        field = model.model_fields[name]
        kind, optional = _kind(field.annotation)
        required = field.default is PydanticUndefined and field.default_factory is None
        default = None if required or field.default_factory else field.default
        text = docs.get(name, "")
        options: dict[str, Any] = {"dest": name, "help": text}
        if kind is bool:
            if optional:
                options["action"] = argparse.BooleanOptionalAction
            else:
                options["action"] = "store_false" if default else "store_true"
        elif isinstance(kind, tuple):
            options["choices"] = kind
        else:
            options["type"] = str if kind is Path else kind
        if required:
            options["required"] = True
        else:
            options["default"] = default
            if default not in (None, False):
                options["help"] = f"{text} (default: {default})"
        parser.add_argument("--" + name.replace("_", "-"), **options)


def model_values(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The values of the options :func:`add_model_options` added for ``names``."""
    return {name: getattr(args, name) for name in names}


def reader_options(pairs: list[str] | None) -> dict[str, Any]:
    """The source reader's options of ``--reader-option KEY=VALUE`` (repeated): a value
    that reads as an integer is one, ``true``/``false`` are booleans, anything else text.

    Raises
    ------
    ConfigError
        A pair without ``=``.
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"--reader-option '{pair}' is not KEY=VALUE (for example label_offset=-1)"
            )
        value: Any = text
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            try:
                value = int(text)
            except ValueError:
                pass
        out[key.replace("-", "_")] = value
    return out


READER_OPTION_HELP = (
    "an option of the source's reader, KEY=VALUE, repeatable: label_offset=-1 for TF's "
    "ImageNet TFRecords, image_field=NAME, label_field=NAME, allow_pickle=true ..."
)
