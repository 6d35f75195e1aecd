"""The terminal core's handling of pre-empted programmes (resume) and of updates (`supersedes`)."""

from datetime import timedelta
from typing import Any

from devices.messages import AckReason, AckStage, Cancel, Command
from devices.priority import BroadcastKind, EmergencyLevel
from devices.terminal_core import Step, TerminalCore
from tests.builders import (
    COUNTY,
    T0,
    TERMINAL_ID,
    TEST_KEYS,
    TOWNSHIP,
    VILLAGE,
    command_id,
    make_command,
    make_emergency,
)

NOW = T0 + timedelta(seconds=1)
LATER = T0 + timedelta(seconds=30)


def _stages(step: Step) -> list[tuple[str, AckStage, AckReason | None, str | None]]:
    return [(ack.command_id, ack.stage, ack.reason, ack.by) for ack in step.acks]


def _playing(*commands: Command) -> TerminalCore:
    """A terminal that was sent `commands` in order and started whatever it was told to start."""
    core = TerminalCore(TERMINAL_ID, TEST_KEYS)
    for command in commands:
        step = core.on_command(command, NOW)
        if step.start is not None:
            core.on_started(step.start.id, NOW)
    return core


def _programme(n: int, issuer_region: str = VILLAGE, **overrides: Any) -> Command:
    return make_command(command_id(n), kind=BroadcastKind.PROGRAMME, issuer_region=issuer_region, **overrides)


def _cancel(n: int, cancels: str) -> Cancel:
    return Cancel(id=command_id(n), op="cancel", cancels=cancels, issuer_region=COUNTY, issued_at=NOW)


PROGRAMME = _programme(1)
NOTICE = make_command(command_id(2), kind=BroadcastKind.NOTICE)
ALERT = make_emergency(command_id(3), level=EmergencyLevel.II)


# --- resuming a pre-empted programme ------------------------------------------------------------


def test_a_preempted_programme_is_put_aside() -> None:
    core = _playing(PROGRAMME, ALERT)
    assert core.current == ALERT
    assert core.suspended == [PROGRAMME]


def test_a_preempted_programme_resumes_when_the_alert_completes() -> None:
    core = _playing(PROGRAMME, ALERT)
    step = core.on_finished(ALERT.id, LATER)
    assert _stages(step) == [(ALERT.id, AckStage.COMPLETED, None, None)]
    assert step.start == PROGRAMME
    assert core.current == PROGRAMME and core.suspended == []


def test_a_resumed_programme_reports_playing_again_then_completed() -> None:
    core = _playing(PROGRAMME, ALERT)
    core.on_finished(ALERT.id, LATER)
    assert _stages(core.on_started(PROGRAMME.id, LATER)) == [(PROGRAMME.id, AckStage.PLAYING, None, None)]
    assert _stages(core.on_finished(PROGRAMME.id, LATER)) == [(PROGRAMME.id, AckStage.COMPLETED, None, None)]
    assert core.current is None


def test_a_preempted_programme_resumes_after_the_alert_fails_or_is_cancelled() -> None:
    failed = _playing(PROGRAMME, ALERT)
    assert failed.on_failed(ALERT.id, LATER, "amplifier fault").start == PROGRAMME
    cancelled = _playing(PROGRAMME, ALERT)
    step = cancelled.on_cancel(_cancel(9, ALERT.id), LATER)
    assert step.stop == ALERT.id and step.start == PROGRAMME


def test_an_expired_programme_does_not_resume() -> None:
    short = _programme(4, expires_in=timedelta(seconds=10))
    core = _playing(short, ALERT)
    step = core.on_finished(ALERT.id, LATER)
    assert step.start is None
    assert core.current is None and core.suspended == []


def test_a_preempted_notice_or_alert_is_not_resumed() -> None:
    core = _playing(NOTICE, ALERT)
    assert core.suspended == []
    assert core.on_finished(ALERT.id, LATER).start is None
    level_iv = make_emergency(command_id(5), level=EmergencyLevel.IV)
    core = _playing(level_iv, ALERT)
    assert core.on_finished(ALERT.id, LATER).start is None


def test_the_highest_programme_put_aside_resumes_first_then_the_next() -> None:
    village = _programme(6)
    county = make_command(command_id(7), kind=BroadcastKind.PROGRAMME, issuer_region=COUNTY)
    core = _playing(village, county, ALERT)
    assert core.suspended == [village, county]
    assert core.on_finished(ALERT.id, LATER).start == county
    assert core.on_finished(county.id, LATER).start == village


def test_a_duplicate_of_a_programme_put_aside_repeats_preempted_and_starts_nothing() -> None:
    core = _playing(PROGRAMME, ALERT)
    step = core.on_command(PROGRAMME, LATER)
    assert _stages(step) == [(PROGRAMME.id, AckStage.PREEMPTED, AckReason.HIGHER_PRIORITY, ALERT.id)]
    assert step.start is None and core.current == ALERT


def test_a_programme_put_aside_can_be_cancelled_and_then_never_resumes() -> None:
    core = _playing(PROGRAMME, ALERT)
    step = core.on_cancel(_cancel(9, PROGRAMME.id), LATER)
    assert _stages(step) == [(PROGRAMME.id, AckStage.CANCELLED, None, command_id(9))]
    assert step.stop is None and core.current == ALERT
    assert core.on_finished(ALERT.id, LATER).start is None


def test_programmes_from_every_issuer_level_nest_and_resume_in_order() -> None:
    levels = ["421202001002", "421202001", "421202", "4212", "42"]
    programmes = [_programme(40 + n, issuer_region=region) for n, region in enumerate(levels)]
    core = _playing(*programmes, ALERT)
    assert core.suspended == programmes
    resumed = [core.on_finished(ALERT.id, LATER).start]
    while resumed[-1] is not None:
        resumed.append(core.on_finished(resumed[-1].id, LATER).start)
    assert resumed[:-1] == programmes[::-1]


