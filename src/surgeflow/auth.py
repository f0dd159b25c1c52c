"""API keys: made once, stored as SHA-256 digests, checked with one dict look-up per request."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Iterable

from surgeflow.store.base import ApiKey, Store

log = logging.getLogger("surgeflow.auth")

KEY_PREFIX = "sf-"


def hash_secret(secret: str) -> str:
    # Keys are 256 random bits, so a fast digest is enough: there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(name: str) -> tuple[str, ApiKey]:
    """A fresh secret and the record to store (which holds only its digest)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(
        id=f"key_{secrets.token_hex(6)}",
        name=name,
        hash=hash_secret(secret),
        created_at=time.time(),
    )
    return secret, record


class KeyRing:
    """The keys a gateway accepts: stored ones (reloaded every ``refresh_s``) and bootstrap ones."""

    def __init__(self, store: Store, *, bootstrap: Iterable[str] = (), refresh_s: float = 5.0):
        self._store = store
        self._refresh_s = refresh_s
        self._bootstrap = {
            hash_secret(secret): f"env-{hash_secret(secret)[:8]}"
            for secret in (s.strip() for s in bootstrap)
            if secret
        }
        self._by_hash: dict[str, str] = dict(self._bootstrap)
        self._refresher: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._by_hash)

    def __repr__(self) -> str:
        return f"<KeyRing keys={len(self._by_hash)} bootstrap={len(self._bootstrap)}>"

    def lookup(self, secret: str) -> str | None:
        """The key id for a presented secret, or ``None``."""
        return self._by_hash.get(hash_secret(secret))

    async def refresh(self) -> None:
        keys = await self._store.list_api_keys()
        by_hash = dict(self._bootstrap)
        by_hash.update({key.hash: key.id for key in keys if key.revoked_at is None})
        self._by_hash = by_hash

    async def start(self) -> None:
        await self.refresh()
        self._refresher = asyncio.create_task(self._refresh_forever(), name="keyring-refresh")

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except Exception:  # keep serving with the keys we have
                log.exception("could not reload API keys")

    async def aclose(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
