"""Provisioning: registering terminals (JSON and CSV), their MQTT credentials, decommissioning."""

import getpass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from sqlmodel import Session

from controller.credentials import mosquitto_hash, verify
from controller.embedded_broker import free_port
from controller.models import Terminal
from deploy.mosquitto import mosquitto_binary, run_mosquitto, stop_process
from tests.live import LiveServer

VILLAGE = "421202107001"
OTHER_VILLAGE = "421202107002"


async def stored(live: LiveServer, terminal_id: str) -> Terminal:
    def read(session: Session) -> Terminal:
        terminal = session.get(Terminal, terminal_id)
        assert terminal is not None
        return terminal

    return await live.controller.writer.call(read)


async def register(live: LiveServer, body: Any) -> Any:
    response = await live.http.post("/api/v1/terminals", json=body)
    assert response.status_code == 200, response.text
    return response.json()


SPEAKER: dict[str, Any] = {
    "id": "gh-001",
    "region": VILLAGE,
    "kind": "ip_column_speaker",
    "name": "柏墩社区广场",
    "latitude": 29.7417,
    "longitude": 114.3228,
    "installed_on": "2025-04-18",
    "notes": "立杆 6 m，朝向东南",
}


async def test_a_new_terminal_gets_credentials_once_and_only_a_hash_is_stored(live: LiveServer) -> None:
    first = await register(live, [SPEAKER])
    assert first["created"] == 1 and first["updated"] == 0
    [credentials] = first["credentials"]
    assert credentials["terminal_id"] == credentials["username"] == "gh-001"
    assert len(credentials["secret"]) >= 32
    terminal = await stored(live, "gh-001")
    assert terminal.secret_hash is not None and terminal.secret_hash.startswith("$7$")
    assert credentials["secret"] not in terminal.secret_hash
    assert verify(credentials["secret"], terminal.secret_hash)
    assert (terminal.latitude, terminal.longitude, str(terminal.installed_on)) == (
        29.7417,
        114.3228,
        "2025-04-18",
    )

    again = await register(live, [SPEAKER])
    assert again == {"created": 0, "updated": 0, "credentials": []}
    moved = await register(live, [SPEAKER | {"name": "柏墩社区村委会"}])
    assert moved["updated"] == 1 and moved["credentials"] == []
    assert (await stored(live, "gh-001")).secret_hash == terminal.secret_hash

    detail = (await live.http.get("/api/v1/terminals/gh-001")).json()
    assert detail["name"] == "柏墩社区村委会" and detail["kind"] == "ip_column_speaker"
    assert "secret" not in str(detail) and detail["credentials_issued_at"] is not None


async def test_new_credentials_replace_the_old_secret(live: LiveServer) -> None:
    old = (await register(live, [SPEAKER]))["credentials"][0]["secret"]
    response = await live.http.post("/api/v1/terminals/gh-001/credentials")
    assert response.status_code == 200
    new = response.json()["secret"]
    stored_hash = (await stored(live, "gh-001")).secret_hash
    assert stored_hash is not None and verify(new, stored_hash) and not verify(old, stored_hash)
    assert (await live.http.post("/api/v1/terminals/nobody/credentials")).status_code == 404


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"latitude": 91}, "less than or equal to 90"),
        ({"longitude": None}, "both latitude and longitude"),
        ({"kind": "siren"}, "string should match pattern"),
        ({"installed_on": "2025-13-01"}, "valid date"),
        ({"region": "421202199999"}, "unknown region code(s): 421202199999"),
    ],
)
async def test_a_bad_terminal_description_is_refused_with_the_reason(
    live: LiveServer, change: dict[str, Any], message: str
) -> None:
    response = await live.http.post("/api/v1/terminals", json=[SPEAKER | change])
    assert response.status_code == 422
    assert message.lower() in response.text.lower()


CSV = f"""id,region,kind,name,latitude,longitude,installed_on,notes
gh-101,{VILLAGE},outdoor_speaker,村口,29.74,114.32,2024-05-01,
gh-102,{VILLAGE},indoor_receiver,村委会,,,,"室内, 二楼"
gh-103,{OTHER_VILLAGE},fm_relay,,,,2023-11-30,调频 87.6
"""


