"""The `cunxiang` command."""

import argparse
import asyncio
import os
import sys
from pathlib import Path

from controller.settings import Settings, SettingsError, load_settings
from deploy.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cunxiang", description="Cunxiang (村响) county broadcast controller"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="broker, controller, API and a simulated county in one process")
    demo.add_argument("--port", type=int, default=8000, help="HTTP port (a free one if taken)")
    demo.add_argument("--region", default="421202", help="region to simulate (default 421202 咸安区)")
    demo.add_argument("--per-village", type=int, default=1, help="simulated terminals per village")
    demo.add_argument(
        "--playback",
        type=float,
        default=None,
        help="seconds each simulated playback takes (default: as long as the speech would)",
    )

    serve = commands.add_parser("serve", help="controller and API against the configured broker and database")
    serve.add_argument("--port", type=int, default=None, help="HTTP port (default CUNXIANG_HTTP_PORT, 8000)")
    serve.add_argument("--host", default=None, help="HTTP address (default CUNXIANG_HTTP_HOST, 127.0.0.1)")

    simulate = commands.add_parser("simulate", help="simulated terminals for every village under a region")
    simulate.add_argument("--region", default="421202")
    simulate.add_argument("--per-village", type=int, default=2)
    simulate.add_argument(
        "--broker", default=None, help="mqtt://host:port or mqtts://host:port (default CUNXIANG_MQTT_URL)"
    )
    simulate.add_argument(
        "--ca-file",
        type=Path,
        default=None,
        help="for mqtts://: the CA certificates to trust (default CUNXIANG_MQTT_CA_FILE, else the system's)",
    )
    simulate.add_argument(
        "--cert-file",
        type=Path,
        default=None,
        help="for a broker requiring client certificates: the terminals' (default CUNXIANG_MQTT_CERT_FILE)",
    )
    simulate.add_argument(
        "--key-file", type=Path, default=None, help="its key (default CUNXIANG_MQTT_KEY_FILE)"
    )
    simulate.add_argument(
        "--playback",
        type=float,
        default=None,
        help="seconds each playback takes (default: as long as the speech would)",
    )
    simulate.add_argument(
        "--register",
        metavar="API",
        default=None,
        help="register the terminals first with the controller at this URL",
    )
    simulate.add_argument(
        "--keys",
        type=Path,
        default=None,
        help="the controller's public key set, to verify its commands (default: keyset.json in "
        "CUNXIANG_SIGNING_KEY_DIR)",
    )
    simulate.add_argument(
        "--api-key",
        default=os.environ.get("CUNXIANG_API_KEY"),
        help="an administrator's API key, for --register (default CUNXIANG_API_KEY)",
    )
    simulate.add_argument(
        "--divisions", type=Path, default=None, help="divisions CSV (default: bundled 咸宁市)"
    )
    simulate.add_argument(
        "--scenario",
        type=Path,
        default=None,
        help="a TOML file of faults to play out (power loss, flapping, speaker faults...): "
        "see simulator/scenario.py and deploy/scenarios/",
    )

    agent = commands.add_parser(
        "agent", help="run a real loudspeaker terminal (see docs/agent.md and deploy/terminal.example.toml)"
    )
    agent.add_argument("--config", type=Path, required=True, help="the terminal's terminal.toml")

    regions = commands.add_parser("regions", help="administrative regions")
    regions_commands = regions.add_subparsers(dest="regions_command", required=True)
    load = regions_commands.add_parser(
        "load", help="load a code,name,level,parent_code CSV into the database"
    )
    load.add_argument("csv", type=Path)

    audit = commands.add_parser("audit", help="the tamper-evident audit trail (see docs/audit.md)")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser("verify", help="check that no audit record was edited or removed")
    verify.add_argument(
        "--expect-head",
        metavar="SEQ:HASH",
        default=None,
        help="a head noted earlier: it must still be there",
    )

    admin = commands.add_parser("admin", help="accounts and API keys, straight into the database")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    create = admin_commands.add_parser(
        "create", help="create an account (the first administrator); the password comes from standard input"
    )
    create.add_argument("--username", required=True)
    create.add_argument("--region", required=True, help="its home region code, e.g. 421202")
    create.add_argument("--role", choices=("viewer", "operator", "approver", "admin"), default="admin")
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input (no prompt)"
    )
    api_key = admin_commands.add_parser("api-key", help="create an API key for a machine client; prints it")
    api_key.add_argument("--name", required=True)
    api_key.add_argument("--region", required=True)
    api_key.add_argument("--role", choices=("viewer", "operator", "approver", "admin"), default="operator")

    deploy = commands.add_parser("deploy", help="files for running it for real")
    deploy_commands = deploy.add_subparsers(dest="deploy_command", required=True)
    acl = deploy_commands.add_parser(
        "mosquitto-acl",
        help="Mosquitto's password file and ACL from the terminal registry (per-terminal rights)",
    )
    acl.add_argument("--out", type=Path, default=Path("/etc/mosquitto"), help="directory to write them into")
    tls = deploy_commands.add_parser(
        "tls",
        help="a private CA (reused if in --out), the broker's certificate, clients' for mutual TLS",
    )
    tls.add_argument("--out", type=Path, required=True, help="directory for the CA, certificates and keys")
    tls.add_argument(
        "--host",
        action="append",
        default=[],
        help="a DNS name or IP address clients reach the broker at (repeatable); issues server.crt",
    )
    tls.add_argument(
        "--client", action="append", default=[], help="issue NAME.crt, a client certificate (repeatable)"
    )

    keys = commands.add_parser("keys", help="the controller's command-signing keys (see deploy/keys.py)")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    keys_commands.add_parser("export", help="print the public key set terminals must hold")
    rotate = keys_commands.add_parser("rotate", help="add a key that comes into force later, without a gap")
    rotate.add_argument("--in", dest="after", default="7d", help="when the new key comes into force (7d)")
    rotate.add_argument(
        "--overlap", default="1d", help="how long the current key stays valid after that (1d)"
    )

    bench = commands.add_parser("bench", help="benchmarks (see docs/performance.md)")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    fanout = bench_commands.add_parser("fanout", help="time from POST to every terminal's acknowledgement")
    fanout.add_argument("--terminals", type=int, default=1000)
    fanout.add_argument("--broker", choices=("embedded", "mosquitto"), default="embedded")
    fanout.add_argument(
        "--mosquitto-url", default=None, help="use this running Mosquitto instead of starting one"
    )
    fanout.add_argument("--playback", type=float, default=1.0)
    fanout.add_argument("--json", type=Path, default=None)
    fanout.add_argument(
        "--terminal-impl",
        choices=("lean", "aiomqtt"),
        default="lean",
        help="simulated terminals: paho-mqtt clients on one selector loop, or the aiomqtt simulator",
    )
    fanout.add_argument(
        "--terminal-processes",
        type=int,
        default=1,
        help="processes the simulated terminals are spread over (default 1: the simulation takes at "
        "most one of the cores the controller and the broker need)",
    )
    fanout.add_argument(
        "--poll",
        choices=("bench", "public"),
        default="bench",
        help="progress from the bench-only counts endpoint, or the public report every 0.2 s",
    )
    ingest = bench_commands.add_parser(
        "ingest", help="acknowledgements the controller persists per second, from a flood through Mosquitto"
    )
    ingest.add_argument("--acks", type=int, default=10_000, help="terminals (each sends 3 acknowledgements)")
    ingest.add_argument(
        "--hold",
        action="store_true",
        help="pause the controller while the acks are published, so it drains a standing queue",
    )
    ingest.add_argument("--publishers", type=int, default=2, help="publisher processes")
    ingest.add_argument(
        "--profile", type=Path, default=None, help="py-spy profile of the controller to this file"
    )
    ingest.add_argument("--json", type=Path, default=None)
    heartbeats = bench_commands.add_parser(
        "heartbeats", help="controller CPU and database writes per heartbeat, from a flood through Mosquitto"
    )
    heartbeats.add_argument("--terminals", type=int, default=10_000)
    heartbeats.add_argument("--heartbeats", type=int, default=100_000)
    heartbeats.add_argument("--publishers", type=int, default=1, help="publisher processes")
    heartbeats.add_argument(
        "--fault-share",
        type=float,
        default=0.0,
        help="share of heartbeats (at most 0.25) reporting a fault that the terminal's next one clears",
    )
    heartbeats.add_argument("--rate", type=float, default=0.0, help="heartbeats a second in all (0: flood)")
    heartbeats.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measured after")
    heartbeats.add_argument("--repeat", type=int, default=1, help="runs, each with a fresh controller")
    heartbeats.add_argument("--profile", type=Path, default=None, help="py-spy profile of the flood")
    heartbeats.add_argument("--json", type=Path, default=None)
    schedules = bench_commands.add_parser(
        "schedules",
        help="how close to their time scheduled programmes are published (burst, spread, restart)",
    )
    schedules.add_argument("--schedules", type=int, default=1000, help="schedules, one run each")
    schedules.add_argument(
        "--scenarios",
        default="burst,spread,restart-term-45,restart-term-10,restart-kill-45,restart-kill-10",
        help="comma-separated; restart-<term|kill>-<s>: stop the controller s seconds before the runs",
    )
    schedules.add_argument("--repeat", type=int, default=1, help="runs of each scenario")
    schedules.add_argument("--lead-s", type=float, default=50.0, help="first run this long after saving")
    schedules.add_argument("--spread-s", type=float, default=300.0, help="spread: runs over this many s")
    schedules.add_argument("--per-village", type=int, default=2, help="terminals registered per village")
    schedules.add_argument(
        "--profile", type=Path, default=None, help="py-spy profiles to FILE-<scenario>-<n>.txt"
    )
    schedules.add_argument("--json", type=Path, default=None)

    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging(settings.log_level)

    try:
        return _run(args, settings)
    except KeyboardInterrupt:
        # Ctrl-C is how an operator stops `demo` and `serve`; uvicorn has shut down cleanly by now.
        return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "demo":
        from deploy.demo import run_demo

        return asyncio.run(run_demo(settings, args.port, args.region, args.per_village, args.playback))
    if args.command == "serve":
        from deploy.serve import run_server

        return asyncio.run(run_server(settings, host=args.host, port=args.port))
    if args.command == "simulate":
        from deploy.simulate import run_simulator

        return asyncio.run(run_simulator(settings, args))
    if args.command == "agent":
        from devices.agent.agent import run_agent
        from devices.agent.config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        return asyncio.run(run_agent(config))
    if args.command == "admin":
        from deploy.admin import create_admin, create_api_key

        if args.admin_command == "create":
            return create_admin(settings, args.username, args.region, args.role, args.password_stdin)
        return create_api_key(settings, args.name, args.region, args.role)
    if args.command == "keys":
        from deploy.keys import export_keys, rotate_keys

        if args.keys_command == "export":
            return export_keys(settings)
        return rotate_keys(settings, args.after, args.overlap)
    if args.command == "deploy" and args.deploy_command == "tls":
        from deploy.tls import run_tls

        return run_tls(args.out, args.host, args.client)
    if args.command == "deploy":
        from deploy.broker_access import run_mosquitto_acl

        return run_mosquitto_acl(settings, args.out)
    if args.command == "regions":
        from deploy.serve import load_regions

        return load_regions(settings, args.csv)
    if args.command == "audit":
        from deploy.audit import run_verify

        return run_verify(settings, args.expect_head)
    if args.bench_command == "heartbeats":
        from bench.heartbeats import run_heartbeats_cli

        return int(run_heartbeats_cli(args))
    if args.bench_command == "schedules":
        from bench.schedules import run_schedules_cli

        return run_schedules_cli(args)
    if args.bench_command == "ingest":
        from bench.ingest import run_ingest_cli

        return int(run_ingest_cli(args))
    from bench.fanout import run_fanout_cli

    return int(run_fanout_cli(args))


if __name__ == "__main__":
    sys.exit(main())
