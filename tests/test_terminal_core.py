"""The terminal's command state machine (devices/terminal_core.py), driven by hand with a fixed clock."""

from datetime import timedelta
from typing import Any

import pytest

from devices.messages import Ack, AckReason, AckStage, Command
from devices.priority import BroadcastKind, EmergencyLevel
from devices.terminal_core import Step, TerminalCore
from tests.builders import (
    CITY,
    T0,
    TERMINAL_ID,
    TEST_KEYS,
    TEST_SIGNER,
    VILLAGE,
    as_dict,
    command_id,
    make_command,
    make_emergency,
    signed,
    to_payload,
)

NOW = T0 + timedelta(seconds=1)
LATER = T0 + timedelta(seconds=30)


def _core(**kwargs: Any) -> TerminalCore:
    return TerminalCore(TERMINAL_ID, TEST_KEYS, **kwargs)


def _playing(command: Command, **kwargs: Any) -> TerminalCore:
    """A terminal that received `command` and is playing it."""
    core = _core(**kwargs)
    core.on_command(command, NOW)
    core.on_started(command.id, NOW)
    return core


def _stages(step: Step) -> list[tuple[str, AckStage, AckReason | None]]:
    return [(ack.command_id, ack.stage, ack.reason) for ack in step.acks]


LOW = make_command(command_id(1), kind=BroadcastKind.PROGRAMME, issuer_region=VILLAGE)
MID = make_command(command_id(2), kind=BroadcastKind.NOTICE)
HIGH = make_emergency(command_id(3), level=EmergencyLevel.I, issuer_region=CITY)


# --- idle --------------------------------------------------------------------------------------


def test_idle_terminal_acknowledges_received_and_starts_the_command() -> None:
    step = _core().on_command(MID, NOW)
    assert (_stages(step), step.start, step.stop) == ([(MID.id, AckStage.RECEIVED, None)], MID, None)


def test_idle_terminal_makes_the_received_command_current() -> None:
    core = _core()
    core.on_command(MID, NOW)
    assert core.current == MID


def test_acks_carry_the_terminal_id_and_the_time_given() -> None:
    (ack,) = _core().on_command(MID, NOW).acks
    assert (ack.terminal_id, ack.at) == (TERMINAL_ID, NOW)


def test_valid_payload_is_handled_like_the_decoded_command() -> None:
    assert _core().on_payload(signed(MID, NOW), NOW) == _core().on_command(TEST_SIGNER.sign(MID, NOW), NOW)


# --- duplicates --------------------------------------------------------------------------------


def test_duplicate_of_received_command_resends_the_same_ack_and_starts_nothing() -> None:
    core = _core()
    first = core.on_command(MID, NOW)
    assert core.on_command(MID, LATER) == Step(acks=first.acks)


def test_duplicate_of_playing_command_resends_the_playing_ack() -> None:
    core = _core()
    core.on_command(MID, NOW)
    playing = core.on_started(MID.id, NOW)
    assert core.on_command(MID, LATER) == Step(acks=playing.acks)


def test_duplicate_of_completed_command_resends_completed_and_does_not_play_again() -> None:
    core = _playing(MID)
    completed = core.on_finished(MID.id, NOW)
    assert core.on_command(MID, LATER) == Step(acks=completed.acks)


def test_duplicate_of_rejected_command_resends_the_rejection() -> None:
    core = _playing(HIGH)
    busy = core.on_command(MID, NOW)
    core.on_finished(HIGH.id, NOW)
    assert core.on_command(MID, LATER) == Step(acks=busy.acks)


def test_duplicate_of_preempted_command_resends_preempted() -> None:
    core = _playing(MID)
    preempting = core.on_command(HIGH, NOW)
    assert core.on_command(MID, LATER) == Step(acks=preempting.acks[:1])


def test_duplicate_payload_resends_the_same_ack() -> None:
    core = _core()
    first = core.on_payload(signed(MID, NOW), NOW)
    assert core.on_payload(signed(MID, LATER), LATER) == Step(acks=first.acks)


