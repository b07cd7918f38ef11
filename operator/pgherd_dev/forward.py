"""A TEST-ONLY stand-in for kube-proxy inside the test kubelet: a pod's local forward to a
Service it names (pgherd_dev.kubelet gives one to a pooler pod for its target Service, and
to a pod whose libpq PGHOST names a Service)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable

log = logging.getLogger("pgherd-dev.forward")


class Forward:
    """A TEST-ONLY local forward for one pod, in threads: each connection to 127.0.0.1:port
    goes to the local port `resolve()` names at that moment (a ready pod behind a Service),
    as kube-proxy would route the Service's address; resolving per connection follows a
    failover the same way."""

    def __init__(self, resolve: Callable[[], int | None], name: str) -> None:
        self.resolve = resolve
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port: int = self.sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, name=f"forward-{name}", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            port = self.resolve()
        except Exception:  # the API being unreachable is a refused connection, as no endpoint
            log.exception("%s: resolving the Service failed", self.name)
            port = None
        if port is None:
            log.warning("%s: no ready pod behind the Service", self.name)
            client.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError as e:
            log.warning("%s: cannot reach %s: %s", self.name, port, e)
            client.close()
            return
        upstream.settimeout(None)
        threading.Thread(target=_copy, args=(upstream, client), daemon=True).start()
        _copy(client, upstream)


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        # One side ended: end both, as a dead pod's connections end.
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
