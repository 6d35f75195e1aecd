"""Signed commands and replay protection: on the terminal's state machine (shared by the simulator,
the bench's terminals and the agent), and end to end through a real broker, with key rotation."""

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.signing_keys import SigningKeys
from devices.messages import Ack, AckReason, AckStage, Cancel, decode, encode
from devices.signing import KeySet, Signer, refusal
from devices.terminal_core import TerminalCore
from tests.builders import TEST_KEYS, TEST_SIGNER, make_command, signed
from tests.live import LiveServer, eventually, specs_in

NOW = datetime(2026, 11, 27, 5, 0, 1, tzinfo=UTC)
FORGER = Signer("test-key", Ed25519PrivateKey.from_private_bytes(bytes(32)))
"""someone else's key, claiming to be the controller's"""


def core() -> TerminalCore:
    return TerminalCore("t-1", TEST_KEYS, window=timedelta(minutes=5))


def refused_with(step_acks: tuple[object, ...]) -> str | None:
    [ack] = step_acks
    assert getattr(ack, "stage") is AckStage.REJECTED  # noqa: B009
    return str(getattr(ack, "reason"))  # noqa: B009


def test_a_genuine_fresh_command_is_played() -> None:
    step = core().on_payload(signed(make_command(), NOW), NOW)
    assert step.start is not None and step.acks[0].stage is AckStage.RECEIVED


def test_unsigned_forged_and_unknown_key_commands_are_refused_with_the_reason() -> None:
    command = make_command()
    unsigned = encode(command.model_copy(update={"sent_at": NOW}))
    forged = encode(FORGER.sign(command, NOW))
    stranger = encode(Signer("elsewhere", Ed25519PrivateKey.generate()).sign(command, NOW))
    tampered = json.loads(signed(command, NOW))
    tampered["content"]["text"] = "水库垮坝，立即撤离"  # a signed notice turned into panic
    for payload, reason in (
        (unsigned, AckReason.UNSIGNED),
        (forged, AckReason.BAD_SIGNATURE),
        (stranger, AckReason.UNKNOWN_KEY),
        (json.dumps(tampered).encode(), AckReason.BAD_SIGNATURE),
    ):
        step = core().on_payload(payload, NOW)
        assert step.start is None and refused_with(step.acks) == reason


def test_a_key_is_honoured_only_while_it_is_in_force() -> None:
    retired = KeySet(keys=[TEST_KEYS.keys[0].model_copy(update={"valid_until": NOW - timedelta(hours=1)})])
    future = KeySet(keys=[TEST_KEYS.keys[0].model_copy(update={"valid_from": NOW + timedelta(hours=1)})])
    for keys in (retired, future):
        step = TerminalCore("t-1", keys).on_payload(signed(make_command(), NOW), NOW)
        assert refused_with(step.acks) == AckReason.KEY_NOT_VALID


def test_a_copy_sent_outside_the_window_is_not_played_nor_answered_unless_already_answered() -> None:
    command = make_command(expires_at=NOW + timedelta(hours=2))
    terminal = core()
    # A recording played back an hour later: not played, and no `rejected` either (a copy the
    # broker kept while the terminal was away looks the same; the controller sends a fresh one).
    late = terminal.on_payload(signed(command, NOW), NOW + timedelta(hours=1))
    assert late.start is None and late.acks == () and terminal.stale == 1
    ahead = terminal.on_payload(signed(command, NOW + timedelta(minutes=10)), NOW)
    assert ahead.start is None and ahead.acks == ()
    played = terminal.on_payload(signed(command, NOW), NOW)
    assert played.start is not None
    again = terminal.on_payload(signed(command, NOW), NOW + timedelta(hours=1))
    assert again.start is None and again.acks == played.acks  # answered as before, not replayed


def test_a_forgery_cannot_spoil_the_genuine_command_of_the_same_id() -> None:
    command = make_command()
    terminal = core()
    assert refused_with(terminal.on_payload(encode(FORGER.sign(command, NOW)), NOW).acks) == "bad_signature"
    genuine = terminal.on_payload(signed(command, NOW), NOW)
    assert genuine.start is not None
    # ...and a forgery of a command being played is not answered at all, so it cannot end it.
    assert terminal.on_payload(encode(FORGER.sign(command, NOW)), NOW).acks == ()
    assert terminal.current is not None and terminal.current.id == command.id


