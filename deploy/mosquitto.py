"""Finding a Mosquitto installation (Debian puts the broker in /usr/sbin, outside most users' PATH)."""

import os
import shutil

MOSQUITTO_PLACES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def mosquitto_binary() -> str | None:
    """The path of the `mosquitto` broker, or None when it is not installed."""
    return shutil.which("mosquitto") or next((p for p in MOSQUITTO_PLACES if os.access(p, os.X_OK)), None)
