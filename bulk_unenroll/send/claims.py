"""A run's claim on its input: two live runs on one input, each with its own --out, would
send every pair twice (each results file only knows its own run).

A claim is an exclusive `flock` on a small file in a private per-user folder, named after the
input: once after its resolved path (the same file, however it is spelt or linked) and once
after its content (a copy elsewhere), each together with the options that pick its pairs
(`--campaign`, columns, sheet), so one contacts file run for two campaigns is two inputs. The
kernel drops the lock when the process dies, so a killed run never leaves a stale claim.
Runs of other users, on other machines, or reading a pipe are not seen.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import tempfile
from pathlib import Path

from ..config import ReadOptions
from ..errors import ResultsFileError
from ..events import Said, Setting
from ..platforms import try_lock
from ..results.journal import holder_in_words
from ..results.records import stamp

DIR_ENV = "BULK_UNENROLL_RUNTIME_DIR"
SAMPLE = 1 << 20
"""Bytes hashed from each end of the input: the content's identity without reading it all."""


def claims_dir() -> Path | None:
    """$BULK_UNENROLL_RUNTIME_DIR, $XDG_RUNTIME_DIR/bulk-unenroll or <tmp>/bulk-unenroll-<uid>;
    None when it is not a folder only this user can write (another user could fake claims)."""
    if os.environ.get(DIR_ENV):
        folder = Path(os.environ[DIR_ENV])
    elif os.environ.get("XDG_RUNTIME_DIR"):
        folder = Path(os.environ["XDG_RUNTIME_DIR"]) / "bulk-unenroll"
    else:
        folder = Path(tempfile.gettempdir()) / f"bulk-unenroll-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
    except OSError:
        return None
    private = info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    return folder if stat.S_ISDIR(info.st_mode) and private else None


def _names(input_path: Path, read: ReadOptions) -> list[str]:
    """Lock file names for the input's resolved path and for its content."""
    options = repr(read).encode()
    path = hashlib.sha256(b"path\0" + os.fsencode(input_path.resolve()) + b"\0" + options)
    content = hashlib.sha256(b"content\0" + options)
    with input_path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        content.update(str(size).encode() + b"\0")
        f.seek(0)
        content.update(f.read(SAMPLE))
        if size > SAMPLE:
            f.seek(max(SAMPLE, size - SAMPLE))
            content.update(f.read(SAMPLE))
    return [f"input-{h.hexdigest()[:32]}.lock" for h in (path, content)]


def _take(path: Path) -> int | str:
    """The locked file descriptor, or the holder's description when another run has it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if not try_lock(fd):
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            return holder or "holder unknown"
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # its holder removed it while we opened it: take the new one


class InputClaim:
    """Claims the input for this run; `others` describes a live run found on it."""

    def __init__(self, input_path: Path, out: Path, read: ReadOptions, *, shared: bool) -> None:
        self.others = ""
        self.unchecked = ""
        """Why no claim could be made, when the user should know."""
        self._held: list[tuple[Path, int]] = []
        if not input_path.is_file():
            return  # a pipe: nothing to name a claim after
        folder = claims_dir()
        if folder is None:
            self.unchecked = "no private folder for claims (see $" + DIR_ENV + ")"
            return
        holder = json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": stamp(),
                "results": str(out.resolve()),
            }
        ).encode()
        try:
            names = _names(input_path, read)
        except OSError:
            return  # unreadable: reading the input reports it properly
        for name in names:
            got = _take(folder / name)
            if isinstance(got, str):
                self.others = self.others or holder_in_words(got)
                if shared:
                    continue
                break  # take no more: a run starting beside us then finds all of ours free
            os.ftruncate(got, 0)
            os.pwrite(got, holder, 0)
            self._held.append((folder / name, got))
        if self.others and not shared:
            self.release()
            raise ResultsFileError(
                Said(
                    (
                        f"another run is using {input_path} ({self.others}): two runs on one "
                        "input send every pair twice. Wait for it to finish or stop it, then "
                        "rerun; ",
                        Setting.ALLOW_SAME_INPUT,
                        " runs anyway",
                    )
                )
            )

    def release(self) -> None:
        """Remove the claim files while still holding them, then unlock. Safe to call twice."""
        held, self._held = self._held, []
        for path, fd in held:
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)
