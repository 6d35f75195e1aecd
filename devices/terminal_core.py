"""The terminal's command state machine, without IO.

A terminal agent (the simulator, or the agent on a real loudspeaker) feeds it what arrives and what
its player does, and carries out the `Step` it answers: acknowledgements to publish, a command to
start playing, a command to stop. The rules:

- before anything else, a command or cancel must be signed by one of the controller's keys the
  terminal holds, and sent within `window` of the terminal's clock (devices/signing.py); one that
  is not is refused (`rejected` with the reason) and not remembered, so a forgery cannot spoil the
  genuine command of the same id; a copy of a command already answered is answered as before;
- a command id seen before is a duplicate (QoS 1 redelivers; the controller retries on the
  terminal's own topic): nothing new happens, the last acknowledgement for it is sent again;
- a command that has expired by the terminal's clock is rejected (`expired`);
- an update (`supersedes`) first ends the commands it replaces as a cancel would (`cancelled`,
  `by` the update), then is treated like any command: it takes the place of the one it replaces
  whatever their priorities (playing, or put aside if that one was a programme put aside);
- while idle, a command is received and started;
- while playing, a command of strictly higher priority pre-empts the current one (reported
  `preempted`, `by` the new id); an equal or lower one is rejected (`busy`);
- a pre-empted programme is put aside and resumed (reported `playing` again) when what pre-empted
  it is over, if it has not expired by then; other kinds are not resumed;
- a cancel stops its command if it is playing (or puts aside) and answers `cancelled` (`by` the
  cancel's id); a cancel for a command not seen yet is remembered, so the command never starts if
  it arrives later; a cancel for a command already over is answered with that command's final ack.
"""

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from devices.errors import PayloadError
from devices.messages import (
    DETAIL_MAX,
    FINAL_STAGES,
    Ack,
    AckReason,
    AckStage,
    Cancel,
    Command,
    decode_command,
    is_command_id,
)
from devices.signing import DEFAULT_WINDOW, KeySet, Refusal, refusal


@dataclass(frozen=True)
class Step:
    """What the agent must do now, in order: publish `acks`, stop `stop`, then start `start`."""

    acks: tuple[Ack, ...] = ()
    start: Command | None = None
    stop: str | None = None


