"""Keeping a terminal's stored audio and speech within a size, least recently played first out.

A terminal plays new programme audio every day and speaks every new alert text; kept forever, the
files would fill its flash in time. Every file that is played is touched (its modification time
is when it was last played), and after a file is added the directory is cut back to its limit by
removing the files played longest ago, never the one just added (played now, whatever its size).
"""

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def used(path: Path) -> None:
    """Note that the file is being played now (it goes last when the directory is cut back)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def keep_within(directory: Path, limit_bytes: int, keep: Path) -> list[Path]:
    """Remove the least recently played files of `directory` until it holds at most `limit_bytes`
    (not counting downloads still in progress, `*.part*`); `keep` is never removed. Returns what
    was removed."""
    files: list[tuple[float, int, Path]] = []
    total = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.is_file(follow_symlinks=False) or ".part" in entry.name:
                continue
            with contextlib.suppress(OSError):
                status = entry.stat(follow_symlinks=False)
                total += status.st_size
                if Path(entry.path) != keep:
                    files.append((status.st_mtime, status.st_size, Path(entry.path)))
    removed: list[Path] = []
    for _, size, path in sorted(files):
        if total <= limit_bytes:
            break
        try:
            path.unlink()
        except OSError as exc:
            log.warning("could not remove %s to make room: %s", path, exc)
            continue
        total -= size
        removed.append(path)
    if removed:
        log.info(
            "removed %d least recently played file(s) from %s to stay within %d bytes",
            len(removed),
            directory,
            limit_bytes,
        )
    return removed
