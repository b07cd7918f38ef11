"""Whether a store's bucket exists and its keys may use it, asked before pgherd writes there.

pgherd never creates buckets. barman-cloud-check-wal-archive (which `pgherd wal-archive`
runs before a data directory's first archive) creates a missing bucket, so a typo in
spec.backup.objectStore.bucket would silently archive into a brand-new bucket; and real
credentials usually may not create buckets anyway. So the wal-archive wrapper's first-time
check and the backup agent, before each base backup, ask here first and fail with a message
a user can act on.

The question is a HEAD on the bucket (s3:ListBucket), with the endpoint, region, CA bundle
and credentials the Store carries. A HEAD response has no body, so a refused HEAD (403) is
followed by a one-key listing whose XML error names the cause (InvalidAccessKeyId,
SignatureDoesNotMatch, AccessDenied). Messages never contain the credentials.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from pgherd.operand.store import Store

CONNECT_TIMEOUT = 5
READ_TIMEOUT = 15


def bucket_of(store: Store) -> str:
    """The bucket of the store's s3://bucket/path destination."""
    return urlparse(store.destination).netloc


def _where(store: Store) -> str:
    if store.endpoint_url:
        return store.endpoint_url
    return f"AWS S3 ({store.region})" if store.region else "AWS S3"


def _client(store: Store) -> Any:
    import boto3  # type: ignore[import-untyped]  # noqa: PLC0415 - only when checking
    from botocore.config import Config  # type: ignore[import-untyped]  # noqa: PLC0415

    creds = store.credentials
    return boto3.client(
        "s3",
        endpoint_url=store.endpoint_url,
        region_name=store.region,
        aws_access_key_id=creds.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=creds.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=creds.get("AWS_SESSION_TOKEN"),
        verify=store.ca_file or None,
        config=Config(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            # A wrong endpoint must fail within seconds; PostgreSQL retries archiving itself.
            retries={"max_attempts": 2, "mode": "standard"},
        ),
    )


def _error(e: Any) -> tuple[str, str, int]:
    response = getattr(e, "response", None) or {}
    err = response.get("Error") or {}
    status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    return str(err.get("Code") or status or "error"), str(err.get("Message") or e), status


def check(store: Store) -> str | None:
    """None when the bucket exists and the store's keys may list it, else why not."""
    from botocore.exceptions import (  # type: ignore[import-untyped]  # noqa: PLC0415
        BotoCoreError,
        ClientError,
    )

    bucket, where = bucket_of(store), _where(store)
    try:
        client = _client(store)
        client.head_bucket(Bucket=bucket)
    except ClientError as e:
        code, message, status = _error(e)
        if status == 404 or code in ("404", "NoSuchBucket"):
            return (
                f'bucket "{bucket}" does not exist at {where}; pgherd does not create buckets: '
                "create it or fix spec.backup.objectStore.bucket"
            )
        if status == 403:
            code, message = _refusal(client, bucket, code, message)
            return (
                f'access to bucket "{bucket}" at {where} is refused: {code}: {message} Check '
                "the credentials Secret (spec.backup.objectStore.credentials) and that its key "
                "may list, read and write the bucket"
            )
        return (
            f'cannot use bucket "{bucket}" at {where}: {code}: {message} Check '
            "spec.backup.objectStore (endpointURL, region, bucket)"
        )
    except BotoCoreError as e:
        # EndpointConnectionError and friends: "Could not connect to the endpoint URL ...".
        return (
            f'cannot reach bucket "{bucket}" at {where}: {e}. Check '
            "spec.backup.objectStore.endpointURL (and caSecret) and that instances can reach it"
        )
    return None


def _refusal(client: Any, bucket: str, code: str, message: str) -> tuple[str, str]:
    """The cause of a refused HEAD, from a GET that carries an error document."""
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    try:
        client.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except ClientError as e:
        named, text, _ = _error(e)
        return named, text
    except BotoCoreError:
        pass
    return code, message
