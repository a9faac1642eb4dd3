"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import polars as pl

from localsynth.errors import UserError


def output_dir(path: Path, key: str) -> Path:
    """Make sure `path` is a folder this process can write (creating it), or raise a UserError
    naming `key` (the flag or config key that set it) and the fix. Checked before any work, so
    that a wrong output folder is bad input (exit 2), not a crash after the work is done."""
    path = Path(path)
    for parent in (path, *path.parents):  # the nearest existing ancestor must be a folder
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                what = "is a file" if parent == path else f"is inside {parent}, which is a file"
                raise UserError(f"{key} {path} {what}; give a folder: remove the file or choose another {key}")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(
            f"{key} {path}: cannot write there ({reason}); choose another {key} or make it writable "
            f"(chmod u+w)"
        ) from None
    return path


def os_error_message(exc: OSError, key: str) -> str | None:
    """A user error's message for an OSError that means a path is unusable as given (a file where
    a folder belongs, no permission, a read-only file system), or None for runtime failures
    (a full disk, a lost mount), which stay exit 1."""
    import errno

    if exc.errno not in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS):
        return None
    where = exc.filename or "a path"
    if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        fix = f"a file stands where a folder belongs (or the reverse); remove it or choose another {key}"
    else:
        fix = f"choose a writable {key}, or fix the permissions of {where}"
    return f"cannot use {where} ({exc.strerror or type(exc).__name__}): {fix}"


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def stop_here_for_tests(point: str) -> None:
    """Crash-window tests: LOCALSYNTH_KILL_AT=<point> kills the process at that point, as a
    kill -9 or a node failure would; LOCALSYNTH_PAUSE_AT=<point> waits there until the file
    named by LOCALSYNTH_PAUSE_UNTIL exists (at most 10 minutes), so a test can act while the
    process stands at that point."""
    if os.environ.get("LOCALSYNTH_KILL_AT") == point:
        os._exit(137)
    if os.environ.get("LOCALSYNTH_PAUSE_AT") == point:
        release = Path(os.environ.get("LOCALSYNTH_PAUSE_UNTIL", ""))
        deadline = time.monotonic() + 600
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable: POSIX keeps a directory entry in memory
    until the directory itself is fsynced, so a power loss after os.replace could otherwise
    bring back the old file (or none). File systems that cannot fsync a directory are skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # EINVAL on some network and FUSE file systems: nothing more to do there
        pass
    finally:
        os.close(fd)


def commit_file(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as fh:  # flush to disk so a crash cannot leave an empty "complete" file
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)  # and the rename itself


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    tmp.write_text(text, encoding="utf-8")
    commit_file(tmp, path)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    tmp.write_bytes(data)
    commit_file(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet_atomic(df: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    df.write_parquet(tmp, compression="zstd")
    commit_file(tmp, path)


def update_text(path: Path, text: str) -> bool:
    """Write `text` atomically unless the file already holds it (re-runs leave files untouched)."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    write_text_atomic(path, text)
    return True


def update_json(path: Path, data: Any) -> bool:
    return update_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def update_bytes(path: Path, data: bytes) -> bool:
    if path.is_file() and path.read_bytes() == data:
        return False
    write_bytes_atomic(path, data)
    return True


def fsync_tree(folder: Path, files: bool = True) -> None:
    """fsync the files below `folder` (with `files`), then the folders themselves: a folder
    renamed into place after this is whole after a crash, not a name with empty files."""
    paths = [*(folder.rglob("*") if files else []), folder]
    for path in paths:
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    for path in paths:
        if path.is_dir():
            fsync_dir(path)