def test_a_forged_cancel_does_not_stop_the_alert() -> None:
    command = make_command()
    terminal = core()
    terminal.on_payload(signed(command, NOW), NOW)
    terminal.on_started(command.id, NOW)
    cancel = Cancel(id="cancel-0001", op="cancel", cancels=command.id, issuer_region="421202", issued_at=NOW)
    step = terminal.on_payload(encode(FORGER.sign(cancel, NOW)), NOW)
    assert step.stop is None and terminal.current is not None
    assert terminal.on_payload(signed(cancel, NOW), NOW).stop == command.id


def test_what_was_played_is_remembered_across_a_reboot() -> None:
    command = make_command()
    before = core()
    before.on_payload(signed(command, NOW), NOW)
    before.on_started(command.id, NOW)
    before.on_finished(command.id, NOW)
    after = core()
    after.recall(before.remembered())
    step = after.on_payload(signed(command, NOW + timedelta(seconds=30)), NOW + timedelta(seconds=30))
    assert step.start is None and step.acks[0].stage is AckStage.COMPLETED


def test_the_signature_covers_the_canonical_bytes_however_the_json_was_rewritten() -> None:
    message = TEST_SIGNER.sign(make_command(), NOW)
    rewritten = json.loads(encode(message))
    rewritten["issued_at"] = rewritten["issued_at"].replace("Z", "+00:00")
    reordered = json.dumps(dict(reversed(list(rewritten.items()))), ensure_ascii=True).encode()
    assert core().on_payload(reordered, NOW).start is not None
    assert refusal(message, TEST_KEYS, NOW, timedelta(minutes=5)) is None


async def test_a_command_forged_on_the_broker_is_refused_by_every_terminal(live: LiveServer) -> None:
    specs = specs_in(["421202100001", "421202100004"])
    await live.register(specs)
    broker = live.controller.bus
    assert broker is not None
    refusals: list[Ack] = []

    async def watch(spy: aiomqtt.Client) -> None:
        async for message in spy.messages:
            ack = decode(Ack, bytes(message.payload))
            if ack.command_id == "forged-command-1":
                refusals.append(ack)

    async with (
        live.fleet(specs),
        aiomqtt.Client(broker.address.host, broker.address.port) as spy,
        aiomqtt.Client(broker.address.host, broker.address.port) as attacker,
    ):
        await eventually(lambda: all(live.controller.presence_of(s.terminal_id) == "online" for s in specs))
        await spy.subscribe(f"{live.topics.root}/terminal/+/ack", qos=1)
        watching = asyncio.create_task(watch(spy))
        now = datetime.now(UTC)
        # Signed in the name of the controller's own key, with another private key.
        impostor = Signer(live.controller.keys.signer(now).kid, Ed25519PrivateKey.generate())
        forged = impostor.sign(make_command(id="forged-command-1", issued_at=now), now)
        await attacker.publish(live.topics.region_command("421202"), encode(forged), qos=1)
        genuine = await live.send(kind="notice", regions=["421202100"], text="明早停水", expires_in=300)
        report = await live.report_when(genuine["id"], lambda r: r["state"] == "finished")
        await eventually(lambda: len(refusals) == 2)
        watching.cancel()
    assert report["counts"]["completed"] == 2
    assert sorted(a.terminal_id for a in refusals) == sorted(s.terminal_id for s in specs)
    assert {(a.stage, a.reason) for a in refusals} == {(AckStage.REJECTED, AckReason.BAD_SIGNATURE)}


