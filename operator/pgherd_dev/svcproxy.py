"""A TEST-ONLY stand-in for kube-proxy plus `kubectl port-forward svc/...`: a local TCP
port that forwards each new connection to a ready pod selected by a Service.

Pods run by the test kubelet listen on unique loopback ports (published in the
`kubelet.pgherd.dev/ports` annotation), so a Service's cluster IP leads nowhere here. This
proxy resolves the Service's selector at every connection, so a client of `<cluster>-rw`
follows a failover exactly as it would in a cluster.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pgherd.controller.client import Client as Kube
from pgherd_dev.kubelet import published_port, serves

log = logging.getLogger(__name__)


def backend(kube: Kube, namespace: str, service: str, port_name: str) -> int | None:
    """Local port of a ready pod behind the Service, or None (as the test kubelet's own
    forwards choose one: kubelet.serves, kubelet.published_port)."""
    svc = kube.get("Service", namespace, service)
    if svc is None:
        return None
    selector = ",".join(f"{k}={v}" for k, v in svc["spec"].get("selector", {}).items())
    for pod in kube.list("Pod", namespace, selector):
        if serves(pod, svc) and (port := published_port(pod, port_name)):
            return port
    return None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(
    kube: Kube, namespace: str, service: str, port_name: str, listen_port: int
) -> asyncio.Server:
    loop = asyncio.get_running_loop()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        port = await loop.run_in_executor(None, backend, kube, namespace, service, port_name)
        if port is None:
            log.warning("no ready pod behind %s/%s", namespace, service)
            client_w.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", port)
        except OSError as e:
            log.warning("cannot reach %s/%s at %s: %s", namespace, service, port, e)
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))

    server: Any = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    return server  # type: ignore[no-any-return]
