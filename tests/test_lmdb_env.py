"""The LMDB environments that the readers of a path share in a process."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from seqstore.backends.lmdb import env as lmdb_env
from seqstore.convert import convert
from seqstore.testing import make_image_folder


def test_threads_acquiring_and_releasing_never_get_a_closed_environment(tmp_path: Path) -> None:
    # Readers acquire from their read-ahead threads while a dropped reader's finalizer
    # releases in another: the last release must not close an environment being handed out.
    images = make_image_folder(tmp_path / "images", classes=2, per_class=3, max_side=96)
    convert(images, tmp_path / "store", format="lmdb", progress=False)
    path = (tmp_path / "store").resolve()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            for _ in range(3000):
                env, token = lmdb_env.acquire_env(path, subdir=True)
                env.info()  # raises on a closed environment
                lmdb_env.release_env(token)
        except Exception as exc:
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        threads = [threading.Thread(target=churn) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[0]
    assert str(path) not in lmdb_env._envs  # the last release closed it
