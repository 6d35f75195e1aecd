"""The speech engine's own behaviour: voices, the cache, and saying clearly when there is no engine."""

import shutil
from pathlib import Path

import pytest

from controller.media import MediaStore
from controller.speech import SpeechEngine, SpeechUnavailable
from devices.voices import SpeechFailed, voice_for


@pytest.mark.parametrize(
    ("language", "voice"), [("zh-CN", "cmn"), ("zh", "cmn"), ("en", "en-us"), ("en-GB", "en-gb")]
)
def test_languages_map_to_espeak_voices(language: str, voice: str) -> None:
    assert voice_for(language) == voice


def test_a_language_without_a_voice_is_refused_by_name() -> None:
    with pytest.raises(SpeechFailed, match="no voice for language 'tlh'"):
        voice_for("tlh")


def test_without_an_engine_it_says_so_and_what_to_install(tmp_path: Path) -> None:
    engine = SpeechEngine(MediaStore(tmp_path), command="no-such-speech-engine")
    assert not engine.available
    assert "install espeak-ng" in engine.describe()
    with pytest.raises(SpeechUnavailable, match="apt-get install espeak-ng"):
        engine.speak("你好", "zh-CN")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_the_same_text_is_spoken_once_then_served_from_the_cache(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    engine = SpeechEngine(store)
    first = engine.speak("村委会通知：明天上午九点开会。", "zh-CN")
    files = sorted(p.name for p in tmp_path.iterdir())
    second = engine.speak("村委会通知：明天上午九点开会。", "zh-CN")
    assert second == first and sorted(p.name for p in tmp_path.iterdir()) == files
    english = engine.speak("Flood warning for the river villages.", "en")
    assert english.voice == "espeak-ng:en-us" and english.info.sha256 != first.info.sha256
    assert 1.5 < english.info.duration_s < 10
