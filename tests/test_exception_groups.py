"""What ends a run is found inside the exception groups task groups wrap it in: the CLI's exit
code and its one-line internal error both come from the same walk."""

from __future__ import annotations

from bulk_unenroll.errors import AuthError, BulkUnenrollError, find_in_group, leaves


def test_leaves_are_found_depth_first_through_nested_groups() -> None:
    first, auth, interrupt = ValueError("first"), AuthError("401"), KeyboardInterrupt()
    group = BaseExceptionGroup("outer", [ExceptionGroup("inner", [first, auth]), interrupt])

    assert list(leaves(group)) == [first, auth, interrupt]
    assert find_in_group(group, BulkUnenrollError) is auth
    assert find_in_group(group, KeyboardInterrupt) is interrupt
    assert find_in_group(group, OSError) is None


def test_an_exception_outside_any_group_is_its_own_leaf() -> None:
    error = AuthError("403")

    assert list(leaves(error)) == [error]
    assert find_in_group(error, AuthError) is error
