"""The one error type the developer tooling raises for problems a user can fix.

Its message says what is wrong and what to do; the CLI prints it without a traceback.
"""


class DevError(Exception):
    """A problem with the local environment that the user can act on."""
