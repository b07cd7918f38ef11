"""`kubectl pgherd`: the kubectl plugin for pgherd's PostgresClusters (the `kubectl-pgherd`
console script). It reads what the operator and the instances publish and writes only the
requests the API defines (spec.switchover, a PostgresBackup, the restart annotation); it never
imports the operator (kopf) nor the developer tooling.

Modules: cli (arguments), session (the API connection), summary, choose and redact (pure),
connect (psql), bundle (the support report), commands (each subcommand, wiring them).
"""
