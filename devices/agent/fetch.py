"""Downloading a command's audio: resumable, checked, cached.

The controller serves media with range requests, so a download cut off on a poor link resumes
where it stopped (`Range: bytes=<have>-`) on the next attempt rather than starting over. A file is
played only once its size and SHA-256 are those the signed command names; it is then kept under
its SHA-256, so a programme played every day is downloaded once, and the directory is kept within
its limit by dropping what was played longest ago (`devices.agent.cache`).
"""

import asyncio
import hashlib
import logging
from pathlib import Path

import httpx

from devices.agent.cache import keep_within, used
from devices.backoff import backoff_delay
from devices.messages import AudioRef

log = logging.getLogger(__name__)

ATTEMPTS = 3
_CHUNK = 64 * 1024


class FetchFailed(Exception):
    """The audio could not be had, or is not what the command says; `detail` says why."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class AudioCache:
    """Verified audio files in `directory`, each named by its SHA-256, at most `limit_bytes` of them
    (beside the one just fetched)."""

    def __init__(self, directory: Path, timeout_s: float, limit_bytes: int) -> None:
        self.directory = directory
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 15.0))
        self._limit = limit_bytes

    async def get(self, audio: AudioRef) -> Path:
        """The verified file, from the cache or downloaded (up to ATTEMPTS tries, each resuming)."""
        path = self.directory / audio.sha256
        if path.is_file() and path.stat().st_size == audio.size:
            used(path)
            return path
        self.directory.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await self._download(audio, path.with_suffix(".part"))
                break
            except (httpx.HTTPError, OSError) as exc:
                if attempt == ATTEMPTS:
                    raise FetchFailed(f"download of {audio.url} failed: {exc!r}") from None
                log.warning("download of %s failed (%r); resuming", audio.url, exc)
                await asyncio.sleep(backoff_delay(attempt))
        await asyncio.to_thread(_verify, path.with_suffix(".part"), audio)
        path.with_suffix(".part").replace(path)
        await asyncio.to_thread(keep_within, self.directory, self._limit, path)
        return path

    async def _download(self, audio: AudioRef, partial: Path) -> None:
        have = await asyncio.to_thread(_size, partial)
        if have >= audio.size:
            return
        headers = {"Range": f"bytes={have}-"} if have else {}
        async with (
            httpx.AsyncClient(timeout=self._timeout, follow_redirects=True) as client,
            client.stream("GET", audio.url, headers=headers) as response,
        ):
            if response.status_code not in (200, 206):
                raise FetchFailed(f"download of {audio.url}: HTTP {response.status_code}")
            # 200 to a range request: the server sends the whole file, so start the file again.
            with partial.open("ab" if response.status_code == 206 else "wb") as out:
                async for chunk in response.aiter_bytes(_CHUNK):
                    if out.tell() + len(chunk) > audio.size:
                        out.truncate(0)
                        raise FetchFailed(f"{audio.url} is larger than the {audio.size} bytes announced")
                    out.write(chunk)


def _size(path: Path) -> int:
    """Bytes already downloaded (0 if none)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _verify(partial: Path, audio: AudioRef) -> None:
    """Raise FetchFailed (and drop the file) unless it has the size and SHA-256 announced."""
    size = partial.stat().st_size
    digest = hashlib.sha256()
    with partial.open("rb") as data:
        while block := data.read(1 << 20):
            digest.update(block)
    if size == audio.size and digest.hexdigest() == audio.sha256:
        return
    partial.unlink()
    raise FetchFailed(
        f"{audio.url}: got {size} bytes with SHA-256 {digest.hexdigest()[:16]}…, "
        f"expected {audio.size} bytes with {audio.sha256[:16]}…"
    )
