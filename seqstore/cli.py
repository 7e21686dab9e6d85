"""The ``seqstore`` command: parse, validate, call the job, print.

Every error a user can cause ends as one ``seqstore: error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ._version import __version__
from .backends import Reader
from .config import BenchConfig, ConvertConfig
from .errors import SeqstoreError, SeqstoreWarning, for_cli
from .options import READER_OPTION_HELP, add_model_options, model_values, reader_options

__all__ = ["BENCH_OPTIONS", "CONVERT_OPTIONS", "build_parser", "main"]


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert

    values = model_values(args, CONVERT_OPTIONS)
    # 0 is how a shell says "no limit"; the model says it with None.
    values["max_pixels"] = values["max_pixels"] or None
    if args.distributed is None:  # a rank that torchrun started shares the conversion
        from .convert.distributed import under_torchrun

        args.distributed = under_torchrun()
    report = convert(
        args.src,
        args.dst,
        **values,
        reader_options=reader_options(args.reader_option),
        distributed=args.distributed,
        progress=not args.quiet,
    )
    if report.rank != 0:
        return 0  # rank 0 speaks for the conversion
    m = report.manifest
    if report.kept_shards:
        print(
            f"resumed a killed convert: kept its {report.kept_shards} finished shard(s); "
            f"{report.resumed_records} records in all were kept"
        )
    elif report.resumed_records:
        print(
            f"resumed a killed convert: kept the {report.resumed_records} records of its last "
            "checkpoint"
        )
    shards = f" in {len(m.shards)} shards" if m.shards is not None else ""
    print(
        f"wrote {m.num_records} records ({m.total_bytes / 1e6:.1f} MB, {len(m.classes)} classes) "
        f"to {args.dst} as {m.format}{shards} in {report.seconds:.1f} s "
        f"({report.mb_per_s:.1f} MB/s)"
    )
    for line in report.warnings:
        print(f"warning: {line}")
    for skipped in report.skipped:
        print(f"skipped: {skipped.reason}")
    if report.skipped:
        print(f"{len(report.skipped)} file(s) skipped; they are listed in {args.dst}/seqstore.json")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .backends import open_store

    options = reader_options(args.reader_option)
    if args.labels:
        options["labels"] = args.labels
    reader = open_store(args.path, args.backend, **options)
    m = reader.manifest
    p = m.provenance
    classes = ", ".join(m.classes[:5]) + (" ..." if len(m.classes) > 5 else "")
    lines = [
        ("path", str(args.path)),
        ("format", f"{m.format} (layout version {m.format_version})"),
        ("records", f"{m.num_records}"),
        ("bytes", f"{m.total_bytes / 1e6:.1f} MB, {m.mean_record_bytes / 1e3:.1f} KB per record"),
        ("classes", f"{len(m.classes)}" + (f" ({classes})" if m.classes else "")),
        (
            ("written", f"{p.created} by seqstore {p.seqstore_version}")
            if m.store_id is not None
            else ("written", f"not by seqstore ({m.format} data, read in place)")
        ),
    ]
    if p.source:
        lines.append(("source", f"{p.source} ({p.source_format or 'unknown format'})"))
    if p.options:
        lines.append(
            ("options", ", ".join(f"{k}={v}" for k, v in p.options.items() if v is not None))
        )
    if p.skipped:
        lines.append(("skipped", f"{len(p.skipped)} source file(s), e.g. {p.skipped[0].key}"))
    if m.shards is not None:
        mean = m.total_bytes / max(len(m.shards), 1) / 1e6
        lines.append(
            (
                "shards",
                f"{len(m.shards)} {m.format} stores of {mean:.3g} MB on average, in "
                # Joined as text: the store may be a URL, which a Path would mangle.
                f"{str(args.path).rstrip('/')}/shard-NNNNN",
            )
        )
    for key, value in lines:
        print(f"{key:>9}: {value}")
    for warning in p.warnings:
        print(f"  warning: {warning}")
    from .imaging.decode import HAS_WINDOW_DECODER, NO_WINDOW_DECODER

    if not HAS_WINDOW_DECODER:
        print(f"     note: {NO_WINDOW_DECODER}")
    if args.verify:
        hashed = reader.verify_files()
        if hashed is not None:
            checked, failed = hashed
            print(f"   verify: {checked - len(failed)} of {checked} files match their stored hash")
            for name in failed[:20]:
                print(f"  corrupt: {name}")
            if failed:
                return 1
        if not reader.stores_checksums:
            if hashed is None:
                print(
                    f"   verify: nothing to check: {m.format} data stores no checksums (convert "
                    "it to lmdb or hdf5 for a store that can be verified)"
                )
            return 0
        reader.check_index()
        bad = _verify(reader)
        print(
            f"   verify: {m.num_records - len(bad)} of {m.num_records} records match their checksum"
        )
        for key in bad[:20]:
            print(f"  corrupt: {key}")
        return 1 if bad else 0
    return 0


def _verify(reader: Reader) -> list[str]:
    """Keys of the records whose checksum fails."""
    from tqdm import tqdm

    bad = []
    step = 1024
    for start in tqdm(range(0, len(reader), step), unit="block", desc="verify", leave=False):
        for record in reader.read_block(start, min(start + step, len(reader))):
            if not record.verify():
                bad.append(record.key)
    return bad


def _cmd_demo(args: argparse.Namespace) -> int:
    from .backends import open_store
    from .convert import convert
    from .pytorch import Loader
    from .testing import make_image_folder

    with tempfile.TemporaryDirectory(prefix="seqstore-demo-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        src = make_image_folder(work / "images", classes=args.classes, per_class=args.per_class)
        source = open_store(src)
        print(
            f"made {len(source)} ImageNet-like JPEG/PNG images in {len(source.classes)} classes "
            f"under {src}"
        )
        by_key = {r.key: r for r in source.read_block(0, len(source))}
        print(
            f"{'format':<8} {'records':>8} {'MB':>7} {'convert s':>10} {'read rec/s':>11} "
            f"{'train img/s':>12}  check"
        )
        for fmt in ("lmdb", "hdf5", "folder"):
            dst = work / f"store-{fmt}"
            report = convert(src, dst, format=fmt, overwrite=True, progress=False)
            reader = open_store(dst)
            t0 = time.perf_counter()
            records = reader.read_block(0, len(reader))
            rate = len(records) / max(time.perf_counter() - t0, 1e-9)
            same = all(
                r.verify() and by_key[r.key].data == r.data and by_key[r.key].label == r.label
                for r in records
            ) and len(records) == len(by_key)
            # One training epoch: RandomResizedCrop(224) + flip in 2 worker processes.
            loader = Loader(dst, batch_size=32, num_workers=2, with_indices=True)
            t0 = time.perf_counter()
            seen: list[int] = []
            for _images, labels, indices in loader:
                seen += indices.tolist()
                same = same and labels.tolist() == [records[i].label for i in indices.tolist()]
            train_rate = len(seen) / max(time.perf_counter() - t0, 1e-9)
            same = same and sorted(seen) == list(range(len(records)))
            check = "bytes, labels and epoch coverage identical" if same else "MISMATCH"
            print(
                f"{fmt:<8} {len(reader):>8} {report.manifest.total_bytes / 1e6:>7.2f} "
                f"{report.seconds:>10.2f} {rate:>11.0f} {train_rate:>12.0f}  {check}"
            )
            if not same:
                raise SeqstoreError(f"demo store '{dst}' does not read back what was written")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import format_table, run_bench

    values = model_values(args, BENCH_OPTIONS)
    # 0 is how a shell says "no re-encoded store"; the model says it with None.
    values["reencode_max_side"] = values["reencode_max_side"] or None
    result = run_bench(
        src=args.src,
        formats=[f.strip() for f in args.formats.split(",") if f.strip()],
        transform=args.transform,
        baselines=not args.no_baselines,
        **values,
    )
    print(format_table(result))
    print(
        f"\nwrote {args.out}/bench.json"
        + (f" and {args.out}/bench.png" if (Path(args.out) / "bench.png").exists() else "")
    )
    return 0


# The options made from the config models' fields (seqstore.options): their types, defaults
# and help come from the models, so the command line cannot drift from the Python API.
CONVERT_OPTIONS = (
    "format",
    "workers",
    "shuffle",
    "seed",
    "max_side",
    "quality",
    "labels",
    "classes",
    "on_error",
    "check",
    "max_pixels",
    "overwrite",
    "resume",
    "checkpoint_mb",
    "shard_mb",
    "limit",
    "source_format",
    "staging_dir",
)
BENCH_OPTIONS = (
    "workers",
    "batch_size",
    "image_size",
    "limit",
    "repeat",
    "cold",
    "min_seconds",
    "shuffle_buffer_mb",
    "block_mb",
    "out",
    "reencode_max_side",
    "reencode_quality",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``seqstore`` command."""
    from .transforms import NAMED_TRANSFORMS

    parser = argparse.ArgumentParser(
        prog="seqstore", description="Sequential, shuffled image stores for PyTorch training."
    )
    parser.add_argument("--version", action="version", version=f"seqstore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert an image folder or store into a store")
    p.add_argument("src", help="image folder, seqstore store, or tensorpack LMDB file")
    p.add_argument("dst", help="directory of the new store, or its URL (s3://bucket/x.h5 ...)")
    add_model_options(
        p,
        ConvertConfig,
        CONVERT_OPTIONS,
        help={"max_pixels": "Refuse images with more pixels than this, from their header; 0: none"},
    )
    p.add_argument(
        "--distributed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="share a sharded conversion among the ranks of a torch.distributed job "
        "(default: when started by torchrun)",
    )
    p.add_argument("--reader-option", action="append", metavar="KEY=VALUE", help=READER_OPTION_HELP)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("info", help="print what a store holds")
    p.add_argument("path")
    p.add_argument("--backend", help="read PATH with this backend")
    p.add_argument("--labels", help="label file, for a flat validation folder")
    p.add_argument("--verify", action="store_true", help="check every record's checksum")
    p.add_argument("--reader-option", action="append", metavar="KEY=VALUE", help=READER_OPTION_HELP)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("bench", help="compare backends and baselines on your own data")
    p.add_argument("src", help="image folder or store")
    p.add_argument("--formats", default="lmdb,hdf5,folder", help="comma-separated backends")
    p.add_argument("--transform", choices=tuple(NAMED_TRANSFORMS), default="imagenet_train")
    add_model_options(p, BenchConfig, BENCH_OPTIONS)
    p.add_argument("--no-baselines", action="store_true", help="skip torchvision/tensorpack")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser(
        "demo",
        help="make a small image set, convert it to every format, read it back, train one epoch",
    )
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--workdir", help="keep the demo's files here instead of a temporary folder")
    p.set_defaults(func=_cmd_demo)
    return parser


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    if issubclass(category, SeqstoreWarning):
        print(f"seqstore: note: {for_cli(str(message))}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``seqstore`` command line; returns the exit status."""
    for stream in (sys.stdout, sys.stderr):
        # A key from a file name that is not UTF-8 (or one damaged on disk) must print, not
        # end the command with a UnicodeEncodeError.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            # What seqstore did on its own (a rollback finished, say): one line, no source line.
            warnings.simplefilter("always", SeqstoreWarning)
            warnings.showwarning = _show_warning
            return int(args.func(args))
    except SeqstoreError as exc:
        print(f"seqstore: error: {for_cli(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system's word, with the path it names
        print(f"seqstore: error: {exc.strerror or exc}: '{exc.filename}'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seqstore: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
