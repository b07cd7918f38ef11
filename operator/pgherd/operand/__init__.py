"""What runs in the PostgreSQL pod: the instance entrypoint that supervises Patroni and
reports the instance (instance.py, report.py), its Prometheus exporter (metrics.py; it and
the agent reach PostgreSQL as localdb.py says), Patroni's post-bootstrap hook, and the backup
side: barman-cloud behind archive_command/restore_command (wal.py), the restore bootstrap
method (restore.py), the agent that takes base backups and publishes archiving status
(agent.py), and the object store's settings from the pod's environment (store.py, bucket.py).

It shares only pgherd.contract (names), pgherd.api and pgherd.render with the operator.
"""