@dataclass
class TerminalCore:
    """One terminal's memory of commands; `remember` bounds the de-duplication window."""

    terminal_id: str
    keys: KeySet
    """the controller's public keys this terminal trusts"""
    remember: int = 1024
    window: timedelta = DEFAULT_WINDOW
    clock_skew_s: float | None = None
    """this terminal's clock minus the controller's, from the last genuine command (for heartbeats)"""
    stale: int = 0
    """genuine-looking copies refused as sent too long ago (replays, or copies kept while away)"""
    current: Command | None = None
    suspended: list[Command] = field(default_factory=list)
    """pre-empted programmes, resumed highest priority first. Each was pre-empted by a strictly
    higher priority, and programmes have five (one per issuer level), so there are at most five."""
    _last_ack: OrderedDict[str, Ack] = field(default_factory=OrderedDict)

    def on_payload(self, payload: bytes, now: datetime) -> Step:
        """A command payload arrived. A payload that cannot be decoded is rejected if it has an id."""
        try:
            command = decode_command(payload)
        except PayloadError as exc:
            command_id = _salvage_id(payload)
            if command_id is None:
                return Step()
            previous = self._last_ack.get(command_id)
            if previous is not None:
                return Step(acks=(previous,))
            reason = (
                AckReason.UNSUPPORTED_VERSION
                if exc.reason == "unsupported_version"
                else AckReason.BAD_PAYLOAD
            )
            return Step(acks=(self._ack(command_id, AckStage.REJECTED, now, reason, exc.detail, keep=False),))
        refused = refusal(command, self.keys, now, self.window)
        if refused is Refusal.STALE:
            # A copy of one already answered is answered as before. Otherwise no answer: it may be
            # a genuine copy the broker kept while this terminal was away, and the controller sends
            # a fresh one when it comes back; a `rejected` now would end the delivery before that.
            self.stale += 1
            previous = self._last_ack.get(command.id)
            return Step(acks=(previous,) if previous is not None else ())
        if refused is not None:
            if command.id in self._last_ack:
                return Step()
            return Step(acks=(self._ack(command.id, AckStage.REJECTED, now, AckReason(refused), keep=False),))
        assert command.sent_at is not None
        self.clock_skew_s = round((now - command.sent_at).total_seconds(), 1)
        if isinstance(command, Cancel):
            return self.on_cancel(command, now)
        return self.on_command(command, now)

    def remembered(self) -> list[Ack]:
        """The last acknowledgement of each command remembered, oldest first: what an agent keeps on
        disk so that a command played before a reboot is not played again after it."""
        return list(self._last_ack.values())

    def recall(self, acks: list[Ack]) -> None:
        """Remember what `remembered` gave before a reboot."""
        for ack in acks[-self.remember :]:
            self._last_ack[ack.command_id] = ack

    def on_cancel(self, cancel: Cancel, now: datetime) -> Step:
        """Stop the cancelled command if it plays and answer `cancelled` for it (its final ack if over)."""
        ack, stopped = self._end(cancel.cancels, cancel.id, now)
        if not stopped:
            return Step(acks=(ack,))
        resumed = self._resume(now)
        return Step(acks=(ack,), stop=cancel.cancels, start=resumed)

    def on_command(self, command: Command, now: datetime) -> Step:
        previous = self._last_ack.get(command.id)
        if previous is not None:
            return Step(acks=(previous,))
        if now >= command.expires_at:
            return Step(acks=(self._ack(command.id, AckStage.REJECTED, now, AckReason.EXPIRED),))
        acks: list[Ack] = []
        stop = None
        replaces_aside = False
        for earlier in command.supersedes or ():
            replaces_aside |= any(c.id == earlier for c in self.suspended)
            ended, stopped = self._end(earlier, command.id, now)
            acks.append(ended)
            stop = earlier if stopped else stop
        current = self.current
        if current is None:
            self.current = command
            acks.append(self._ack(command.id, AckStage.RECEIVED, now))
            return Step(acks=tuple(acks), stop=stop, start=command)
        if command.priority > current.priority:
            self.current = command
            if current.resumable:
                self.suspended.append(current)
            acks.append(
                self._ack(current.id, AckStage.PREEMPTED, now, AckReason.HIGHER_PRIORITY, by=command.id)
            )
            acks.append(self._ack(command.id, AckStage.RECEIVED, now))
            return Step(acks=tuple(acks), stop=current.id, start=command)
        if replaces_aside and command.resumable:
            # The update of a programme put aside takes its place there, and resumes in its stead.
            self.suspended.append(command)
            acks.append(self._ack(command.id, AckStage.RECEIVED, now))
            return Step(acks=tuple(acks), stop=stop)
        acks.append(self._ack(command.id, AckStage.REJECTED, now, AckReason.BUSY, by=current.id))
        return Step(acks=tuple(acks), stop=stop)

    def on_started(self, command_id: str, now: datetime) -> Step:
        """The player began playing `command_id`."""
        return self._progress(command_id, AckStage.PLAYING, now)

    def on_finished(self, command_id: str, now: datetime) -> Step:
        """The player played `command_id` to the end; a programme put aside may resume."""
        step = self._progress(command_id, AckStage.COMPLETED, now)
        return self._release(command_id, step, now)

    def on_failed(self, command_id: str, now: datetime, detail: str) -> Step:
        """The player could not play `command_id` (download, checksum, decoder, amplifier)."""
        step = self._progress(command_id, AckStage.FAILED, now, AckReason.PLAYBACK_ERROR, detail)
        return self._release(command_id, step, now)

    def _progress(
        self,
        command_id: str,
        stage: AckStage,
        now: datetime,
        reason: AckReason | None = None,
        detail: str | None = None,
    ) -> Step:
        if self.current is None or self.current.id != command_id:
            return Step()
        return Step(acks=(self._ack(command_id, stage, now, reason, detail),))

    def _release(self, command_id: str, step: Step, now: datetime) -> Step:
        if self.current is None or self.current.id != command_id:
            return step
        self.current = None
        return Step(acks=step.acks, start=self._resume(now))

    def _end(self, command_id: str, by: str, now: datetime) -> tuple[Ack, bool]:
        """End a command because a cancel or an update `by` says so: the ack to send, and whether
        it was the one playing (the caller stops it)."""
        if self.current is not None and self.current.id == command_id:
            self.current = None
            return self._ack(command_id, AckStage.CANCELLED, now, by=by), True
        aside = next((c for c in self.suspended if c.id == command_id), None)
        if aside is not None:
            self.suspended.remove(aside)
            return self._ack(command_id, AckStage.CANCELLED, now, by=by), False
        previous = self._last_ack.get(command_id)
        if previous is not None and previous.stage in FINAL_STAGES:
            return previous, False
        return self._ack(command_id, AckStage.CANCELLED, now, by=by), False

    def _resume(self, now: datetime) -> Command | None:
        """The programme put aside to play next, if one has not expired; it becomes current."""
        self.suspended = [c for c in self.suspended if now < c.expires_at]
        if not self.suspended:
            return None
        self.current = self.suspended.pop(self.suspended.index(max(self.suspended, key=lambda c: c.priority)))
        return self.current

    def _ack(
        self,
        command_id: str,
        stage: AckStage,
        now: datetime,
        reason: AckReason | None = None,
        detail: str | None = None,
        by: str | None = None,
        keep: bool = True,
    ) -> Ack:
        """An acknowledgement, remembered as the command's last unless `keep` is False (a refusal
        of something unverified must not stand for the genuine command of that id)."""
        if detail is not None and len(detail) > DETAIL_MAX:
            detail = detail[: DETAIL_MAX - 1] + "…"
        ack = Ack(
            command_id=command_id,
            terminal_id=self.terminal_id,
            stage=stage,
            reason=reason,
            detail=detail,
            by=by,
            at=now,
        )
        if not keep:
            return ack
        self._last_ack[command_id] = ack
        self._last_ack.move_to_end(command_id)
        excess = len(self._last_ack) - self.remember
        if excess > 0:
            # What is playing or put aside must stay recognisable as a duplicate.
            held = {c.id for c in self.suspended}
            if self.current is not None:
                held.add(self.current.id)
            for oldest in [k for k in self._last_ack if k not in held][:excess]:
                del self._last_ack[oldest]
        return ack


def _salvage_id(payload: bytes) -> str | None:
    """The `id` of an undecodable command, if one can be read, so the terminal can say why it refused."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    command_id = data.get("id") if isinstance(data, dict) else None
    return command_id if is_command_id(command_id) else None
