"""Backups (pgherd.backup): continuous WAL archiving, base backups, retention and restore.

Everything runs barman-cloud (PyPI `barman[cloud]`) in the operand, never in the operator:
barman-cloud-backup must read the data directory, so it runs inside the instance pod.

- `store`: the object store as environment variables, shared by both sides;
- `render`: what a cluster's children gain (pod env, Patroni parameters, restore bootstrap);
- `wal`: `pgherd wal-archive` / `pgherd wal-restore`, Patroni's archive and restore commands;
- `restore`: `pgherd restore-bootstrap`, Patroni's custom bootstrap method for a restore;
- `agent`: a small loop beside Patroni in each instance: publishes pg_stat_archiver and the
  store's backup list on its pod, and takes the base backups assigned to its pod;
- `controller`: the operator's side: assigns PostgresBackups to an instance, runs the
  schedule, computes the cluster's backup status and refuses unsafe restores;
- `handlers`: kopf handlers for PostgresBackup.
"""
