"""One scrubber for any text that could hold the API key: server answers, errors, summaries.

Servers echo what they were sent, and cut it where they like ("Bearer wbk_live_SECR"), so
the whole key is not enough to look for. Any run of `FRAGMENT` or more characters that also
appears in a known key is replaced with `***`, and so is whatever follows `Bearer `. Eight
characters is the shortest piece scrubbed: shorter pieces leave too little of a key to matter,
and would start matching ordinary words. Only ever scrub text, never the ids of a pair: they
are the ledger's keys.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import polars as pl

FRAGMENT = 8
MASK = "***"
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")
_ANY_KEY = re.compile(r"wbk_[A-Za-z0-9_\-]+")
_known: frozenset[str] = frozenset()
"""Every key this process has been given: scrubbed wherever it shows up."""


def remember(key: str) -> None:
    """Scrub this key (and its fragments) from everything the process writes from now on."""
    global _known
    if key:
        _known |= {key}


@functools.lru_cache(maxsize=8)
def _fragments(keys: frozenset[str]) -> re.Pattern[str] | None:
    """Every FRAGMENT-long piece of the keys, found at each position (overlaps included)."""
    pieces = {k[i : i + FRAGMENT] for k in keys for i in range(len(k) - FRAGMENT + 1)}
    if not pieces:
        return None
    alternatives = "|".join(map(re.escape, sorted(pieces, key=len, reverse=True)))
    return re.compile(f"(?=({alternatives}))")


def _mask_fragments(text: str, keys: frozenset[str]) -> str:
    pattern = _fragments(keys)
    if pattern is None:
        return text
    spans: list[list[int]] = []
    for match in pattern.finditer(text):
        start, end = match.start(), match.start() + FRAGMENT
        if spans and start <= spans[-1][1]:
            spans[-1][1] = end  # overlapping pieces are one longer fragment
        else:
            spans.append([start, end])
    if not spans:
        return text
    parts, at = [], 0
    for start, end in spans:
        parts += [text[at:start], MASK]
        at = end
    parts.append(text[at:])
    return "".join(parts)


def redact(text: str, *keys: str) -> str:
    """`text` without any known key, any FRAGMENT-long piece of one, or a bearer token."""
    if not text:
        return text
    every = _known.union(k for k in keys if k) if keys else _known
    return _redact(text, every)


@functools.lru_cache(maxsize=4096)
def _redact(text: str, every: frozenset[str]) -> str:
    """Cached: answers repeat the same codes and messages row after row, and each row's text
    is scrubbed twice (as parsed, as recorded); scanning for fragments costs a few us each."""
    for key in every:
        if len(key) < FRAGMENT:  # longer keys are made of fragments
            text = text.replace(key, MASK)
    while True:  # a mask next to what is left could in theory spell a new piece
        scrubbed = _mask_fragments(text, every)
        if scrubbed == text:
            break
        text = scrubbed
    return _BEARER.sub(r"\1" + MASK, text)


def redact_column(values: pl.Series) -> pl.Series:
    """`redact` every value of a String column, at polars' speed: only the values that could
    hold a key (a piece of a known key, a bearer token) go through `redact` one by one, so
    millions of rows of request ids are scrubbed in a moment."""
    risky = values.str.contains(r"(?i)bearer\s")
    pieces = {k[i : i + FRAGMENT] for k in _known for i in range(len(k) - FRAGMENT + 1)}
    pieces |= {k for k in _known if len(k) < FRAGMENT}
    if pieces:
        risky = risky | values.str.contains_any(sorted(pieces))
    where = risky.fill_null(False).arg_true()
    if where.is_empty():
        return values
    scrubbed = [redact(text) for text in values.gather(where)]
    return values.clone().scatter(where, scrubbed)


def redact_message(text: str) -> str:
    """`redact`, and any `wbk_` token too: for error messages and tracebacks, where a key
    nobody told us about may show up. Not for summaries: a file may be named wbk_export.csv."""
    return _ANY_KEY.sub("wbk_" + MASK, redact(text))


def redact_data(value: Any) -> Any:
    """`redact` every string inside JSON-like data (before it is serialised, so escaping
    and quoting stay intact)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_data(k): redact_data(v) for k, v in value.items()}  # keys: error codes
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value
