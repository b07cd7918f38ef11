"""A real S3-compatible server for tests: moto's server mode (PyPI `moto[server]`) on
127.0.0.1, on a free port, as a child process stopped by pid, with authentication ON.

moto accepts any key unless its IAM authentication is enabled, which would hide a wrong
credentials Secret. INITIAL_NO_AUTH_ACTION_COUNT=N makes moto skip authentication for its
first N authenticated actions (any service) and check every later request against the IAM
users and access keys it holds. Start-up spends exactly those N actions creating an IAM user
with full S3 rights and an access key for it, then proves that a made-up key is refused.
The server's `access_key`/`secret_key` are that user's real key pair.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

REGION = "us-east-1"
USER = "pgherd-tests"
S3_FULL_ACCESS = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        # So that a test can take the key's right to write away and give it back, as an
        # administrator's IAM change would (S3Server.deny_writes).
        {
            "Effect": "Allow",
            "Action": ["iam:PutUserPolicy", "iam:DeleteUserPolicy"],
            "Resource": "*",
        },
    ],
}
DENY_WRITES = "deny-writes"
# The IAM actions start-up makes before authentication starts: create_user,
# put_user_policy, create_access_key. Each must be sent once (no retries), or the count
# would be off by the retries.
SETUP_ACTIONS = 3
_NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unused_endpoint() -> str:
    """An endpoint URL on which nothing listens (for "unreachable store" cases)."""
    return f"http://127.0.0.1:{_free_port()}"


@dataclass
class S3Server:
    """moto_server on 127.0.0.1:port, enforcing IAM authentication."""

    port: int
    proc: subprocess.Popen[bytes]
    access_key: str = ""
    secret_key: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """An S3 client with the server's key pair (or the one given)."""
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=REGION,
            config=_NO_RETRIES,
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def buckets(self) -> list[str]:
        return sorted(b["Name"] for b in self.client().list_buckets()["Buckets"])

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2")
        return [
            o["Key"]
            for p in pages.paginate(Bucket=bucket, Prefix=prefix)
            for o in p.get("Contents", [])
        ]

    def _iam(self) -> Any:
        return boto3.client(
            "iam",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=_NO_RETRIES,
        )

    def deny_writes(self) -> None:
        """From now on the key pair may read but not write (AccessDenied on PutObject): WAL
        archiving and base backups fail as with credentials whose rights were revoked."""
        deny = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Deny", "Action": "s3:PutObject", "Resource": "*"}],
        }
        self._iam().put_user_policy(
            UserName=USER, PolicyName=DENY_WRITES, PolicyDocument=json.dumps(deny)
        )

    def allow_writes(self) -> None:
        self._iam().delete_user_policy(UserName=USER, PolicyName=DENY_WRITES)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _create_user(self) -> None:
        # Any key signs the unauthenticated set-up actions; moto ignores it then.
        iam = boto3.client(
            "iam",
            endpoint_url=self.url,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
            region_name=REGION,
            config=_NO_RETRIES,
        )
        iam.create_user(UserName=USER)
        iam.put_user_policy(
            UserName=USER, PolicyName="s3-full-access", PolicyDocument=json.dumps(S3_FULL_ACCESS)
        )
        key = iam.create_access_key(UserName=USER)["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]

    def _prove_authentication(self) -> None:
        try:
            self.client("AKIAMADEUPKEY0000000", "made-up").list_buckets()
        except ClientError as e:
            if e.response["Error"]["Code"] == "InvalidAccessKeyId":
                return
            raise
        raise RuntimeError("moto_server accepted a made-up access key: authentication is off")


def start(log: Path) -> S3Server:
    port = _free_port()
    moto = Path(sys.executable).parent / "moto_server"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_ACTIONS)}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    server = S3Server(port, proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            # moto's own API (/moto-api/) is not an AWS action: it does not use up the count.
            urllib.request.urlopen(server.url + "/moto-api/", timeout=1).read()  # noqa: S310
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited; see {log}") from None
            time.sleep(0.2)
    else:
        server.stop()
        raise RuntimeError(f"moto_server did not answer on {server.url}; see {log}")
    try:
        server._create_user()
        server._prove_authentication()
    except Exception:
        server.stop()
        raise
    return server


@contextmanager
def running(log: Path, bucket: str | None = None) -> Iterator[S3Server]:
    """A store for a test module's fixture: started (with ``bucket`` made), stopped after."""
    server = start(log)
    try:
        if bucket is not None:
            server.create_bucket(bucket)
        yield server
    finally:
        server.stop()
