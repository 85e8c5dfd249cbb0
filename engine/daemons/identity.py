"""A daemon is its home: `home/daemon.id` names it across restarts."""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=64)
def identity(home: Path) -> str:
    """This home's daemon id (`dmn_...`), made on its first start and kept in `home/daemon.id`."""
    path = Path(home) / "daemon.id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        made = f"dmn_{secrets.token_hex(8)}"
        try:
            with open(path, "x") as f:
                f.write(made + "\n")
        except FileExistsError:  # another process of this home made it first
            return path.read_text().strip()
        return made
