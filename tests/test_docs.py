"""The README and docs/ show only what runs.

Every shell command they show (in a ``bash``/``sh``/``console`` block, or as inline code) is
run by a test or by ``.ci/run`` with the same flags, on smaller data where that is all that
differs: :data:`EXERCISED` says where, and a command missing from it fails here. The
README's quick start runs as written on a CPU-only machine, and the Python blocks of the
docs name only what seqstore exports.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import seqstore
from seqstore.cli import main
from seqstore.testing import make_image_folder
from seqstore.testing.faults import CASES

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("seqstore", "python", "torchrun", "pip")
SHELL_BLOCKS = {"bash", "sh", "console", "shell"}
QUICK_START = "tests/test_docs.py::test_readme_quick_start_runs_as_written"

#: Each command of the README and docs/, as :func:`command_key` writes it (the program, its
#: subcommand, module or script, and the sorted names of its flags: values and data paths
#: may differ), and where it is run: ``tests/<file>.py::<test>``, or ``.ci/run``. The test
#: passes every flag the command shows; it may add ones that shrink the data or the run.
EXERCISED: dict[str, str] = {
    # README: set-up
    "pip install torch==2.13.0 -e": ".ci/run",
    "python -m pytest -q": ".ci/run",
    "pip install litdata==0.2.76 mosaicml-streaming==0.13.0 --no-deps": ".ci/run",
    "seqstore demo": "tests/test_convert.py::test_cli_demo",
    # README: quick start, the CLI table
    "seqstore demo --workdir": QUICK_START,
    "seqstore convert --format --workers": QUICK_START,
    "seqstore info --verify": QUICK_START,
    "seqstore convert --format": "tests/test_convert.py::test_cli_convert_and_info",
    "seqstore convert": "tests/test_convert.py::test_cli_convert_and_info",
    "seqstore info": "tests/test_remote.py::test_convert_uploads_a_whole_store",
    "seqstore bench": "tests/test_bench.py::test_table_and_json_hold_every_figure",
    # docs/formats.md
    "seqstore convert --format --reader-option": (
        "tests/test_tfrecord.py::test_cli_convert_takes_the_readers_options"
    ),
    "seqstore convert --classes --format --labels": (
        "tests/test_folder.py::test_readme_val_convert_command"
    ),
    # docs/loading.md and docs/scaling-out.md: the ImageNet example
    "python examples/imagenet/main.py --batch-size --max-steps --workers": (
        "tests/test_example.py::test_example_trains_and_resumes_exactly"
    ),
    "python examples/imagenet/main.py --max-steps --resume": (
        "tests/test_example.py::test_example_trains_and_resumes_exactly"
    ),
    "torchrun examples/imagenet/main.py --batch-size --image-size --max-steps "
    "--nproc_per_node --workers": (
        "tests/test_example.py::test_readme_torchrun_line_and_its_checkpoint_on_one_and_two_ranks"
    ),
    # docs/scaling-out.md
    "seqstore convert --format --shard-mb": (
        "tests/test_webdataset.py::"
        "test_a_folder_converted_to_webdataset_is_read_back_by_webdataset_itself"
    ),
    "seqstore convert --format --shard-mb --workers": (
        "tests/test_sharded.py::test_cli_convert_and_info_of_a_sharded_store"
    ),
    "torchrun -m seqstore convert --format --master_addr --master_port --nnodes --node_rank "
    "--nproc_per_node --resume --shard-mb": (
        "tests/test_distributed.py::test_torchrun_convert_equals_one_process"
    ),
    # docs/object-storage.md
    "seqstore convert --format --shard-mb --staging-dir --workers": (
        "tests/test_remote.py::test_sharded_convert_to_s3_uploads_shards_as_they_finish_and_reads_back"
    ),
    # docs/migrating.md
    "seqstore convert --classes --format --shuffle": (
        "tests/test_docs.py::test_a_tensorpack_file_converts_as_migrating_shows"
    ),
    # docs/benchmarks.md, docs/object-storage.md, docs/guarantees.md, docs/shuffle.md
    "seqstore bench --repeat": "tests/test_bench.py::test_table_and_json_hold_every_figure",
    "seqstore bench --formats --repeat": (
        "tests/test_bench.py::test_table_and_json_hold_every_figure"
    ),
    "python benchmarks/loader.py --repeat": (
        "tests/test_benchmark_scripts.py::test_loader_benchmark_prints_throughput_first_batch_and_memory"
    ),
    "python benchmarks/hdd.py --copies --only --repeat": (
        "tests/test_benchmark_scripts.py::test_hdd_benchmark_measures_cold_and_warm_or_says_why_not"
    ),
    "python benchmarks/peers.py --repeat": (
        "tests/test_benchmark_scripts.py::test_peers_benchmark_prints_every_installed_peer_beside_seqstore"
    ),
    "python benchmarks/storage.py --repeat": (
        "tests/test_benchmark_scripts.py::test_storage_benchmark_times_every_conversion_and_read"
    ),
    "python benchmarks/convert.py --repeat": (
        "tests/test_benchmark_scripts.py::test_convert_benchmark_times_sharded_against_one_writer"
    ),
    "python benchmarks/convert.py": (
        "tests/test_benchmark_scripts.py::test_convert_benchmark_times_sharded_against_one_writer"
    ),
    "python benchmarks/plan.py": (
        "tests/test_benchmark_scripts.py::test_plan_benchmark_prints_its_table_and_the_resume"
    ),
    "python benchmarks/scale.py": (
        "tests/test_benchmark_scripts.py::test_scale_benchmark_prints_every_row"
    ),
    "python benchmarks/s3.py": "tests/test_remote.py::test_s3_benchmark_runs_as_the_readme_shows",
    "python benchmarks/faults.py --tries": (
        "tests/test_benchmark_scripts.py::test_fault_benchmark_prints_its_table"
    ),
    "python benchmarks/convergence.py": (
        "tests/test_benchmark_scripts.py::test_convergence_benchmark_trains_each_row_and_prints_its_table"
    ),
}


# -- what the pages show ---------------------------------------------------------------------


def _fenced(text: str) -> Iterator[tuple[str, list[str]]]:
    """Each fenced block of a Markdown text: its language and its lines."""
    lang: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang = line[3:].strip()
                lines = []
            else:
                yield lang, lines
                lang = None
        elif lang is not None:
            lines.append(line)


def _outside_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def _split(command: str) -> list[str]:
    """A shell line's commands (``a && b``), each without its comment."""
    tokens = shlex.split(command, comments=True)
    commands: list[list[str]] = [[]]
    for token in tokens:
        if token == "&&":
            commands.append([])
        else:
            commands[-1].append(token)
    return [shlex.join(c) for c in commands if c]