def test_duplicate_is_recognised_even_after_the_command_expired() -> None:
    core = _core()
    first = core.on_command(MID, NOW)
    assert core.on_command(MID, MID.expires_at + timedelta(hours=1)) == Step(acks=first.acks)


# --- expiry ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "after_expiry",
    [timedelta(0), timedelta(microseconds=1), timedelta(days=1)],
    ids=["at", "just-after", "day-after"],
)
def test_expired_command_is_rejected_as_expired(after_expiry: timedelta) -> None:
    step = _core().on_command(MID, MID.expires_at + after_expiry)
    assert (_stages(step), step.start, step.stop) == (
        [(MID.id, AckStage.REJECTED, AckReason.EXPIRED)],
        None,
        None,
    )


def test_command_just_before_expiry_is_received() -> None:
    step = _core().on_command(MID, MID.expires_at - timedelta(microseconds=1))
    assert step.start == MID


def test_expired_command_leaves_an_idle_terminal_idle() -> None:
    core = _core()
    core.on_command(MID, MID.expires_at)
    assert core.current is None


def test_expired_higher_priority_command_does_not_preempt() -> None:
    core = _playing(LOW)
    step = core.on_command(HIGH, HIGH.expires_at)
    assert (_stages(step), step.stop, core.current) == (
        [(HIGH.id, AckStage.REJECTED, AckReason.EXPIRED)],
        None,
        LOW,
    )


# --- pre-emption and busy ----------------------------------------------------------------------


def test_higher_priority_preempts_with_preempted_ack_for_current_then_received_for_new() -> None:
    step = _playing(MID).on_command(HIGH, NOW)
    assert _stages(step) == [
        (MID.id, AckStage.PREEMPTED, AckReason.HIGHER_PRIORITY),
        (HIGH.id, AckStage.RECEIVED, None),
    ]


def test_preempted_ack_names_the_new_command_in_by() -> None:
    preempted = _playing(MID).on_command(HIGH, NOW).acks[0]
    assert preempted.by == HIGH.id


def test_higher_priority_stops_the_current_and_starts_the_new() -> None:
    step = _playing(MID).on_command(HIGH, NOW)
    assert (step.stop, step.start) == (MID.id, HIGH)


def test_higher_priority_becomes_current() -> None:
    core = _playing(MID)
    core.on_command(HIGH, NOW)
    assert core.current == HIGH


def test_preemption_also_applies_to_received_but_not_yet_playing_command() -> None:
    core = _core()
    core.on_command(MID, NOW)
    assert core.on_command(HIGH, NOW).stop == MID.id


def test_same_class_from_wider_issuer_preempts() -> None:
    village = make_command(command_id(10), kind=BroadcastKind.NOTICE, issuer_region=VILLAGE)
    city = make_command(command_id(11), kind=BroadcastKind.NOTICE, issuer_region=CITY)
    assert _playing(village).on_command(city, NOW).stop == village.id


@pytest.mark.parametrize(
    "incoming",
    [
        pytest.param(make_command(command_id(20), kind=BroadcastKind.NOTICE), id="equal"),
        pytest.param(LOW, id="lower-class"),
        pytest.param(
            make_command(command_id(21), kind=BroadcastKind.NOTICE, issuer_region=VILLAGE),
            id="narrower-issuer",
        ),
    ],
)
def test_equal_or_lower_priority_is_rejected_busy(incoming: Command) -> None:
    step = _playing(MID).on_command(incoming, NOW)
    assert (_stages(step), step.start, step.stop) == (
        [(incoming.id, AckStage.REJECTED, AckReason.BUSY)],
        None,
        None,
    )


def test_busy_rejection_names_the_current_command_in_by() -> None:
    (ack,) = _playing(MID).on_command(LOW, NOW).acks
    assert ack.by == MID.id


def test_busy_rejection_keeps_the_current_command() -> None:
    core = _playing(MID)
    core.on_command(LOW, NOW)
    assert core.current == MID


# --- player progress ---------------------------------------------------------------------------


