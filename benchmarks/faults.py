"""The fault table: every case of seqstore.testing.faults, tried many times, outcomes counted.

    python benchmarks/faults.py [--tries 10] [--only SUBSTRING] [--workdir DIR]

Each try builds its own small image folder and store, does the damage for real (kill -9 at
a random instant of the write, a small tmpfs, bytes changed on disk, two writers at once)
and records what a user got. The target is 0 in every column from "crash" on, and each case
in its expected columns. Cases that mount a tmpfs need root and are reported as skipped
otherwise. The exit status is 1 if any try ended outside its case's expected outcomes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from seqstore.testing.faults import CASES, OUTCOMES, run_case


def main() -> int:
    """Run the cases and print the table; 1 if any outcome was unexpected."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--tries", type=int, default=10, help="tries per case")
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--workdir", help="where the tries build their files")
    args = parser.parse_args()
    cases = [c for c in CASES if args.only in c.name]
    width = max(len(c.name) for c in cases)
    print(f"| {'case':<{width}} | tries | " + " | ".join(OUTCOMES) + " |")
    print(
        f"|{'-' * (width + 2)}|------:|"
        + "|".join("-" * (len(o) + 1) + ":" for o in OUTCOMES)
        + "|"
    )
    unexpected = 0
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="seqstore-faults-") as tmp:
        for i, case in enumerate(cases):
            counts = dict.fromkeys(OUTCOMES, 0)
            try:
                for t in range(args.tries):
                    counts[run_case(case, Path(tmp) / f"{i}-{t}", seed=1000 * i + t)] += 1
            except PermissionError as exc:
                print(f"| {case.name:<{width}} | skipped: {exc} |")
                continue
            unexpected += sum(n for o, n in counts.items() if o not in case.expected)
            cells = " | ".join(f"{counts[o]:>{len(o)}}" for o in OUTCOMES)
            print(f"| {case.name:<{width}} | {args.tries:>5} | {cells} |", flush=True)
    if unexpected:
        print(f"{unexpected} tries ended outside their case's expected outcomes", file=sys.stderr)
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
