"""The delivery tracker's bookkeeping for programmes (resume) and updates (supersede), driven by hand."""

from datetime import UTC, datetime, timedelta

from controller.delivery import DeliveryState
from controller.metrics import Metrics
from controller.models import BroadcastState
from controller.tracker import DeliveryTracker, LiveBroadcast
from controller.writer import DbWriter
from devices.messages import Ack, AckReason, AckStage

AT = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)
EXPIRES = AT + timedelta(minutes=10)
BY = "20261127T050100-aaaaaaaaaaaa"


def tracker(writer: DbWriter) -> DeliveryTracker:
    return DeliveryTracker(writer, Metrics(), playback_grace=timedelta(minutes=10))


def live(resumable: bool) -> LiveBroadcast:
    return LiveBroadcast(
        id="20261127T050000-bbbbbbbbbbbb",
        expires_at=EXPIRES,
        regions=["421202100001"],
        payload=b"{}",
        states={"t-1": DeliveryState.PENDING, "t-2": DeliveryState.PENDING},
        resumable=resumable,
    )


def ack(broadcast: LiveBroadcast, terminal: str, stage: AckStage, **kwargs: object) -> Ack:
    return Ack(command_id=broadcast.id, terminal_id=terminal, stage=stage, at=AT, **kwargs)


def preempt(t: DeliveryTracker, broadcast: LiveBroadcast, terminal: str) -> None:
    t.on_ack(ack(broadcast, terminal, AckStage.PLAYING), AT)
    t.on_ack(ack(broadcast, terminal, AckStage.PREEMPTED, reason=AckReason.HIGHER_PRIORITY, by=BY), AT)


async def test_a_preempted_programme_stays_open_and_completes_when_resumed(writer: DbWriter) -> None:
    t, programme = tracker(writer), live(resumable=True)
    t.track(programme, AT)
    preempt(t, programme, "t-1")
    t.on_ack(ack(programme, "t-2", AckStage.COMPLETED), AT)
    assert programme.open == 1 and t.find(programme.id) is programme
    t.on_ack(ack(programme, "t-1", AckStage.PLAYING), AT)
    t.on_ack(ack(programme, "t-1", AckStage.COMPLETED), AT)
    assert programme.states["t-1"] is DeliveryState.COMPLETED
    assert t.find(programme.id) is None and programme.state is BroadcastState.FINISHED


async def test_a_programme_still_preempted_at_expiry_ends_preempted(writer: DbWriter) -> None:
    t, programme = tracker(writer), live(resumable=True)
    t.track(programme, AT)
    preempt(t, programme, "t-1")
    t.on_ack(ack(programme, "t-2", AckStage.COMPLETED), AT)
    t.sweep(EXPIRES)
    assert programme.states["t-1"] is DeliveryState.PREEMPTED
    assert t.find(programme.id) is None and programme.state is BroadcastState.FINISHED


async def test_a_preempted_notice_is_final_at_once(writer: DbWriter) -> None:
    t, notice = tracker(writer), live(resumable=False)
    t.track(notice, AT)
    preempt(t, notice, "t-1")
    assert notice.open == 1
    t.on_ack(ack(notice, "t-1", AckStage.PLAYING), AT)
    assert notice.states["t-1"] is DeliveryState.PREEMPTED


async def test_a_superseded_broadcast_is_never_resent_and_ends_as_terminals_report(writer: DbWriter) -> None:
    t, old = tracker(writer), live(resumable=False)
    t.track(old, AT)
    t.mark_sent(old, None, AT)
    assert old.retries
    t.supersede(old, AT)
    assert old.retries == {} and t.unfinished(AT) == [(old, [])] and t.unfinished_for("t-1", AT) == []
    assert t.due_retries(AT + timedelta(hours=1)) == []
    for terminal in ("t-1", "t-2"):
        t.on_ack(ack(old, terminal, AckStage.CANCELLED, by=BY), AT)
    assert t.find(old.id) is None and old.state is BroadcastState.SUPERSEDED
