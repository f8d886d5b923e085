"""Servers the cluster tests start on 127.0.0.1 and stop by the process group they started:
an S3 API (moto), PostgreSQL (a throwaway cluster under a temp dir), an MLflow tracking server
on both, and a multi-node Ray cluster (tests/ray_cluster_host.py)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
#: The environment of a process that joins the tests' 127.0.0.1 Ray cluster.
LOOPBACK = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "loopback"), str(ROOT)])}
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to the process we started, which stops what it started in order; then to what
    is left of its process group, SIGKILL to what lingers. (SIGTERM to the whole group at once
    hung `ray start --block` and a Ray cluster's host until the SIGKILL, 30-60 s later.)"""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:  # the group is gone
            break
        deadline = time.time() + grace
        while time.time() < deadline and _group_alive(process.pid):
            time.sleep(0.1)
    if process.poll() is None:
        process.wait()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


def start(args: list[str], ready: Callable[[], bool], log: Path, env: dict | None = None,
          timeout: float = 120, cwd: Path | None = None) -> subprocess.Popen:
    """`args` in a session of its own, output to `log`; returns once `ready()` holds."""
    with open(log, "ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                   env={**os.environ, **(env or {})}, start_new_session=True)
    wait_until(ready, process, log, timeout)
    return process


def wait_until(ready: Callable[[], bool], process: subprocess.Popen, log: Path,
               timeout: float = 120) -> None:
    """Returns once `ready()` holds; stops `process` and raises if it ends or times out first."""
    deadline = time.time() + timeout
    while not ready():
        if process.poll() is not None or time.time() > deadline:
            stop(process)
            raise RuntimeError(f"{process.args[0]} did not come up: {log.read_text()[-3000:]}")
        time.sleep(0.5)


def answers(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status < 500
        except (urllib.error.URLError, ConnectionError, OSError):
            return False
    return check


@contextmanager
def s3_server(tmp: Path, bucket: str = "study") -> Iterator[dict]:
    """moto's S3 API; yields the environment that points boto3, pyarrow, DVC and MLflow at it."""
    import boto3

    port = free_port()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    server = start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                   answers(f"http://127.0.0.1:{port}/moto-api/"), tmp / "moto.log")
    try:
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                              aws_access_key_id="testing", aws_secret_access_key="testing",
                              region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        yield {**env, "client": client, "bucket": bucket}
    finally:
        stop(server)


def _as_postgres(args: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: as root, run them as Debian's postgres user.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1, in a temp dir of its own (readable by the
    postgres user when we are root); yields the URI of its database 'mlflow'."""
    import psycopg

    assert PG_BIN is not None, "PostgreSQL is not installed (apt-get install postgresql)"
    home = Path(tempfile.mkdtemp(prefix="pixiou-pg-"))
    data = home / "data"
    data.mkdir()
    if os.geteuid() == 0:
        for path in (home, data):
            shutil.chown(path, "postgres")
    subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "mlflow",
                                 "--auth=trust"]), check=True, capture_output=True)
    port = free_port()

    def ready() -> bool:
        try:
            psycopg.connect(host="127.0.0.1", port=port, user="mlflow",
                             dbname="postgres").close()
            return True
        except psycopg.OperationalError:
            return False

    log = Path(tempfile.mkdtemp(prefix="pixiou-pg-log-")) / "postgres.log"
    server = start(_as_postgres([str(PG_BIN / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                                 "-p", str(port), "-k", str(home)]), ready, log)
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="mlflow", dbname="postgres",
                             autocommit=True) as connection:
            connection.execute("CREATE DATABASE mlflow")
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        stop(server)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(log.parent, ignore_errors=True)


class MlflowServer:
    """`mlflow server` with its store on PostgreSQL and its artifacts on S3; can be stopped and
    started again on the same port (an outage)."""

    def __init__(self, tmp: Path, backend: str, artifacts: str, env: dict):
        self.tmp, self.backend, self.artifacts, self.env = tmp, backend, artifacts, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        # (no job runner: seven processes MLflow's GenAI jobs need and tracking does not)
        self.process = start(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", self.backend, "--artifacts-destination", self.artifacts,
             "--workers", "1"],
            answers(f"{self.url}/health"), self.tmp / "mlflow-server.log",
            env={**self.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, timeout=180)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


@contextmanager
def ray_cluster(tmp: Path, nodes: list[int], env: dict) -> Iterator[tuple[str, list[str]]]:
    """A Ray cluster of len(nodes) nodes with those CPUs, hosted by a process of its own on
    127.0.0.1; yields its address and node ids (head first)."""
    out = tmp / "ray-cluster.txt"
    host = start([sys.executable, "-m", "tests.ray_cluster_host", str(out), *map(str, nodes)],
                 out.exists, tmp / "ray-cluster.log", env={**env, **LOOPBACK}, timeout=240,
                 cwd=ROOT)
    try:
        address, *node_ids = out.read_text().split()
        yield address, node_ids
    finally:
        stop(host, timeout=60)


class FailingProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 API that, while `failing` is set, answers
    every request 503 SlowDown (what S3 says when it throttles), counting them. A thread of the
    test's own process: it stops with `close()`."""

    ERROR = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>'
             b'Please reduce your request rate.</Message></Error>')

    def __init__(self, target: str):
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        proxy, upstream = self, urlsplit(target)
        self.failing = threading.Event()
        self.refused = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self) -> None:
                body = self._body()
                if proxy.failing.is_set():
                    proxy.refused += 1
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(FailingProxy.ERROR)))
                    self.end_headers()
                    self.wfile.write(FailingProxy.ERROR)
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("transfer-encoding", "connection")}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                connection = http.client.HTTPConnection(upstream.hostname, upstream.port,
                                                        timeout=60)
                try:
                    connection.request(self.command, self.path, body=body, headers=headers)
                    answer = connection.getresponse()
                    data = answer.read()
                finally:
                    connection.close()
                self.send_response(answer.status)
                head = self.command == "HEAD"  # its Content-Length is the object's size
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection") and \
                            (head or key.lower() != "content-length"):
                        self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
