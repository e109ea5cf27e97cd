"""Console logging for fedlora's own loggers, idempotent (safe in every Ray worker)."""

from __future__ import annotations

import logging


def setup_logging(level: int = logging.INFO) -> None:
    """Give the ``fedlora`` logger one console handler unless an ancestor already prints it."""
    logger = logging.getLogger("fedlora")
    logger.setLevel(level)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
