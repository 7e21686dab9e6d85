"""Every built-in writable backend against the shared conformance suite."""

from __future__ import annotations

from seqstore.testing.backend import BackendSuite


class TestLMDB(BackendSuite):
    backend_name = "lmdb"


class TestHDF5(BackendSuite):
    backend_name = "hdf5"


class TestFolder(BackendSuite):
    backend_name = "folder"
