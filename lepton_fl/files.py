"""Files written whole, with their permissions from the first byte on.

Keys, secrets, release manifests and prediction outputs are all written the same way: the file
is created by ``os.open`` with its mode (``fchmod`` then undoes the umask) before any byte is
written, so a private key is never readable by others even for an instant; ``O_NOFOLLOW``
refuses a symbolic link planted at the path; the bytes are synced to disk before the call
returns. One function, so that every writer gets all three.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["write_file"]


def write_file(path: Path, data: bytes, *, mode: int, replace: bool = False) -> None:
    """Write ``data`` to ``path`` with permissions ``mode``.

    Without ``replace`` the file is created with ``O_EXCL``: an existing ``path`` raises
    `FileExistsError` and is left as it was. With ``replace`` the bytes go to a temporary
    file beside ``path`` that is then renamed over it atomically, so a reader sees the old
    file or the new one, never a part. On any failure no partial file is left behind.
    Other `OSError` subclasses (no permission, a full disk) propagate for the caller to
    word.
    """
    target = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp") if replace else path
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(target, path)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