async def test_rotating_the_key_loses_no_alert(live: LiveServer) -> None:
    specs = specs_in(["421202100001", "421202100004"])
    await live.register(specs)
    keys: SigningKeys = live.controller.keys
    async with live.fleet(specs) as fleet:
        await eventually(lambda: all(live.controller.presence_of(s.terminal_id) == "online" for s in specs))
        switch = datetime.now(UTC) + timedelta(seconds=2)
        new = await asyncio.to_thread(keys.rotate, switch, timedelta(seconds=1))
        for terminal in fleet.terminals:  # the new key set reaches the terminals before the switch
            terminal.core.keys = keys.keyset()
        before = await live.send(kind="notice", regions=["421202100"], text="旧密钥", expires_in=300)
        await asyncio.sleep((switch - datetime.now(UTC)).total_seconds() + 1.5)  # past the overlap too
        after = await live.send(kind="notice", regions=["421202100"], text="新密钥", expires_in=300)
        for sent in (before, after):
            report = await live.report_when(sent["id"], lambda r: r["state"] == "finished")
            assert report["counts"]["completed"] == 2
    old, newest = keys.keyset().keys
    assert newest.kid == new.kid and old.valid_until == switch + timedelta(seconds=1)
    assert keys.signer(datetime.now(UTC)).kid == new.kid


def test_keys_rotate_and_export_on_the_command_line(tmp_path: Path) -> None:
    env = dict(os.environ, CUNXIANG_SIGNING_KEY_DIR=str(tmp_path / "keys"))

    def cunxiang(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "deploy.cli", "keys", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    first = KeySet.model_validate_json(cunxiang("export").stdout)
    rotated = cunxiang("rotate", "--in", "7d", "--overlap", "1d")
    assert rotated.returncode == 0, rotated.stderr
    both = KeySet.model_validate_json(rotated.stdout)
    assert both.keys[0].kid == first.keys[0].kid and len(both.keys) == 2
    old, new = both.keys
    assert old.valid_until == new.valid_from + timedelta(days=1)
    assert oct((tmp_path / "keys" / f"{new.kid}.key").stat().st_mode & 0o777) == "0o600"
    assert cunxiang("rotate", "--in", "soon").returncode == 2


async def test_each_terminal_reports_its_clock_skew_and_the_api_shows_it(live: LiveServer) -> None:
    specs = specs_in(["421202100001"])
    await live.register(specs)
    async with live.fleet(specs) as fleet:
        await eventually(lambda: live.controller.presence_of(specs[0].terminal_id) == "online")
        sent = await live.send(kind="notice", regions=["421202100001"], text="对时", expires_in=300)
        await live.report_when(sent["id"], lambda r: r["state"] == "finished")
        terminal = fleet.terminals[0]
        terminal.set_condition(terminal.condition)  # a heartbeat now, rather than in 30 s

        async def reported() -> bool:
            found = (await live.http.get(f"/api/v1/terminals/{specs[0].terminal_id}")).json()
            telemetry = found["telemetry"] or {}
            return telemetry.get("clock_skew_s") is not None

        await eventually(reported)
    found = (await live.http.get(f"/api/v1/terminals/{specs[0].terminal_id}")).json()
    assert abs(found["telemetry"]["clock_skew_s"]) < 5  # one machine: network delay only


def test_bench_terminals_sharing_verification_answer_as_each_would_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import devices.terminal_core
    from bench.lean import share_command_verification

    original = refusal
    monkeypatch.setattr(devices.terminal_core, "refusal", original)  # restored after the test
    share_command_verification()
    shared = getattr(devices.terminal_core, "refusal")  # noqa: B009
    assert shared is not original
    window = timedelta(minutes=5)
    genuine = TEST_SIGNER.sign(make_command(), NOW)
    forged = FORGER.sign(make_command(), NOW)
    unsigned = make_command()
    for message in (genuine, forged, unsigned):
        for now in (NOW, NOW + timedelta(minutes=4), NOW + timedelta(minutes=6), NOW - timedelta(minutes=6)):
            for _ in range(2):  # the second time from the memo
                assert shared(message, TEST_KEYS, now, window) == original(message, TEST_KEYS, now, window)
    other_keys = KeySet(keys=[key.model_copy(update={"kid": "other"}) for key in TEST_KEYS.keys])
    assert (
        shared(genuine, other_keys, NOW, window)
        == original(genuine, other_keys, NOW, window)
        == "unknown_key"
    )
