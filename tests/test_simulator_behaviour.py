"""Simulated terminals take as long to play as real speech or audio would."""

import pytest

from devices.messages import AudioRef, Content
from simulator.fleet import MIN_PLAY_S, Behaviour, fleet_for_villages

SHA = "0" * 64


def test_speech_lasts_about_four_characters_a_second() -> None:
    assert Behaviour().playback(Content(text="请" * 120)) == pytest.approx(30.0)


def test_audio_lasts_by_its_size_at_128_kbit_per_second() -> None:
    audio = AudioRef(url="http://c/a.mp3", size=16_000 * 45, sha256=SHA)
    assert Behaviour().playback(Content(audio=audio, text="短")) == pytest.approx(45.0)


def test_even_one_word_takes_the_minimum_play_time() -> None:
    assert Behaviour().playback(Content(text="测试")) == MIN_PLAY_S


def test_a_fixed_playback_overrides_the_estimate() -> None:
    assert Behaviour(playback_s=0.5).playback(Content(text="请" * 400)) == 0.5


def test_fleet_has_per_village_terminals_with_stable_ids() -> None:
    specs = fleet_for_villages(["421202100001", "421202100004"], per_village=2)
    assert [s.terminal_id for s in specs] == [
        "sim-421202100001-1",
        "sim-421202100001-2",
        "sim-421202100004-1",
        "sim-421202100004-2",
    ]


@pytest.mark.parametrize(("villages", "per_village"), [(["421202100001"], 0), (["4212021"], 1)])
def test_fleet_refuses_bad_arguments(villages: list[str], per_village: int) -> None:
    with pytest.raises(ValueError):
        fleet_for_villages(villages, per_village)
