"""A real S3-compatible server for tests: moto's server mode (PyPI `moto[server]`) on
127.0.0.1, on a free port, as a child process stopped by pid."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3

ACCESS_KEY = "pgherd-test-key"
SECRET_KEY = "pgherd-test-secret"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    """moto_server on 127.0.0.1:port."""

    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> object:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2")  # type: ignore[attr-defined]
        return [
            o["Key"]
            for p in pages.paginate(Bucket=bucket, Prefix=prefix)
            for o in p.get("Contents", [])
        ]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start(log: Path) -> S3Server:
    port = _free_port()
    moto = Path(sys.executable).parent / "moto_server"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = S3Server(port, proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(server.url + "/moto-api/", timeout=1).read()  # noqa: S310
            return server
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited; see {log}") from None
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"moto_server did not answer on {server.url}; see {log}")
