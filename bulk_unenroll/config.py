"""The job's settings: frozen, validated eagerly, free of argv. `JobConfig.from_env` is the one
place that reads the environment and the key file, for the CLI and the library alike."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .events import ReserveLeavesNoCalls
from .limits import PLANS as PLANS  # re-exported: `bulk_unenroll.config.PLANS` was documented
from .limits import SAFETY_MARGIN, Plan, Rate
from .scrub import remember

DEFAULT_BASE_URL = "https://data.leadlex.com/functions/v1/api-gateway"
KEY_ENV = "LEADLEX_API_KEY"
BASE_URL_ENV = "LEADLEX_BASE_URL"


UNLIMITED_WORKERS = 8
"""In flight with `--rate unlimited`: on loopback httpx peaks at a handful of connections
(its pool slows as connections grow, encode/httpx#3215); --concurrency raises it for slow APIs."""

ASSUMED_LATENCY = 2.0
"""Workers = rate x this: enough for an API this slow; a faster one simply keeps most idle."""


class Secret:
    """An API key that never shows itself in output, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        remember(value)  # scrubbed from results, logs and messages from now on

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def read_api_key(
    key_file: Path | None = None, environ: Mapping[str, str] | None = None, *, needed: bool = True
) -> Secret:
    """The key from `key_file`, else from $LEADLEX_API_KEY: never from argv, where `ps` and
    shell history see it. Empty when not `needed` and not set."""
    env = os.environ if environ is None else environ
    where = f"--api-key-file {key_file}" if key_file is not None else KEY_ENV
    if key_file is not None:
        try:
            key = key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            raise InputError(f"cannot read {where}: {reason}") from None
        if not key:
            raise InputError(f"{where} is empty")
    else:
        key = env.get(KEY_ENV, "").strip()
        if not key and needed:
            raise InputError(
                f"no API key: set the {KEY_ENV} environment variable or pass --api-key-file "
                "PATH (keys are never taken on the command line, where ps and shell history "
                "see them)"
            )
    remember(key)  # before checking it: the error below must not show it either
    if key and not re.fullmatch(r"[\x21-\x7e]+", key):
        raise InputError(
            f"the API key in {where} contains a space, line break or non-ASCII character; "
            "copy it again from the LeadLex dashboard"
        )
    return Secret(key)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_429_wait: float = 900.0
    """Seconds of nothing but 429s (too many requests) after which the run stops, exit 75."""


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """How to find the two id columns in an input file."""

    campaign_column: str | None = None
    contact_column: str | None = None
    campaign: str | None = None
    """Every row belongs to this campaign (a contacts-only file)."""
    delimiter: str | None = None
    sheet: str | None = None


@dataclass(frozen=True, slots=True)
class JobConfig:
    input: Path
    out: Path
    api_key: Secret = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    rate: Rate | None = None
    """None: learn the plan from the first response's X-RateLimit-Limit."""
    plan: Plan | None = None
    concurrency: int | None = None
    """None: enough workers for rate x latency, chosen from the rate."""
    timeout: float = 30.0
    retry: RetryPolicy = RetryPolicy()
    reserve: int = 0
    wait_for_quota: bool = False
    max_removals: int | None = None
    read: ReadOptions = ReadOptions()
    ca_bundle: Path | None = None
    """PEM file of the CA certificates to trust instead of the built-in ones."""
    audit_log: Path | None = None
    """Append one JSON line per request to this file (`audit.AuditLog`)."""
    grace_period: float = 10.0
    """Seconds the requests in flight get to finish after SIGINT/SIGTERM."""
    allow_same_input: bool = False
    """Run even while another live run works on the same input (see claims.py)."""
    breaker_threshold: int = 25
    """Consecutive transient failures after which the API is taken to be down."""
    check_enrollment: bool = False
    """List campaigns' contacts first; settle the pairs not enrolled without a DELETE."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise InputError(
                f"--base-url {self.base_url!r} must start with https:// (or http:// for a sandbox)"
            )
        checks = [
            (self.timeout > 0, "--timeout must be more than 0 seconds"),
            (self.retry.max_retries >= 0, "--max-retries cannot be negative"),
            (self.retry.max_429_wait > 0, "--max-429-wait must be more than 0 seconds"),
            (self.reserve >= 0, "--reserve cannot be negative"),
            (self.concurrency is None or self.concurrency >= 1, "--concurrency must be at least 1"),
            (self.max_removals is None or self.max_removals >= 1, "--max-removals must be >= 1"),
            (self.grace_period >= 0, "--grace-period cannot be negative"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        if self.plan is not None and self.reserve >= self.plan.per_day:
            raise InputError(
                ReserveLeavesNoCalls(
                    self.reserve,
                    self.plan.per_day,
                    f"the {self.plan.name} plan allows {self.plan.per_day:,} calls a day",
                )
            )

    @classmethod
    def from_env(
        cls,
        input: Path,
        out: Path,
        *,
        api_key_file: Path | None = None,
        base_url: str | None = None,
        environ: Mapping[str, str] | None = None,
        key_needed: bool = True,
        **settings: Any,
    ) -> JobConfig:
        """The settings as the CLI reads them: the key from `api_key_file` or
        $LEADLEX_API_KEY, the gateway from `base_url`, else $LEADLEX_BASE_URL, else
        production; any other field as a keyword (`plan=PLANS["pro"]`, `reserve=100`)."""
        env = os.environ if environ is None else environ
        return cls(
            input=input,
            out=out,
            api_key=read_api_key(api_key_file, env, needed=key_needed),
            base_url=base_url or env.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL,
            **settings,
        )

    def pace(self, learnt: Plan | None = None) -> Rate | None:
        """The rate to send at: --rate, else --plan, else the learnt plan; less the margin."""
        if self.rate is not None:
            base = self.rate
        elif (plan := self.plan or learnt) is not None:
            base = plan.rate
        else:
            return None
        if base.unlimited:
            return base
        return Rate(base.calls * SAFETY_MARGIN, base.period)

    def workers(self, rate: Rate | None) -> int:
        """Most requests in flight: rate x a generous latency, so a slow API never caps the rate.

        The pacer, not this ceiling, decides how many are really in flight (rate x the actual
        latency); idle workers wait on the pacer and open no connection. None: learning the plan.
        """
        if self.concurrency is not None:
            return self.concurrency
        if rate is not None and rate.unlimited:
            return UNLIMITED_WORKERS
        # While learning, leave room for the largest plan and for a custom tier above it.
        per_second = rate.per_second if rate else 2 * PLANS["org"].rate.per_second
        return max(4, min(256, math.ceil(per_second * ASSUMED_LATENCY)))
