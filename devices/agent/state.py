"""What the terminal answered, kept on disk so that a command played before a reboot (or a crash,
or a power cut) is not played again when the controller sends it once more after it."""

import json
import logging
import os
import tempfile
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from devices.messages import Ack

log = logging.getLogger(__name__)

_ACKS = TypeAdapter(list[Ack])


class AnsweredFile:
    """`answered.json` in the state directory: the core's `remembered()` acknowledgements."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "answered.json"

    def load(self) -> list[Ack]:
        """What was saved; nothing if there is no file, or if it cannot be read (said in the log:
        playing a command twice is better than never playing an alert again)."""
        try:
            return _ACKS.validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValidationError) as exc:
            log.error("cannot read %s (%s); starting with no memory of commands", self.path, exc)
            return []

    def save(self, acks: list[Ack]) -> None:
        """Replace the file at once: written beside it, flushed to the disk, then renamed over it, so
        a power cut leaves the old file or the new one, never half of one."""
        data = json.dumps([ack.model_dump(mode="json", exclude_none=True) for ack in acks]).encode()
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".answered-")
        try:
            with os.fdopen(descriptor, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
