"""Every kind of action lands in the audit trail with who, when, from where and what; an edited
record is then found by the API's check and by `cunxiang audit verify`."""

import asyncio
import os
import subprocess
import sys

from controller.accounts import Role
from tests.live import LiveServer, specs_in
from tests.test_audit import _tamper


async def test_actions_are_recorded_and_an_edited_record_is_detected(live: LiveServer) -> None:
    admin = await live.account("boss", Role.ADMIN)
    await live.register(specs_in(["421202100001"]))
    assert (
        await admin.put("/api/v1/groups/river", json={"name": "沿河", "regions": ["421202100"]})
    ).status_code == 201
    programme = await admin.post("/api/v1/programmes", json={"title": "农技", "text": "晚稻收割后及时翻耕。"})
    schedule = await admin.post(
        "/api/v1/schedules",
        json={
            "name": "早间农技",
            "programme_id": programme.json()["id"],
            "regions": ["421202100"],
            "start": "2030-01-01T06:30",
            "rrule": "FREQ=DAILY",
        },
    )
    assert schedule.status_code == 201, schedule.text
    sent = await admin.post(
        "/api/v1/broadcasts",
        json={"kind": "notice", "regions": ["421202100"], "text": "明早停水", "expires_in": 600},
    )
    assert (await admin.post(f"/api/v1/broadcasts/{sent.json()['id']}/cancel")).status_code == 202
    made = await admin.post(
        "/api/v1/accounts",
        json={"username": "wang", "role": "viewer", "region": "421202100", "password": "long-enough-pw"},
    )
    assert made.status_code == 201

    trail = (await admin.get("/api/v1/audit", params={"limit": 1000})).json()
    actions = [(r["action"], r["actor"]) for r in reversed(trail)]
    assert [a for a in actions if a[1] == "boss"] == [
        ("auth.login", "boss"),
        ("group.create", "boss"),
        ("programme.create", "boss"),
        ("schedule.create", "boss"),
        ("broadcast.create", "boss"),
        ("broadcast.cancel", "boss"),
        ("account.create", "boss"),
    ]
    assert any(a[0] == "terminal.register" and a[1].startswith("key:test-admin") for a in actions)
    assert all(r["source"] == "127.0.0.1" for r in trail if r["actor"] == "boss")
    cancels = (await admin.get("/api/v1/audit", params={"action": "broadcast.", "text": "明早停水"})).json()
    assert [r["action"] for r in cancels] == ["broadcast.create"]
    assert (await admin.get("/api/v1/audit/verify")).json()["ok"] is True

    township = await live.account("tw", Role.APPROVER, "421202101")
    theirs = (await township.get("/api/v1/audit")).json()
    assert [r["action"] for r in theirs] == ["auth.login"]  # their own sign-in; nothing of 421202100
    viewer = await live.account("viewer", Role.VIEWER)
    assert (await viewer.get("/api/v1/audit")).status_code == 403

    seq = next(r["seq"] for r in trail if r["action"] == "broadcast.create")
    _tamper(
        live.controller.engine,
        f"UPDATE audit_record SET detail = replace(detail, '明早停水', '明早停电') WHERE seq = {seq}",
    )
    check = (await admin.get("/api/v1/audit/verify")).json()
    assert check["ok"] is False and any(f"record {seq} was edited" in p for p in check["problems"])
    env = dict(os.environ, CUNXIANG_DATABASE_URL=live.settings.database_url)
    command = [sys.executable, "-m", "deploy.cli", "audit", "verify"]
    cli = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True)
    assert cli.returncode == 1 and f"record {seq} was edited" in cli.stdout + cli.stderr