async def test_terminals_are_registered_in_bulk_from_csv(live: LiveServer) -> None:
    response = await live.http.post(
        "/api/v1/terminals/import", content=CSV.encode(), headers={"content-type": "text/csv"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["created"] == 3 and [c["terminal_id"] for c in body["credentials"]] == [
        "gh-101",
        "gh-102",
        "gh-103",
    ]
    assert (await stored(live, "gh-102")).notes == "室内, 二楼"
    listed = (await live.http.get("/api/v1/terminals", params={"region": "421202107"})).json()
    assert listed["total"] == 3


async def test_a_csv_with_bad_lines_names_each_and_registers_nothing(live: LiveServer) -> None:
    bad = CSV + "gh-104,4212021070,outdoor_speaker\n" + f"gh-105,{VILLAGE},loudhailer\n" + "gh-106\n"
    response = await live.http.post(
        "/api/v1/terminals/import", content=bad.encode(), headers={"content-type": "text/csv"}
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "line 5: region" in detail and "line 6: kind" in detail and "line 7: region" in detail
    assert (await live.http.get("/api/v1/terminals")).json()["total"] == 0
    no_header = await live.http.post(
        "/api/v1/terminals/import", content=b"gh-1,421202107001\n", headers={"content-type": "text/csv"}
    )
    assert no_header.status_code == 422 and "header must name id and region" in no_header.text


async def test_a_decommissioned_terminal_is_not_targeted_but_its_history_stays(live: LiveServer) -> None:
    await register(live, [SPEAKER, SPEAKER | {"id": "gh-002"}])
    before = await live.send(kind="notice", regions=[VILLAGE], text="之前", expires_in=60)
    assert before["terminals"] == 2
    assert (await live.http.delete("/api/v1/terminals/gh-001")).status_code == 204
    assert (await live.http.delete("/api/v1/terminals/gh-001")).status_code == 404
    assert (await live.http.get("/api/v1/terminals/gh-001")).status_code == 404
    assert [t["id"] for t in (await live.http.get("/api/v1/terminals")).json()["items"]] == ["gh-002"]
    after = await live.send(kind="notice", regions=[VILLAGE], text="之后", expires_in=60)
    assert after["terminals"] == 1
    single = await live.http.post(
        "/api/v1/broadcasts", json={"kind": "notice", "terminals": ["gh-001"], "text": "x", "expires_in": 60}
    )
    assert single.status_code == 422 and "unknown terminal(s): gh-001" in single.text
    report = await live.report(before["id"])
    assert report["terminals"] == 2 and sum(v["count"] for v in report["not_played"]) == 2
    terminal = await stored(live, "gh-001")
    assert terminal.decommissioned_at is not None and terminal.secret_hash is None

    back = await register(live, [SPEAKER])
    assert back["created"] == 1 and back["credentials"][0]["terminal_id"] == "gh-001"
    assert (await live.http.get("/api/v1/terminals/gh-001")).status_code == 200


async def test_terminal_detail_lists_its_last_broadcasts_and_how_each_went(live: LiveServer) -> None:
    await register(live, [SPEAKER])
    sent = [
        await live.send(kind="notice", terminals=["gh-001"], text=f"第{n}条", expires_in=60) for n in range(3)
    ]
    detail = (await live.http.get("/api/v1/terminals/gh-001", params={"broadcasts": 2})).json()
    assert [b["broadcast_id"] for b in detail["broadcasts"]] == [sent[2]["id"], sent[1]["id"]]
    assert detail["broadcasts"][0]["text"] == "第2条" and detail["broadcasts"][0]["state"] in (
        "pending",
        "sent",
    )


@pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")
async def test_mosquitto_accepts_the_secret_against_the_stored_hash_and_refuses_others(
    tmp_path: Path,
) -> None:
    secret = "correct-horse-battery-staple-0123"
    (tmp_path / "passwords").write_text(f"gh-001:{mosquitto_hash(secret)}\n", encoding="utf-8")
    port = free_port()
    # Started as root, Mosquitto would switch to its own user, who cannot read pytest's directory.
    config = (
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {tmp_path / 'passwords'}\n"
        f"user {getpass.getuser()}\n"
    )
    process = run_mosquitto(config, tmp_path, port)
    try:
        async with aiomqtt.Client("127.0.0.1", port, username="gh-001", password=secret) as client:
            await client.publish("hello", b"x", qos=1)
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", port, username="gh-001", password=secret + "x"):
                pass
    finally:
        stop_process(process)