def test_on_started_acknowledges_playing_and_keeps_the_command_current() -> None:
    core = _core()
    core.on_command(MID, NOW)
    step = core.on_started(MID.id, NOW)
    assert (_stages(step), step.start, step.stop, core.current) == (
        [(MID.id, AckStage.PLAYING, None)],
        None,
        None,
        MID,
    )


def test_on_finished_acknowledges_completed() -> None:
    step = _playing(MID).on_finished(MID.id, LATER)
    assert _stages(step) == [(MID.id, AckStage.COMPLETED, None)]


def test_on_finished_frees_the_terminal() -> None:
    core = _playing(MID)
    core.on_finished(MID.id, LATER)
    assert core.current is None


def test_after_finishing_a_lower_priority_command_is_started() -> None:
    core = _playing(MID)
    core.on_finished(MID.id, LATER)
    assert core.on_command(LOW, LATER).start == LOW


def test_on_failed_acknowledges_failed_with_playback_error_and_the_detail() -> None:
    (ack,) = _playing(MID).on_failed(MID.id, LATER, "checksum mismatch").acks
    assert (ack.stage, ack.reason, ack.detail) == (
        AckStage.FAILED,
        AckReason.PLAYBACK_ERROR,
        "checksum mismatch",
    )


def test_on_failed_frees_the_terminal() -> None:
    core = _playing(MID)
    core.on_failed(MID.id, LATER, "amplifier fault")
    assert core.current is None


def test_on_failed_with_a_long_detail_still_acknowledges_and_frees_the_terminal() -> None:
    core = _playing(MID)
    step = core.on_failed(MID.id, LATER, "decoder error: " + "x" * 600)
    assert (_stages(step), core.current) == ([(MID.id, AckStage.FAILED, AckReason.PLAYBACK_ERROR)], None)


@pytest.mark.parametrize("progress", ["on_started", "on_finished", "on_failed"])
def test_progress_for_a_command_that_is_not_current_produces_nothing(progress: str) -> None:
    core = _playing(MID)
    args = (LATER, "boom") if progress == "on_failed" else (LATER,)
    assert getattr(core, progress)(LOW.id, *args) == Step()


@pytest.mark.parametrize("progress", ["on_started", "on_finished", "on_failed"])
def test_progress_while_idle_produces_nothing(progress: str) -> None:
    args = (LATER, "boom") if progress == "on_failed" else (LATER,)
    assert getattr(_core(), progress)(MID.id, *args) == Step()


@pytest.mark.parametrize("progress", ["on_finished", "on_failed"])
def test_end_of_a_command_that_is_not_current_keeps_the_current_one(progress: str) -> None:
    core = _playing(MID)
    args = (LATER, "boom") if progress == "on_failed" else (LATER,)
    getattr(core, progress)(LOW.id, *args)
    assert core.current == MID


def test_late_finish_of_a_preempted_command_produces_nothing_and_keeps_the_new_one() -> None:
    core = _playing(MID)
    core.on_command(HIGH, NOW)
    assert (core.on_finished(MID.id, LATER), core.current) == (Step(), HIGH)


# --- undecodable payloads ----------------------------------------------------------------------


def _tampered(**changes: Any) -> bytes:
    data = as_dict(MID)
    for member, value in changes.items():
        if value is None:
            del data[member]
        else:
            data[member] = value
    return to_payload(data)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(_tampered(content=None), id="missing-member"),
        pytest.param(_tampered(priority="high"), id="wrong-type"),
        pytest.param(_tampered(priority=MID.priority + 1), id="inconsistent-priority"),
        pytest.param(_tampered(kind="alarm"), id="unknown-kind"),
    ],
)
def test_undecodable_command_with_an_id_is_rejected_bad_payload(payload: bytes) -> None:
    step = _core().on_payload(payload, NOW)
    assert (_stages(step), step.start) == ([(MID.id, AckStage.REJECTED, AckReason.BAD_PAYLOAD)], None)


