"""kopf handler of PostgresBackup: thin. A new backup is assigned to an instance at once.

No kopf timer: kopf puts a finalizer on every object with a timer, and a backup record must
be deletable without the operator. Level-based follow-up (a backup whose instance vanished,
one waiting for a ready instance) runs in the cluster's own resync, through
controller.reconcile_backups.
"""

from __future__ import annotations

from typing import Any

import kopf

from pgherd.api.v1alpha1 import BACKUP_PLURAL, GROUP, VERSION
from pgherd.backup import controller
from pgherd.context import kube


@kopf.on.resume(GROUP, VERSION, BACKUP_PLURAL)
@kopf.on.create(GROUP, VERSION, BACKUP_PLURAL)
def on_backup(body: kopf.Body, **_: Any) -> None:
    controller.apply_backup(kube(), dict(body))
