"""Calls to Patroni's REST API on an instance: its state, switchover, dynamic configuration,
restart.

The address comes from the member's own record in the DCS (api_url), so the operator
reaches the instance the way Patroni itself advertises it. Requests carry the cluster's
`<cluster>-restapi` credentials; they are never logged. The REST API speaks TLS: its
certificate is verified against the cluster's CA bundle (ca.crt of `<cluster>-tls`), without
a host name check, because api_url holds the pod's IP, which no cluster-wide certificate
names; only this cluster's CA signs it (pgherd.controller.certificates). No request goes out
unverified: without a CA bundle an https call fails.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

# Told of every call: (operation, outcome, seconds); the operator's metrics take it.
Record = Callable[[str, str, float], None]
# The operations by method and path, as the metrics name them.
OPERATIONS = {
    ("GET", "/patroni"): "state",
    ("POST", "/switchover"): "switchover",
    ("PATCH", "/config"): "patch_config",
    ("POST", "/restart"): "restart",
}


def _ignore(operation: str, outcome: str, seconds: float) -> None:
    pass


class PatroniError(Exception):
    """Patroni refused or could not be reached; the message carries its answer, outcome
    the kind of failure (http_error, unreachable, ca_error)."""

    def __init__(self, message: str, outcome: str = "unreachable") -> None:
        super().__init__(message)
        self.outcome = outcome


def _base(api_url: str) -> str:
    parts = urlsplit(api_url)
    return f"{parts.scheme}://{parts.netloc}"


@functools.lru_cache(maxsize=256)
def _context(cadata: str) -> ssl.SSLContext:
    # One context per CA bundle: building one parses the bundle, and every pass calls.
    context = ssl.create_default_context(cadata=cadata)
    context.check_hostname = False  # verify-ca: see the module docstring
    return context


def _verifying(api_url: str, cadata: str | None, what: str) -> ssl.SSLContext | None:
    """The TLS context an https call verifies the instance with (None for http)."""
    if urlsplit(api_url).scheme != "https":
        return None
    if not cadata:
        raise PatroniError(f"{what}: no CA bundle to verify the instance with", "ca_error")
    try:
        return _context(cadata)
    except (ssl.SSLError, ValueError) as e:
        raise PatroniError(f"{what}: the CA bundle does not load: {e}", "ca_error") from None


def _send(
    api_url: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    *,
    timeout: float,
    cadata: str | None,
    authorization: str | None = None,
    record: Record = _ignore,
) -> str:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    req = urllib.request.Request(  # noqa: S310 - the URL is Patroni's own http(s) api_url
        _base(api_url) + path, data=data, method=method, headers=headers
    )
    started, outcome = time.monotonic(), "success"
    try:
        context = _verifying(api_url, cadata, f"{method} {path}")
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:  # noqa: S310
            return str(resp.read().decode(errors="replace"))
    except PatroniError as e:
        outcome = e.outcome
        raise
    except urllib.error.HTTPError as e:
        outcome = "http_error"
        raise PatroniError(
            f"{method} {path}: HTTP {e.code}: {e.read().decode(errors='replace')[:300]}", outcome
        ) from None
    except (OSError, urllib.error.URLError) as e:
        outcome = "unreachable"
        raise PatroniError(f"{method} {path}: {e}", outcome) from None
    finally:
        record(OPERATIONS.get((method, path), "other"), outcome, time.monotonic() - started)


class Client:
    """Patroni's REST API with the cluster's credentials (its unsafe endpoints require them)."""

    def __init__(
        self,
        username: str,
        password: str,
        *,
        timeout: float,
        cadata: str | None,
        record: Record = _ignore,
    ) -> None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._authorization = f"Basic {token}"
        self._timeout = timeout
        self._cadata = cadata
        self._record = record

    def __repr__(self) -> str:
        return "patroni.Client(<credentials>)"

    def _request(self, api_url: str, method: str, path: str, body: dict[str, Any] | None) -> str:
        return _send(api_url, method, path, body, timeout=self._timeout, cadata=self._cadata,
                     authorization=self._authorization, record=self._record)  # fmt: skip

    def switchover(self, api_url: str, leader: str, candidate: str) -> str:
        return self._request(
            api_url, "POST", "/switchover", {"leader": leader, "candidate": candidate}
        )

    def patch_config(self, api_url: str, patch: dict[str, Any]) -> str:
        return self._request(api_url, "PATCH", "/config", patch)

    def restart(self, api_url: str) -> str:
        return self._request(api_url, "POST", "/restart", {})


def member_state(
    api_url: str, *, timeout: float, cadata: str | None, record: Record = _ignore
) -> str | None:
    """The state Patroni reports for itself now (GET /patroni, which needs no credentials),
    or None when it does not answer in time."""
    try:
        answer = _send(
            api_url, "GET", "/patroni", None, timeout=timeout, cadata=cadata, record=record
        )
        state = json.loads(answer).get("state")
    except (PatroniError, ValueError, AttributeError) as e:
        log.debug("GET /patroni at %s: %s", _base(api_url), e)
        return None
    return state if isinstance(state, str) else None
