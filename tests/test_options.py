"""The command line's convert and bench options are the config models' fields."""

from __future__ import annotations

import argparse

import pytest
from pydantic import BaseModel

from seqstore.cli import BENCH_OPTIONS, CONVERT_OPTIONS, build_parser
from seqstore.config import BenchConfig, ConvertConfig
from seqstore.options import add_model_options, field_docs


def _defaults(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


@pytest.mark.parametrize(
    ("argv", "model", "names"),
    [
        (["convert", "a", "b", "--format", "lmdb"], ConvertConfig(format="lmdb"), CONVERT_OPTIONS),
        (["bench", "src"], BenchConfig(src="src"), BENCH_OPTIONS),
    ],
)
def test_option_defaults_are_the_models(argv: list[str], model: BaseModel, names: tuple) -> None:
    args = _defaults(argv)
    for name in names:
        value = getattr(args, name)
        expected = getattr(model, name)
        assert (value == expected) or (str(value) == str(expected)), name


def test_every_model_field_but_the_few_is_an_option() -> None:
    handled_apart = {
        "progress",  # -q/--quiet says it the other way round
        "distributed",  # --distributed/--no-distributed, by default when under torchrun
        "storage_options",  # credentials come from the environment on the command line
        "reader_options",  # the source's own reader's options: Python only
    }
    assert set(ConvertConfig.model_fields) - set(CONVERT_OPTIONS) == handled_apart
    assert set(BenchConfig.model_fields) - set(BENCH_OPTIONS) == {
        "src",  # positional
        "formats",  # comma-separated on the command line
        "transform",  # choices from the transform registry
        "baselines",  # --no-baselines
    }


def test_help_and_types_come_from_the_field() -> None:
    class Model(BaseModel):
        """A model.

        Attributes
        ----------
        rate : float
            How fast, in ``MB/s``. More words.
        mode : {"a", "b"}
            Which :func:`~x.y` to use.
        """

        rate: float = 2.5
        mode: str = "a"

    assert field_docs(Model) == {"rate": "How fast, in MB/s", "mode": "Which x.y to use"}
    parser = argparse.ArgumentParser()
    add_model_options(parser, Model, ["rate"])
    assert parser.parse_args([]).rate == 2.5
    assert parser.parse_args(["--rate", "4"]).rate == 4.0
    assert "How fast, in MB/s (default: 2.5)" in " ".join(parser.format_help().split())


def test_a_changed_model_default_reaches_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    field = ConvertConfig.model_fields["checkpoint_mb"]
    monkeypatch.setattr(field, "default", 32.0)
    assert _defaults(["convert", "a", "b", "--format", "lmdb"]).checkpoint_mb == 32.0
