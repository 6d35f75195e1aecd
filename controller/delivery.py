"""The delivery state machine: one terminal's progress through one broadcast.

    pending ─► sent ─► received ─► playing ─► completed
       │         │         │          │  ▲
       │         │         │          │  └── resumed (programmes only) ──┐
       └─────────┴─────────┴──────────┴─► preempted ────────────────────┘
                                      └─► rejected | failed | expired | cancelled

A state only moves forward (acknowledgements may skip stages: an ack can arrive before the
controller has marked the command sent); a final state never changes, except that a programme
pre-empted by something more urgent is resumed by the terminal afterwards (`preempted` → `playing`)
if it has not expired. Anything else, such as a QoS 1 duplicate or a late `received` after
`completed`, is ignored and counted.
"""

from enum import StrEnum

from devices.messages import AckStage


class DeliveryState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    RECEIVED = "received"
    PLAYING = "playing"
    COMPLETED = "completed"
    PREEMPTED = "preempted"
    REJECTED = "rejected"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset(
    {
        DeliveryState.COMPLETED,
        DeliveryState.PREEMPTED,
        DeliveryState.REJECTED,
        DeliveryState.FAILED,
        DeliveryState.EXPIRED,
        DeliveryState.CANCELLED,
    }
)
UNACKNOWLEDGED_STATES = frozenset({DeliveryState.PENDING, DeliveryState.SENT})
# The reason of a delivery the controller marked `cancelled` before the terminal confirmed it.
UNCONFIRMED = "unconfirmed"

_RANK = {DeliveryState.PENDING: 0, DeliveryState.SENT: 1, DeliveryState.RECEIVED: 2, DeliveryState.PLAYING: 3}
_FINAL_RANK = 4

STATE_FOR_STAGE = {
    AckStage.RECEIVED: DeliveryState.RECEIVED,
    AckStage.PLAYING: DeliveryState.PLAYING,
    AckStage.COMPLETED: DeliveryState.COMPLETED,
    AckStage.PREEMPTED: DeliveryState.PREEMPTED,
    AckStage.REJECTED: DeliveryState.REJECTED,
    AckStage.FAILED: DeliveryState.FAILED,
    AckStage.CANCELLED: DeliveryState.CANCELLED,
}


# Where a pre-empted programme goes next: resumed, or ended (played out, failed, cancelled).
_AFTER_RESUMABLE_PREEMPTION = frozenset(
    {DeliveryState.PLAYING, DeliveryState.COMPLETED, DeliveryState.FAILED, DeliveryState.CANCELLED}
)


def can_move(current: DeliveryState, new: DeliveryState, *, resumable: bool = False) -> bool:
    """Whether a delivery in `current` may move to `new`; a `resumable` one (a programme) may
    leave `preempted`, because the terminal resumes it."""
    if current is DeliveryState.PREEMPTED and resumable:
        return new in _AFTER_RESUMABLE_PREEMPTION
    if current in FINAL_STATES:
        return False
    return _RANK.get(new, _FINAL_RANK) > _RANK[current]