def shell_commands(page: Path) -> list[str]:
    """The commands of ``PROGRAMS`` that a page shows, in blocks and as inline code."""
    text = page.read_text()
    found: list[str] = []
    for lang, lines in _fenced(text):
        if lang not in SHELL_BLOCKS:
            continue
        joined = "\n".join(line.removeprefix("$ ") for line in lines).replace("\\\n", " ")
        for line in joined.splitlines():
            found += _split(line)
    for span in re.findall(r"`([^`]+)`", _outside_blocks(text)):
        span = " ".join(span.replace("\\|", "|").split())
        if span.split(" ", 1)[0] in PROGRAMS and " " in span:
            found += _split(span)
    return [c for c in found if c.split(" ", 1)[0] in PROGRAMS]


def command_key(command: str) -> str:
    """``command`` as :data:`EXERCISED` names it: the program and what it runs, then its
    flags' names, sorted. Values, data paths and ``[...]`` (optional) marks are left out;
    pip keeps its pinned requirements."""
    tokens = [t.strip("[]") for t in shlex.split(command)]
    flags = sorted({t.split("=", 1)[0] for t in tokens if t.startswith("-") and t != "-m"})
    program = tokens[0]
    if program == "pip":
        words = tokens[:2] + sorted(t for t in tokens if "==" in t)
    elif program == "seqstore":
        words = tokens[:2]
    else:  # python or torchrun: a module (and seqstore's subcommand) or a script
        if "-m" in tokens:
            at = tokens.index("-m")
            words = [program, "-m", *tokens[at + 1 : at + 2]]
            if tokens[at + 1 : at + 2] == ["seqstore"]:
                words.append(tokens[at + 2])
        else:
            words = [program, next(t for t in tokens if t.endswith(".py"))]
    return " ".join(words + flags)


