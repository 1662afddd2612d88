"""What a run tells as it goes, as data: the library says what happened and which setting it
concerns; whoever shows it words the setting (a library user reads `JobConfig`'s field name,
the CLI its flag), so no layer below the CLI spells a command-line flag."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from .limits import Rate
from .text import describe_reset, duration, pace_text


class Setting(StrEnum):
    """A setting an event advises about; the value is its field in `JobConfig` (or in its
    `RetryPolicy`)."""

    ALLOW_SAME_INPUT = "allow_same_input"
    AUDIT_LOG = "audit_log"
    BASE_URL = "base_url"
    CA_BUNDLE = "ca_bundle"
    CHECK_ENROLLMENT = "check_enrollment"
    MAX_429_WAIT = "max_429_wait"
    MAX_REMOVALS = "max_removals"
    OUT = "out"
    PLAN = "plan"
    RATE = "rate"
    RESERVE = "reserve"
    WAIT_FOR_QUOTA = "wait_for_quota"


Naming = Callable[[Setting], str]
"""How the reader names a setting."""


def field_name(setting: Setting) -> str:
    """The library's name for a setting: its `JobConfig` field."""
    return setting.value


class Event:
    """Something a run tells: `describe` words it, naming settings with `name`."""

    def describe(self, name: Naming = field_name) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class Note(Event):
    """Words that name no setting (a signal, a results file mended, a sheet chosen)."""

    text: str

    def describe(self, name: Naming = field_name) -> str:
        return self.text


@dataclass(frozen=True)
class Said(Event):
    """Words with settings among them (what to check when the API cannot be reached): each
    `Setting` in `parts` is named as the reader names it."""

    parts: tuple[str | Setting, ...]

    def describe(self, name: Naming = field_name) -> str:
        return "".join(name(p) if isinstance(p, Setting) else p for p in self.parts)


@dataclass(frozen=True)
class ReserveLeavesNoCalls(Event):
    """A reserve of the whole daily quota: every run would stop (exit 75) after at most one
    call, night after night. `source` says where `per_day` comes from."""

    reserve: int
    per_day: int
    source: str

    def describe(self, name: Naming = field_name) -> str:
        reserve = name(Setting.RESERVE)
        return (
            f"{reserve} {self.reserve:,} leaves no calls: {self.source}; keep fewer than "
            f"{self.per_day:,} in reserve (for example {reserve} {self.per_day // 10:,})"
        )


@dataclass(frozen=True)
class SameInputShared(Event):
    """Another live run uses the input, and the settings allow it."""

    input: Path
    others: str

    def describe(self, name: Naming = field_name) -> str:
        return (
            f"warning: another run is using {self.input} ({self.others}); going on as "
            f"{name(Setting.ALLOW_SAME_INPUT)} asks: pairs both runs send go out twice"
        )


@dataclass(frozen=True)
class MaxRemovalsReached(Event):
    """The run stopped at its cap of removals."""

    cap: int

    def describe(self, name: Naming = field_name) -> str:
        return f"stopped after {name(Setting.MAX_REMOVALS)} {self.cap}"


@dataclass(frozen=True)
class QuotaSpent(Event):
    """The daily quota (less the reserve) is spent: the run stops, or with `waiting_until`
    pauses until the reset. `at` is when it was said (the reset is told as a countdown)."""

    reserve: int
    reset_at: datetime | None
    at: datetime
    waiting_until: datetime | None = None

    def describe(self, name: Naming = field_name) -> str:
        keeping = f" (keeping {name(Setting.RESERVE)} {self.reserve})" if self.reserve else ""
        spent = f"daily quota spent{keeping}"
        if self.waiting_until is not None:
            return (
                f"{spent}: waiting until the reset at "
                f"{describe_reset(self.waiting_until, self.at)}, then carrying on "
                f"({name(Setting.WAIT_FOR_QUOTA)})"
            )
        if self.reset_at is None:
            return spent
        return f"{spent}; it resets {describe_reset(self.reset_at, self.at)}"


@dataclass(frozen=True)
class RouteUnknown(Event):
    """Unclear 404s came from campaigns before any answer showed the base URL serves the
    DELETE route: most likely a wrong base URL."""

    said: str
    campaigns: tuple[str, ...]

    def describe(self, name: Naming = field_name) -> str:
        base_url = name(Setting.BASE_URL)
        plural = "s" if len(self.campaigns) > 1 else ""
        return (
            f"the API answered {self.said} for campaign{plural} {', '.join(self.campaigns)}, "
            f"and no answer has shown that {base_url} serves the API's routes: check "
            f"{base_url} (it should end in /api-gateway). Nothing was recorded for these "
            "rows. If the URL is right, these campaigns do not exist: take their rows out."
        )


@dataclass(frozen=True)
class RateLimitedTooLong(Event):
    """Nothing but 429s for longer than the longest wait allowed: the run stops."""

    seconds: float
    next_pause: float
    longest: float

    def describe(self, name: Naming = field_name) -> str:
        past = f"past {name(Setting.MAX_429_WAIT)} {self.longest:g}s"
        pause = duration(self.next_pause, up=True)
        return (
            "the API answered nothing but 429 (too many requests) for "
            + duration(self.seconds, up=True)
            + (
                f", and the next pause ({pause}) would go {past}"
                if self.next_pause
                else f", {past}"
            )
            + ": stopped sending, rerun later"
        )


@dataclass(frozen=True)
class LimitFound(Event):
    """Probing found an unknown per-minute limit; `learnt` skips the probe next time."""

    learnt: Rate
    per_second: float | None

    def describe(self, name: Naming = field_name) -> str:
        learnt = self.learnt
        return (
            f"found the limit: the API accepted {learnt.calls:g} calls in "
            f"{duration(learnt.period, up=True)} before its first 429; pacing at "
            f"{pace_text(self.per_second)} from now on "
            f"(next time pass {name(Setting.RATE)} {learnt})"
        )


@dataclass(frozen=True)
class PaceChosen(Event):
    """The first answer told the daily limit (or did not): the pace the run starts at.
    `climbing` when it is no published plan's and the pace doubles until a 429."""

    limit: int | None
    plan: str
    pace: str
    climbing: bool

    def describe(self, name: Naming = field_name) -> str:
        climb = (
            "and doubling it every 8 s until a 429 shows the limit "
            f"({name(Setting.PLAN)} or {name(Setting.RATE)} sets it)"
        )
        if self.limit is None:
            return (
                f"the API did not report its daily limit: starting at {self.plan}'s "
                f"{self.pace} {climb}"
            )
        if not self.climbing:
            return f"daily limit {self.limit:,}: {self.plan} plan, pacing at {self.pace}"
        return (
            f"daily limit {self.limit:,} is no published plan: starting at {self.plan}'s "
            f"{self.pace} {climb}"
        )
