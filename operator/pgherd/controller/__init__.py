"""The operator: keeps every PostgresCluster as its spec says.

One pass over a cluster runs in visible phases (pgherd.controller.reconciler):
- observe (observe.py, the only reader) builds an immutable Snapshot (snapshot.py) from the
  watch-fed caches (cache.py, client.py);
- plan (plan.py, with backups.py, credentials.py, references.py) is a pure function from the
  snapshot to actions (actions.py), each with its reason, at most one disruptive;
- act (act.py, the only writer) carries them out through the API and Patroni's REST API
  (patroni.py) and says what was refused;
- status (status.py, conditions.py) is computed purely and written only where it changed;
  its transitions become Events (events.py).
The work queue (queue.py) runs different clusters in parallel and one cluster at a time; the
kopf handlers (handlers.py) and the runner (runner.py) feed it.
"""