def test_a_programme_put_aside_stays_recognisable_however_many_commands_follow() -> None:
    core = TerminalCore(TERMINAL_ID, TEST_KEYS, remember=4)
    core.on_command(PROGRAMME, NOW)
    core.on_command(ALERT, NOW)
    for n in range(30, 40):
        core.on_command(make_command(command_id(n), kind=BroadcastKind.NOTICE), NOW)
    again = core.on_command(PROGRAMME, LATER)
    assert _stages(again) == [(PROGRAMME.id, AckStage.PREEMPTED, AckReason.HIGHER_PRIORITY, ALERT.id)]
    assert core.suspended == [PROGRAMME]


# --- updates -------------------------------------------------------------------------------------


def _update(n: int, of: Command, **overrides: Any) -> Command:
    values: dict[str, Any] = {"kind": of.kind, "level": of.level, "issuer_region": of.issuer_region}
    values.update(overrides)
    return make_command(command_id(n), supersedes=[of.id], **values)


def test_an_update_replaces_the_command_it_supersedes_while_it_plays() -> None:
    core = _playing(ALERT)
    update = _update(11, ALERT)
    step = core.on_command(update, LATER)
    assert _stages(step) == [
        (ALERT.id, AckStage.CANCELLED, None, update.id),
        (update.id, AckStage.RECEIVED, None, None),
    ]
    assert step.stop == ALERT.id and step.start == update
    assert core.current == update


def test_an_update_of_lower_priority_still_replaces_the_one_it_supersedes() -> None:
    core = _playing(ALERT)
    downgrade = _update(12, ALERT, level=EmergencyLevel.IV)
    step = core.on_command(downgrade, LATER)
    assert step.start == downgrade and step.stop == ALERT.id


def test_an_update_of_a_command_never_seen_ends_it_in_advance() -> None:
    core = TerminalCore(TERMINAL_ID, TEST_KEYS)
    update = _update(13, ALERT)
    step = core.on_command(update, NOW)
    assert _stages(step)[0] == (ALERT.id, AckStage.CANCELLED, None, update.id)
    assert step.start == update
    late = core.on_command(ALERT, LATER)
    assert late.start is None
    assert _stages(late) == [(ALERT.id, AckStage.CANCELLED, None, update.id)]


def test_an_update_of_a_command_already_played_repeats_its_final_ack_and_plays() -> None:
    core = _playing(ALERT)
    core.on_finished(ALERT.id, NOW)
    update = _update(14, ALERT)
    step = core.on_command(update, LATER)
    assert _stages(step) == [
        (ALERT.id, AckStage.COMPLETED, None, None),
        (update.id, AckStage.RECEIVED, None, None),
    ]
    assert step.stop is None and step.start == update


def test_an_update_arriving_during_a_higher_alert_ends_the_old_one_and_is_busy() -> None:
    core = _playing(NOTICE)
    level_i = make_emergency(command_id(15), level=EmergencyLevel.I)
    core.on_command(level_i, NOW)
    update = _update(16, NOTICE)
    step = core.on_command(update, LATER)
    assert _stages(step) == [
        (NOTICE.id, AckStage.PREEMPTED, AckReason.HIGHER_PRIORITY, level_i.id),
        (update.id, AckStage.REJECTED, AckReason.BUSY, level_i.id),
    ]
    assert step.start is None and step.stop is None


def test_an_update_of_a_programme_put_aside_takes_its_place_and_resumes() -> None:
    core = _playing(PROGRAMME, ALERT)
    update = _update(17, PROGRAMME)
    step = core.on_command(update, LATER)
    assert _stages(step) == [
        (PROGRAMME.id, AckStage.CANCELLED, None, update.id),
        (update.id, AckStage.RECEIVED, None, None),
    ]
    assert step.start is None and core.current == ALERT and core.suspended == [update]
    assert core.on_finished(ALERT.id, LATER).start == update


def test_an_emergency_update_of_a_programme_put_aside_is_busy_like_any_emergency_of_its_rank() -> None:
    core = _playing(PROGRAMME, ALERT)
    update = _update(18, PROGRAMME, kind=BroadcastKind.EMERGENCY, level=EmergencyLevel.IV)
    step = core.on_command(update, LATER)
    assert _stages(step)[-1] == (update.id, AckStage.REJECTED, AckReason.BUSY, ALERT.id)
    assert core.suspended == []


def test_an_update_ends_every_command_it_names_even_one_this_terminal_never_saw_updated() -> None:
    core = _playing(ALERT)
    missed = _update(20, ALERT)
    latest = make_command(
        command_id(21),
        kind=ALERT.kind,
        level=ALERT.level,
        issuer_region=ALERT.issuer_region,
        supersedes=[missed.id, ALERT.id],
    )
    step = core.on_command(latest, LATER)
    assert _stages(step) == [
        (missed.id, AckStage.CANCELLED, None, latest.id),
        (ALERT.id, AckStage.CANCELLED, None, latest.id),
        (latest.id, AckStage.RECEIVED, None, None),
    ]
    assert step.stop == ALERT.id and step.start == latest
    assert core.on_command(missed, LATER).start is None


def test_a_township_update_of_a_county_alert_replaces_it() -> None:
    county_alert = make_emergency(command_id(18), level=EmergencyLevel.III, issuer_region=COUNTY)
    core = _playing(county_alert)
    update = _update(19, county_alert, issuer_region=TOWNSHIP)
    assert core.on_command(update, LATER).start == update
