"""Resumption keyed by content (issue 11).

Long commands keep their progress in ``OUT.partial`` (certify/attack: finished rows; train: the per-epoch
training state). A partial file is reused only if it was made from the same inputs: the sha256 of the checkpoint
and of the data files, the numerics version of the code (:data:`sorobust.workflow.STAGE_VERSIONS`) and every
option. Otherwise the run starts afresh and says so in one line on stderr. A partial file that cannot be read
(truncated, torn, not what it should be) is set aside, renamed to ``OUT.partial.corrupt-<UTC time>`` and never
silently deleted, and the run restarts, again saying so in one line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from .artifacts import _sha256_tree, sha256_file

__all__ = ["resume_key", "key_mismatch", "set_aside", "say"]


def say(message: str) -> None:
    """One line on stderr (the channel for resumption notices; stdout stays machine-readable)."""
    print(message.replace("\n", " "), file=sys.stderr, flush=True)


def resume_key(stage: str, options: Mapping[str, Any], checkpoint: Optional[str | Path] = None,
               data: Optional[str | Path] = None) -> dict:
    """The content a partial file must match to be reused.

    Args:
        stage: Workflow stage whose numerics version applies (``train``, ``certify`` or ``attack``).
        options: Every option of the command that can change its numbers (JSON-serialisable after ``str``).
        checkpoint: Checkpoint file read by the command (hashed), if any.
        data: Data directory read by the command (every file hashed), if any.

    Returns:
        ``{"code", "options", "checkpoint_sha256", "data_sha256"}``, plain JSON data.
    """
    from .workflow import code_hash

    return {
        "code": code_hash(stage),
        "options": json.loads(json.dumps(dict(options), sort_keys=True, default=str)),
        "checkpoint_sha256": sha256_file(checkpoint) if checkpoint is not None else None,
        "data_sha256": _sha256_tree(Path(data)) if data is not None else None,
    }


_WHAT = {"code": "code version", "options": "options", "checkpoint_sha256": "checkpoint file",
         "data_sha256": "data files"}


def key_mismatch(stored: Any, key: Mapping[str, Any]) -> list[str]:
    """Which parts of ``key`` the stored key does not match (empty if the partial may be reused); a missing or
    malformed stored key matches nothing."""
    if not isinstance(stored, Mapping):
        return ["resume key (none recorded)"]
    diff = []
    for k, v in key.items():
        if stored.get(k) != v:
            if k == "options" and isinstance(stored.get(k), Mapping):
                names = sorted(n for n in set(v) | set(stored[k]) if v.get(n) != stored[k].get(n))
                diff.append("options " + ", ".join(f"--{n.replace('_', '-')}" for n in names))
            else:
                diff.append(_WHAT.get(k, k))
    return diff


def set_aside(path: Path, reason: str) -> Path:
    """Rename an unreadable partial file to ``<path>.corrupt-<UTC time>`` (never deleted) and say so."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while dest.exists():
        dest = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    path.rename(dest)
    say(f"note: '{path}' is unreadable ({reason}); set aside as '{dest.name}', starting afresh")
    return dest
