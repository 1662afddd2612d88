"""One root exception: whatever ends the whole run. Row outcomes are data, never exceptions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # events imports limits, which raises these errors
    from .events import Event, Naming

E = TypeVar("E", bound=BaseException)


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The real exceptions in `exc`, depth first through the (nested) exception groups that
    task groups wrap them in; `exc` itself when it is no group."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def find_in_group(exc: BaseException, kind: type[E]) -> E | None:
    """The first `kind` exception among the leaves of `exc`."""
    return next((leaf for leaf in leaves(exc) if isinstance(leaf, kind)), None)


class BulkUnenrollError(Exception):
    """A problem that stops the run; the message says what is wrong and how to fix it. Given
    an `Event`, it keeps it, so the CLI can word the settings it names as flags."""

    exit_code = 2

    def __init__(self, message: str | Event) -> None:
        self.event = None if isinstance(message, str) else message
        super().__init__(str(message))

    def describe(self, name: Naming | None = None) -> str:
        """The message, naming settings with `name` when it came from an event."""
        if self.event is None or name is None:
            return str(self)
        return self.event.describe(name)


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
