"""Posts Kubernetes Events about a PostgresCluster (core v1, as kubectl describe shows them).

Only real transitions are posted (the reconcile decides which); a failure to post is
logged and never fails a reconcile.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime

from kubernetes.client.exceptions import ApiException

from pgherd.api.v1alpha1 import API_VERSION, KIND, ObjectMeta
from pgherd.kube import Kube

log = logging.getLogger(__name__)
COMPONENT = "pgherd-operator"


def post(kube: Kube, meta: ObjectMeta, type_: str, reason: str, message: str) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            # Unique like kubectl's own event names: <object>.<random hex>.
            "name": f"{meta.name}.{secrets.token_hex(8)}",
            "namespace": meta.namespace,
        },
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": meta.name,
            "namespace": meta.namespace,
            "uid": meta.uid,
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        kube.create(body)
    except ApiException as e:
        log.warning(
            "could not post event %s on %s/%s: %s", reason, meta.namespace, meta.name, e.reason
        )
