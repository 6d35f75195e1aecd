"""Log setup for the command line: our lines readable, the embedded broker's chatter quiet."""

import logging


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("transitions", "uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # amqtt logs a warning with a traceback for every PUBACK that takes over 5 s; under a
    # county-wide burst that is tens of thousands of lines that bury everything else.
    logging.getLogger("amqtt").setLevel(logging.ERROR)
