"""Secrets at rest: extension `protectedSettings` are sealed before they reach the database.

AES-SIV is deterministic: the same settings seal to the same bytes, so a PUT that repeats unchanged
protected settings does not look like a model change. It reveals only that two sealed values are equal.
The key lives in `<data dir>/secret.key` (mode 0600), made on first start.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESSIV

KEY_FILE = "secret.key"
_CONTEXT = [b"scaleset protected settings v1"]


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._aead = AESSIV(key)

    @classmethod
    def in_directory(cls, data_dir: Path) -> SecretBox:
        path = data_dir / KEY_FILE
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(AESSIV.generate_key(512))
        return cls(path.read_bytes())

    def seal(self, value: Any) -> str:
        plain = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        return base64.b64encode(self._aead.encrypt(plain, _CONTEXT)).decode()

    def open(self, sealed: str) -> Any:
        return json.loads(self._aead.decrypt(base64.b64decode(sealed), _CONTEXT))
