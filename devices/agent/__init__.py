"""The program a real loudspeaker terminal runs (`cunxiang agent --config terminal.toml`).

Unlike the rest of `devices/`, this subpackage does IO: MQTT, HTTP downloads, files and the
player and speech processes. The rules it follows are `devices.terminal_core`'s, the same the
simulator drives, so the two cannot drift apart. See docs/agent.md.

- `config`: `terminal.toml`, parsed and checked;
- `link`: a terminal's MQTT session (will, birth, subscriptions, goodbye), shared with the simulator;
- `fetch`: downloading audio, resumable, checked by size and SHA-256, cached;
- `player`: speaking text and running the player command;
- `readings`: what the host can tell about itself, for heartbeats;
- `state`: what was answered, kept on disk across reboots;
- `agent`: the whole, carrying out what the core decides.
"""
