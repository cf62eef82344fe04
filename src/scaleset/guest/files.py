"""Writing files the way the guest and the provider both need: atomically and with their final mode.

Its own module, stdlib only and cheap to import, because the instance's init process imports it before
the app starts (the guest agent's modules are imported later).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def write_file_atomically(path: Path, content: str | bytes, *, mode: int = 0o644) -> None:
    """Write through a temporary file and a rename, so a reader never sees half a file.

    The temporary name carries the pid and thread id: the agent and a status writer may write the same
    file from two threads. `mode` is set on the temporary file before any byte is written, so a secret
    never exists with wider permissions.
    """
    data = content.encode("utf-8") if isinstance(content, str) else content
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # O_CREAT's mode is filtered by the umask
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