def _where_run() -> dict[str, list[str]]:
    shown: dict[str, list[str]] = {}
    for page in PAGES:
        for command in shell_commands(page):
            shown.setdefault(command_key(command), []).append(f"{page.name}: {command}")
    return shown


def test_every_command_shown_is_run_by_a_test_or_ci() -> None:
    shown = _where_run()
    missing = {key: at for key, at in shown.items() if key not in EXERCISED}
    assert not missing, "commands shown that nothing runs:\n" + "\n".join(
        line for at in missing.values() for line in at
    )
    unused = sorted(set(EXERCISED) - set(shown))
    assert not unused, f"EXERCISED names commands no page shows: {unused}"


@pytest.mark.parametrize("key", sorted(EXERCISED))
def test_the_named_test_exists_and_passes_each_flag(key: str) -> None:
    where = EXERCISED[key]
    path, _, name = where.partition("::")
    text = (ROOT / path).read_text().replace("python3 ", "python ")
    if name:
        assert re.search(rf"^def {name}\(", text, re.MULTILINE), f"{where} does not exist"
    else:  # .ci/run: the command itself, program and pins included
        for word in key.split():
            if not word.startswith("-"):
                assert re.search(rf"(?<![\w.-]){re.escape(word)}(?![\w-])", text), word
    for flag in (w for w in key.split() if w.startswith("-")):
        assert re.search(rf"{re.escape(flag)}(?![\w-])", text), f"{where} never passes {flag}"


def test_the_command_keys_ignore_paths_and_values_only() -> None:
    assert command_key("seqstore convert ~/a b.lmdb --format lmdb --workers 2") == (
        "seqstore convert --format --workers"
    )
    assert command_key("seqstore info PATH [--verify]") == "seqstore info --verify"
    assert command_key("torchrun --nnodes 2 -m seqstore convert a b --resume") == (
        "torchrun -m seqstore convert --nnodes --resume"
    )
    assert command_key("pip install torch==2.13.0 -e '.[dev]'") == "pip install torch==2.13.0 -e"
    assert _split("pip install x && seqstore demo  # the demo") == [
        "pip install x",
        "seqstore demo",
    ]


# -- the README's quick start ----------------------------------------------------------------