def test_bad_payload_rejection_explains_what_is_wrong_in_detail() -> None:
    (ack,) = _core().on_payload(_tampered(priority="high"), NOW).acks
    assert ack.detail is not None and ack.detail.startswith("Command.priority:")


@pytest.mark.parametrize(
    "payload",
    [pytest.param(_tampered(v=2), id="v2"), pytest.param(_tampered(v=None), id="missing-v")],
)
def test_command_of_another_version_is_rejected_unsupported_version(payload: bytes) -> None:
    step = _core().on_payload(payload, NOW)
    assert _stages(step) == [(MID.id, AckStage.REJECTED, AckReason.UNSUPPORTED_VERSION)]


def test_command_with_a_long_bogus_version_is_still_rejected_unsupported_version() -> None:
    step = _core().on_payload(_tampered(v="x" * 600), NOW)
    assert _stages(step) == [(MID.id, AckStage.REJECTED, AckReason.UNSUPPORTED_VERSION)]


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe\xfd", id="non-utf8"),
        pytest.param(b'["cmd-00000001"]', id="array"),
        pytest.param(b"null", id="null"),
        pytest.param(_tampered(id=None), id="no-id"),
        pytest.param(_tampered(id="short"), id="malformed-id"),
        pytest.param(_tampered(id=12345678), id="numeric-id"),
        pytest.param(_tampered(id=None, v=2), id="v2-without-id"),
    ],
)
def test_undecodable_payload_without_a_usable_id_produces_nothing(payload: bytes) -> None:
    assert _core().on_payload(payload, NOW) == Step()


def test_undecodable_payload_leaves_the_current_command_playing() -> None:
    core = _playing(MID)
    core.on_payload(_tampered(id=command_id(50), priority="high"), NOW)
    assert core.current == MID


# --- bounded de-duplication memory -------------------------------------------------------------


def _commands(n: int) -> list[Command]:
    return [make_command(command_id(100 + i)) for i in range(n)]


def _complete_each(core: TerminalCore, commands: list[Command]) -> dict[str, Ack]:
    """Play every command to the end, one after the other; the completed ack of each."""
    completed = {}
    for command in commands:
        core.on_command(command, NOW)
        (completed[command.id],) = core.on_finished(command.id, NOW).acks
    return completed


def test_the_last_remember_commands_are_still_recognised_as_duplicates() -> None:
    core = _core(remember=2)
    commands = _commands(3)
    completed = _complete_each(core, commands)
    for command in commands[1:]:
        assert core.on_command(command, LATER) == Step(acks=(completed[command.id],))


def test_a_command_older_than_remember_is_forgotten_and_played_again() -> None:
    core = _core(remember=2)
    commands = _commands(3)
    _complete_each(core, commands)
    step = core.on_command(commands[0], LATER)
    assert (_stages(step), step.start) == ([(commands[0].id, AckStage.RECEIVED, None)], commands[0])


def test_a_new_ack_refreshes_a_command_in_the_memory() -> None:
    core = _core(remember=2)
    core.on_command(MID, NOW)  # memory: MID
    core.on_command(LOW, NOW)  # MID, LOW (busy)
    playing = core.on_started(MID.id, NOW)  # LOW, MID
    core.on_command(make_command(command_id(60), kind=BroadcastKind.PROGRAMME), NOW)  # MID, 60: LOW forgotten
    assert core.on_command(MID, LATER) == Step(acks=playing.acks)


def test_the_default_memory_holds_1024_commands() -> None:
    core = _core()
    commands = _commands(1025)
    _complete_each(core, commands)
    assert (core.on_command(commands[1], LATER).start, core.on_command(commands[0], LATER).start) == (
        None,
        commands[0],
    )


def test_a_redelivered_current_command_is_never_rejected_as_busy_with_itself() -> None:
    core = _playing(HIGH, remember=2)
    for command in _commands(2):
        core.on_command(command, NOW)  # both rejected busy; HIGH's ack leaves the memory
    step = core.on_command(HIGH, LATER)
    assert AckStage.REJECTED not in [ack.stage for ack in step.acks]
