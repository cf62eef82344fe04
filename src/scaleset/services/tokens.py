"""Bearer tokens: random secrets shown once, stored only as SHA-256 hashes, each with one role.

Roles nest: a reader may read; a contributor may also write; an admin may also publish to the catalog and
mint tokens.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from sqlalchemy import select

from scaleset.domain.errors import invalid
from scaleset.engine.clock import Clock
from scaleset.store.db import Database
from scaleset.store.tables import Token

ROLES = ("reader", "contributor", "admin")
ADMIN_TOKEN_FILE = "admin.token"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def role_allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


class TokenService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def create(self, role: str, name: str = "") -> tuple[Token, str]:
        if role not in ROLES:
            raise invalid("role", f"The role must be one of {', '.join(ROLES)}.")
        if len(name) > 128:
            raise invalid("name", "A token's name is at most 128 characters.")
        token = "sst_" + secrets.token_urlsafe(32)
        with self._db.write() as session:
            row = Token(token_hash=hash_token(token), role=role, name=name, created_at=self._clock.now())
            session.add(row)
        return row, token

    def role_of(self, token: str) -> str | None:
        with self._db.read() as session:
            row = session.scalars(select(Token).where(Token.token_hash == hash_token(token))).first()
            return row.role if row else None

    def ensure_admin_token(self, data_dir: Path) -> Path:
        """On first start, write an admin token to `<data dir>/admin.token`, readable by its owner only."""
        path = data_dir / ADMIN_TOKEN_FILE
        if path.exists() and self.role_of(path.read_text().strip()) == "admin":
            return path
        _, token = self.create("admin", "first-start admin token")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        os.chmod(path, 0o600)
        return path
