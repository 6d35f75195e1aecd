"""The terminal side of Cunxiang and the wire contract (protocol v1), with no IO of its own.

Everything here is shared by the controller, the simulator and a real terminal agent: topic builders
and parsers (`topics`), the messages that cross the wire (`messages`), the priority rule
(`priority`) and the terminal's command state machine (`terminal_core`). The one exception is
the `agent` subpackage: the program a real terminal runs, which does the IO around them.
`docs/protocol.md` is the human-readable form of this package; change both together.
"""

PROTOCOL_VERSION = 1