def _section(page: Path, heading: str) -> str:
    text = page.read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def test_readme_quick_start_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On this machine as the set-up made it: the CPU build of torch, no GPU needed."""
    blocks = list(_fenced(_section(ROOT / "README.md", "## Quick start")))
    monkeypatch.chdir(tmp_path)
    shell = [lines for lang, lines in blocks if lang in SHELL_BLOCKS]
    assert len(shell) == 1
    for line in shell[0]:
        argv = shlex.split(line, comments=True)
        assert argv[0] == "seqstore", line
        if argv[1] == "demo":  # the demo's data, smaller: 4 classes of 20
            argv += ["--classes", "4", "--per-class", "20"]
        assert main(argv[1:]) == 0, line
    assert "80 of 80 records match" in capsys.readouterr().out
    python = ["\n".join(lines) for lang, lines in blocks if lang == "python"]
    assert len(python) == 2
    for code in python:
        exec(compile(code, "README.md", "exec"), {"__name__": "quick_start"})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "80 ['class00', 'class01', 'class02']"
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    batches = [line for line in printed if line.startswith(("0 (", "1 ("))]
    assert [line.split(" [")[0] for line in batches] == [
        f"{epoch} ({n}, 3, 224, 224) {device}" for epoch in (0, 1) for n in (64, 16)
    ]


# -- docs/migrating.md -----------------------------------------------------------------------


def test_a_tensorpack_file_converts_as_migrating_shows(
    tmp_path: Path,
    make_tensorpack_file: Callable[[Path, str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    tp_file = make_tensorpack_file(tmp_path / "ILSVRC-train.lmdb", "pickle")
    train = make_image_folder(tmp_path / "train", classes=5, per_class=1, max_side=48)
    shown = shell_commands(ROOT / "docs" / "migrating.md")
    lines = [c for c in shown if c.startswith("seqstore ") and "ILSVRC-train.lmdb" in c]
    assert [shlex.split(c)[:2] for c in lines] == [["seqstore", "info"], ["seqstore", "convert"]]
    paths = {"ILSVRC-train.lmdb": tp_file, "train.h5": tmp_path / "train.h5"}
    for command in lines:
        argv = [str(paths.get(t, t)) for t in shlex.split(command)[1:]]
        if argv[0] == "convert":
            argv[argv.index("--classes") + 1] = str(train)
        assert main(argv) == 0, command
    assert "nothing to check: tensorpack data stores no checksums" in capsys.readouterr().out
    source = seqstore.open(tp_file)
    store = seqstore.open(tmp_path / "train.h5")
    assert store.classes == [f"class{i:02d}" for i in range(5)]
    assert store.manifest.provenance.options["shuffle"] is True
    labels = {r.data: r.label for r in source.read_block(0, len(source))}
    records = store.read_block(0, len(store))
    assert sorted(labels.items()) == sorted((r.data, r.label) for r in records)
    assert all(r.verify() for r in records)


# -- Python in the docs ----------------------------------------------------------------------


def _python_blocks() -> list[tuple[str, str]]:
    return [
        (f"{page.name}#{i}", "\n".join(lines))
        for page in PAGES
        for i, (lang, lines) in enumerate(_fenced(page.read_text()))
        if lang == "python"
    ]


@pytest.mark.parametrize(("where", "code"), _python_blocks(), ids=lambda v: v.split("\n")[0])
def test_python_blocks_parse_and_import_only_what_seqstore_has(where: str, code: str) -> None:
    tree = ast.parse(code, where)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("seqstore"):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module}.{alias.name}"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "seqstore":
                assert hasattr(seqstore, node.attr), f"{where}: seqstore.{node.attr}"


def test_the_custom_transform_of_loading_md_keeps_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = next(c for where, c in _python_blocks() if "class Invert" in c)
    make_image_folder(tmp_path / "images", classes=2, per_class=4, max_side=300)
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "images", "train.lmdb", "--format", "lmdb", "-q"]) == 0
    scope: dict[str, object] = {"__name__": "loading_md"}
    exec(compile(code, "loading.md", "exec"), scope)
    images, labels = next(iter(scope["loader"]))  # type: ignore[call-overload]
    assert tuple(images.shape) == (8, 3, 224, 224) and labels.dtype == torch.int64


# -- docs/guarantees.md ----------------------------------------------------------------------


def test_the_fault_table_lists_every_case_and_its_accepted_outcome() -> None:
    table = _section(ROOT / "docs" / "guarantees.md", "## The fault table")
    rows = [
        line.split(" | ")
        for line in table.splitlines()
        if line.startswith("| ") and not line.startswith("| ---")
    ]
    assert rows[0] == ["| case", "accepted outcome", "needs root |"]
    assert [(r[0][2:], set(r[1].split(" or ")), r[2] == "yes |") for r in rows[1:]] == [
        (c.name, set(c.expected), c.needs_root) for c in CASES
    ]


# -- what the pages say ----------------------------------------------------------------------

RELEASE_NOTES = re.compile(
    r"this release|previous (run|release|version)|issue \d+|\(issue|earlier run|"
    r"than before|before this",
    re.IGNORECASE,
)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_release_notes(page: Path) -> None:
    found = [m.group(0) for m in RELEASE_NOTES.finditer(page.read_text())]
    assert not found, f"{page.name}: {found}"


def test_readme_stays_short_and_links_pages_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 350
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).is_file(), target
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, f"the README does not link {page.name}"


def test_the_readme_layout_names_every_room_of_the_package() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout of the code") :]
    block = layout[layout.index("```") + 3 :]
    block = block[: block.index("```")]
    rooms = {
        p.name for p in (ROOT / "seqstore").iterdir() if p.is_dir() and (p / "__init__.py").exists()
    }
    named = set(re.findall(r"^  ([a-z_]+)/", block, re.M))
    assert named == rooms, (
        f"rooms in the tree but not the README: {rooms - named}; gone: {named - rooms}"
    )
    for name in re.findall(r"\b([a-z_]+\.py)\b", block):
        assert any((ROOT / "seqstore").rglob(name)) or any((ROOT / "examples").rglob(name)), name
