"""Log setup for the command line: our lines readable, the embedded broker's chatter quiet."""

import logging


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("amqtt", "transitions", "uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("amqtt.client").setLevel(logging.ERROR)
