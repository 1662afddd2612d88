"""One root exception: whatever ends the whole run. Row outcomes are data, never exceptions."""

from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound=BaseException)


def find_in_group(exc: BaseException, kind: type[E]) -> E | None:
    """The first `kind` exception in `exc` or, depth first, in the task-group exception
    groups around it."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_in_group(inner, kind)
            if found is not None:
                return found
    return None


class BulkUnenrollError(Exception):
    """A problem that stops the run; the message says what is wrong and how to fix it."""

    exit_code = 2


class InputError(BulkUnenrollError):
    """The input file or the options cannot be used; nothing was sent."""

    exit_code = 2


class ResultsFileError(BulkUnenrollError):
    """The results file cannot be read, locked or written; finished rows stay intact."""

    exit_code = 74


class AuthError(BulkUnenrollError):
    """The API refused the key (401) or its permissions (403); sending stopped at once."""

    exit_code = 3


class SetupError(BulkUnenrollError):
    """The API cannot be reached as configured: a wrong --base-url (a redirect, 404s from no
    such route), or, before anything answered, a connection that failed for a reason a retry
    will not cure (TLS trust, host name, port, proxy); every row is left to do."""

    exit_code = 3


class UnsupportedPlatform(BulkUnenrollError):
    """The system lacks what the ledger's guarantees rest on (Windows: no `flock`); nothing
    was read, locked or sent."""

    exit_code = 2
