"""A terminal keeps its downloaded audio and synthesised speech within `cache_mb`: what was played
longest ago goes first, the file about to play never, and a file played again counts as new."""

import functools
import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devices.agent.cache import keep_within
from devices.agent.config import AgentConfig
from devices.agent.fetch import AudioCache
from devices.agent.player import Player
from devices.messages import AudioRef


def put(directory: Path, name: str, size: int, played_at: float) -> Path:
    path = directory / name
    path.write_bytes(b"x" * size)
    os.utime(path, (played_at, played_at))
    return path


def test_the_files_played_longest_ago_go_until_the_directory_fits(tmp_path: Path) -> None:
    files = [put(tmp_path, f"f{i}", 100, 1_000_000 + i) for i in range(1, 6)]
    downloading = put(tmp_path, "f6.part", 1000, 1)
    removed = keep_within(tmp_path, 250, keep=files[-1])
    assert removed == files[:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f4", "f5", "f6.part"]
    assert downloading.exists()


def test_the_file_about_to_play_stays_even_alone_over_the_limit(tmp_path: Path) -> None:
    old = put(tmp_path, "old", 10, 1_000_000)
    big = put(tmp_path, "big", 1000, 900_000)
    assert keep_within(tmp_path, 100, keep=big) == [old]
    assert big.exists()


@pytest.fixture
def media(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A plain HTTP server of a directory (whole files, no ranges), as a CDN in front of media."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def serve(root: Path, base: str, name: str, size: int) -> AudioRef:
    data = name.encode() * (size // len(name))
    (root / name).write_bytes(data)
    return AudioRef(url=f"{base}/{name}", sha256=hashlib.sha256(data).hexdigest(), size=len(data))


async def test_downloaded_audio_played_again_outlives_audio_played_once(
    tmp_path: Path, media: tuple[Path, str]
) -> None:
    root, base = media
    cache = AudioCache(tmp_path / "audio", timeout_s=10, limit_bytes=2500)
    daily, once, new = (serve(root, base, name, 1000) for name in ("daily", "once", "new"))
    first = await cache.get(daily)
    await cache.get(once)
    os.utime(first, (1_000_000, 1_000_000))
    assert await cache.get(daily) == first  # played again: from the cache, and counted as recent
    (root / "daily").unlink()
    await cache.get(new)
    kept = sorted(p.name for p in (tmp_path / "audio").iterdir())
    assert kept == sorted([daily.sha256, new.sha256])
    assert await cache.get(daily) == first


async def test_speech_is_kept_within_the_limit(tmp_path: Path) -> None:
    keyset = tmp_path / "keyset.json"
    keyset.write_text("{}")
    config = AgentConfig(
        terminal_id="t1",
        region="421202100001",
        broker="mqtt://127.0.0.1:1",
        keyset=keyset,
        state_dir=tmp_path,
        cache_mb=1,
        tts=["sh", "-c", 'head -c 600000 /dev/zero > "$0"', "{file}"],
    )
    player = Player(config, tmp_path / "speech")
    first = await player.speech("洪水预警", "zh-CN")
    second = await player.speech("台风预警", "zh-CN")
    assert second.exists() and not first.exists()
    assert sum(p.stat().st_size for p in (tmp_path / "speech").iterdir()) <= 1_000_000
