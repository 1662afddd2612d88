"""The audit log (`--audit-log FILE.jsonl`): one JSON line per request sent, for teams that
must show what was sent, when, and what the API answered.

Append-only: a rerun adds to the same file, nothing is ever rewritten. Each line is flushed
to the operating system as it is written (a killed run keeps every line it wrote; a crash of
the machine may lose the last second, like the results file), and fsynced at close. Only ids,
statuses and what the server said go in; the key never does (server text is scrubbed of it
before it reaches here, in `client._parse`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ..errors import ResultsFileError
from ..events import Said, Setting
from .pacing import Waits

WAITS = ("pace", "rate_limit_pause", "retry_backoff", "quota", "other")
"""Why a request waited before it left, as the `waited` object's keys (seconds each)."""


class AuditLog:
    """An open audit log; `request` writes one line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file: IO[str] | None = path.open("a", encoding="utf-8")
        except OSError as exc:
            raise self._fail("open", exc) from None

    def _fail(self, action: str, exc: OSError) -> ResultsFileError:
        return ResultsFileError(
            Said(
                (
                    f"cannot {action} ",
                    Setting.AUDIT_LOG,
                    f" {self.path}: {exc.strerror or exc}; the results file is intact",
                )
            )
        )

    def request(
        self,
        about: Mapping[str, object],
        *,
        sent_at: datetime,
        attempt: int,
        seconds: float,
        waited: Waits,
        http_status: int | None,
        error_code: str,
        request_id: str,
        result: str,
        error: str = "",
    ) -> None:
        """One request and its answer (or why there was none); `about` names what it was
        about (a pair's row, campaign and contact; a batch's campaign and contact ids)."""
        waits = {name: round(waited.get(name, 0.0), 3) for name in WAITS}
        longest = max(WAITS, key=lambda name: waits[name])
        record: dict[str, Any] = {
            "time": sent_at.astimezone(UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            **about,
            "attempt": attempt,
            "http_status": http_status,
            "error_code": error_code or None,
            "request_id": request_id or None,
            "error": error or None,
            "result": result,
            "duration_ms": round(seconds * 1000, 1),
            "waited": waits,
            "waited_for": longest if waits[longest] >= 0.001 else None,
        }
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()
        except OSError as exc:
            raise self._fail("write to", exc) from None

    def close(self) -> None:
        if self._file is None:
            return
        file, self._file = self._file, None
        try:
            file.flush()
            os.fsync(file.fileno())
        except OSError:
            pass  # every line was flushed as written; only the last fsync is lost
        finally:
            file.close()
