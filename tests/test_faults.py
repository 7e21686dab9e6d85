"""The fault suite: kills, full disks, damage on disk and races, each done for real.

Every case of :mod:`seqstore.testing.faults` must end in one of its expected outcomes (the
store read back whole, the damage reported, or one clear error line), never a crash, a hang,
a silently wrong result, a lost store or leaked files. ``benchmarks/faults.py`` runs the same
cases many times for the README's table.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from seqstore.testing.faults import CASES, run_case

# The kill cases land at a random instant: a few tries each cover before, during and after
# the write. The others do the same thing every time.
_TRIES = {True: 3, False: 1}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault_case_ends_as_documented(case, tmp_path: Path, monkeypatch) -> None:
    # What each try saw goes to stderr, which pytest shows with a failure.
    monkeypatch.setenv("SEQSTORE_FAULTS_VERBOSE", "1")
    if case.needs_root and os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (a full disk)")
    for seed in range(_TRIES["kill" in case.name]):
        outcome = run_case(case, tmp_path / f"try{seed}", seed)
        assert outcome in case.expected, f"{case.name}, try {seed}: {outcome}"
