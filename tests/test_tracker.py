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
        issued_at=AT,
        expires_at=EXPIRES,
        priority=1 if resumable else 12,
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


async def test_a_repeated_ack_with_its_original_time_is_accepted_hours_later(writer: DbWriter) -> None:
    t, notice = tracker(writer), live(resumable=False)
    t.track(notice, AT)
    late = AT + timedelta(hours=5)
    assert t.on_ack(ack(notice, "t-1", AckStage.COMPLETED), late) is None
    assert notice.states["t-1"] is DeliveryState.COMPLETED


async def test_an_ack_stamped_before_the_command_existed_or_in_the_future_is_absurd(writer: DbWriter) -> None:
    t, notice = tracker(writer), live(resumable=False)
    t.track(notice, AT)
    past = Ack(command_id=notice.id, terminal_id="t-1", stage=AckStage.RECEIVED, at=AT - timedelta(days=2))
    future = Ack(command_id=notice.id, terminal_id="t-1", stage=AckStage.RECEIVED, at=AT + timedelta(days=2))
    assert t.on_ack(past, AT) == t.on_ack(future, AT) == "absurd_timestamp"
    assert notice.states["t-1"] is DeliveryState.PENDING


async def test_a_preempted_programme_does_not_confirm_its_cancel(writer: DbWriter) -> None:
    t, programme = tracker(writer), live(resumable=True)
    t.track(programme, AT)
    t.mark_sent(programme, None, AT)
    t.cancel(programme, b"cancel", "20261127T050200-cccccccccccc", AT)
    assert programme.owed_cancel == {"t-1", "t-2"}
    t.on_ack(ack(programme, "t-1", AckStage.PREEMPTED, reason=AckReason.HIGHER_PRIORITY, by=BY), AT)
    assert "t-1" in programme.owed_cancel and t.find(programme.id) is programme
    t.on_ack(ack(programme, "t-1", AckStage.CANCELLED, by=BY), AT)
    t.on_ack(ack(programme, "t-2", AckStage.CANCELLED, by=BY), AT)
    assert t.find(programme.id) is None and programme.state is BroadcastState.CANCELLED


async def test_an_ack_for_the_update_ends_the_superseded_delivery_even_if_its_own_ack_was_lost(
    writer: DbWriter,
) -> None:
    t, old = tracker(writer), live(resumable=False)
    t.track(old, AT)
    t.on_ack(ack(old, "t-1", AckStage.PLAYING), AT)
    new = LiveBroadcast(
        id=BY,
        issued_at=AT,
        expires_at=EXPIRES,
        priority=12,
        regions=["421202100001"],
        payload=b"{}",
        states={"t-1": DeliveryState.PENDING, "t-2": DeliveryState.PENDING},
        supersedes=[old.id],
    )
    t.track(new, AT)
    t.supersede(old, AT)
    t.on_ack(Ack(command_id=BY, terminal_id="t-1", stage=AckStage.RECEIVED, at=AT), AT)
    assert old.states["t-1"] is DeliveryState.CANCELLED
    expired = Ack(command_id=BY, terminal_id="t-2", stage=AckStage.REJECTED, reason=AckReason.EXPIRED, at=AT)
    t.on_ack(expired, AT)
    assert old.states["t-2"] is DeliveryState.PENDING
