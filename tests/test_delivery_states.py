"""The controller's delivery state machine (controller/delivery.py): forward only, finals are final."""

from collections.abc import Iterable
from itertools import combinations, product
from typing import Any

import pytest

from controller.delivery import (
    FINAL_STATES,
    STATE_FOR_STAGE,
    UNACKNOWLEDGED_STATES,
    DeliveryState,
    can_move,
)
from devices.messages import AckStage

S = DeliveryState
PROGRESS_IN_ORDER = [S.PENDING, S.SENT, S.RECEIVED, S.PLAYING]
FINALS = [S.COMPLETED, S.PREEMPTED, S.REJECTED, S.FAILED, S.EXPIRED, S.CANCELLED]


def _pairs(pairs: Iterable[tuple[DeliveryState, DeliveryState]]) -> list[Any]:
    return [pytest.param(a, b, id=f"{a.value}->{b.value}") for a, b in pairs]


def test_every_state_is_either_in_progress_or_final() -> None:
    assert set(PROGRESS_IN_ORDER) | set(FINALS) == set(DeliveryState)


def test_final_states_are_exactly_the_ending_ones() -> None:
    assert set(FINAL_STATES) == set(FINALS)


def test_unacknowledged_states_are_pending_and_sent() -> None:
    assert set(UNACKNOWLEDGED_STATES) == {S.PENDING, S.SENT}


@pytest.mark.parametrize(("current", "new"), _pairs(combinations(PROGRESS_IN_ORDER, 2)))
def test_can_move_forward_including_skipped_stages(current: DeliveryState, new: DeliveryState) -> None:
    assert can_move(current, new)


@pytest.mark.parametrize(("current", "new"), _pairs(product(PROGRESS_IN_ORDER, FINALS)))
def test_can_move_from_any_unfinished_state_to_any_final_state(
    current: DeliveryState, new: DeliveryState
) -> None:
    assert can_move(current, new)


@pytest.mark.parametrize(("current", "new"), _pairs((b, a) for a, b in combinations(PROGRESS_IN_ORDER, 2)))
def test_cannot_move_backwards(current: DeliveryState, new: DeliveryState) -> None:
    assert not can_move(current, new)


@pytest.mark.parametrize("state", list(DeliveryState), ids=lambda s: s.value)
def test_duplicate_move_to_the_same_state_is_refused(state: DeliveryState) -> None:
    assert not can_move(state, state)


@pytest.mark.parametrize(("current", "new"), _pairs(product(FINALS, DeliveryState)))
def test_nothing_moves_out_of_a_final_state(current: DeliveryState, new: DeliveryState) -> None:
    assert not can_move(current, new)


def test_state_for_stage_covers_every_ack_stage() -> None:
    assert set(STATE_FOR_STAGE) == set(AckStage)


@pytest.mark.parametrize("stage", list(AckStage), ids=lambda s: s.value)
def test_each_ack_stage_maps_to_the_delivery_state_of_the_same_name(stage: AckStage) -> None:
    assert STATE_FOR_STAGE[stage].value == stage.value


@pytest.mark.parametrize(
    ("stage", "final"),
    [
        (AckStage.RECEIVED, False),
        (AckStage.PLAYING, False),
        (AckStage.COMPLETED, True),
        (AckStage.PREEMPTED, True),
        (AckStage.REJECTED, True),
        (AckStage.FAILED, True),
    ],
    ids=lambda value: getattr(value, "value", str(value)),
)
def test_ending_ack_stages_map_to_final_states(stage: AckStage, final: bool) -> None:
    assert (STATE_FOR_STAGE[stage] in FINAL_STATES) is final


def _apply(state: DeliveryState, stages: list[AckStage]) -> tuple[DeliveryState, int]:
    """Fold acknowledgements as the tracker does; the final state and how many were ignored."""
    ignored = 0
    for stage in stages:
        new = STATE_FOR_STAGE[stage]
        if can_move(state, new):
            state = new
        else:
            ignored += 1
    return state, ignored


def test_duplicates_and_late_acks_are_ignored_in_a_full_sequence() -> None:
    stages = [
        AckStage.RECEIVED,
        AckStage.RECEIVED,  # QoS 1 duplicate
        AckStage.PLAYING,
        AckStage.COMPLETED,
        AckStage.PLAYING,  # late
        AckStage.FAILED,  # after the end
    ]
    assert _apply(S.SENT, stages) == (S.COMPLETED, 3)


def test_ack_arriving_before_the_command_is_marked_sent_still_applies() -> None:
    assert _apply(S.PENDING, [AckStage.PLAYING]) == (S.PLAYING, 0)


RESUMED_OR_ENDED = {S.PLAYING, S.COMPLETED, S.FAILED, S.CANCELLED}


@pytest.mark.parametrize("new", list(DeliveryState), ids=lambda s: s.value)
def test_a_preempted_programme_may_only_resume_or_end(new: DeliveryState) -> None:
    assert can_move(S.PREEMPTED, new, resumable=True) is (new in RESUMED_OR_ENDED)
    assert not can_move(S.PREEMPTED, new)


@pytest.mark.parametrize(
    ("current", "new"), _pairs(product([f for f in FINALS if f is not S.PREEMPTED], FINALS))
)
def test_other_final_states_stay_final_even_for_a_programme(
    current: DeliveryState, new: DeliveryState
) -> None:
    assert not can_move(current, new, resumable=True)
