"""pgherd: a Kubernetes operator for highly available PostgreSQL run by Patroni."""
