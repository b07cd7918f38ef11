"""Pure renderers of the Kubernetes objects a PostgresCluster owns.

Every function here maps a PostgresCluster (and, for Secrets, passwords passed in) to plain
dicts ready for server-side apply: no API calls, no I/O, no randomness, no clock. The same
input always gives the same output, which the golden-file tests pin down.
"""

from pgherd.render.children import desired_children

__all__ = ["desired_children"]
