"""The exit code describes the whole job as the results file stands."""

from __future__ import annotations

import pytest

from bulk_unenroll.models import Outcome, StopReason, Summary


def summary(total: int, reason: StopReason = StopReason.COMPLETE, **counts: int) -> Summary:
    s = Summary(total_rows=total, stop_reason=reason)
    for name, n in counts.items():
        s.outcomes[Outcome(name)] = n
    return s


@pytest.mark.parametrize(
    ("s", "code"),
    [
        (summary(3, removed=1, not_enrolled=1, duplicate=1), 0),
        (summary(3, removed=2, rejected=1), 1),
        (summary(3, removed=2, invalid=1), 1),
        (summary(3, removed=2, failed=1), 1),
        (summary(3, StopReason.QUOTA, removed=2), 75),
        (summary(3, StopReason.QUOTA, removed=2, failed=1), 75),
        (summary(3, StopReason.API_DOWN, removed=1), 75),
        (summary(3, StopReason.MAX_REMOVALS, removed=1), 75),
        (summary(3, StopReason.SIGINT, removed=1), 130),
        (summary(3, StopReason.SIGTERM, removed=1), 143),
        (summary(2, StopReason.SIGTERM, removed=2), 0),
    ],
)
def test_exit_code(s: Summary, code: int) -> None:
    assert s.exit_code == code


def test_remaining_counts_failed_and_unfinished_rows() -> None:
    s = summary(10, StopReason.QUOTA, removed=5, failed=2)
    assert s.unfinished == 3
    assert s.remaining == 5
