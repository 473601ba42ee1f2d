"""Test hook: die like `kill -9` at a named point of a promotion (PIPELINE_FAULT=<point>), so
end-to-end tests prove what a crash exactly there leaves and that it is repaired. Unset, nothing.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

FAULT_ENV = "PIPELINE_FAULT"
# Where a test may kill a promotion (in this order): after the `promoting` state is written and
# before any alias moves; after the aliases moved and before models/production is swapped; after
# the swap and before the service reload; after the reload and before the records are written.
FAULT_POINTS = (
    "after_promoting_write",
    "after_alias_move",
    "after_file_swap",
    "after_service_reload",
)


def fault_point(name: str) -> None:
    """Die like `kill -9` here when PIPELINE_FAULT=<name>; nothing when unset."""
    if name not in FAULT_POINTS:
        raise ValueError(f"unknown fault point {name!r} (known: {', '.join(FAULT_POINTS)})")
    if os.environ.get(FAULT_ENV) == name:
        log.critical("PIPELINE_FAULT=%s: exiting with status 137 (test hook)", name)
        logging.shutdown()
        os._exit(137)
