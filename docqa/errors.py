"""The one base of the errors a user can fix: each says in one line what to do, and the CLI prints it as it is."""


class DocqaError(Exception):
    """An error the user can fix (a bad setting, a missing store, a server that refuses); str() says what to do."""
