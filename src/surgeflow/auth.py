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


def new_key(name: str, *, admin: bool = False, cache: bool = True) -> tuple[str, ApiKey]:
    """A fresh secret and the record to store (which holds only its digest)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(
        id=f"key_{secrets.token_hex(6)}",
        name=name,
        hash=hash_secret(secret),
        created_at=time.time(),
        admin=admin,
        cache=cache,
    )
    return secret, record


def _bootstrap_ids(secrets_: Iterable[str], prefix: str) -> dict[str, str]:
    digests = (hash_secret(s.strip()) for s in secrets_ if s.strip())
    return {digest: f"{prefix}-{digest[:8]}" for digest in digests}


class KeyRing:
    """The keys a gateway accepts: stored ones (reloaded every ``refresh_s``) and bootstrap ones."""

    def __init__(
        self,
        store: Store,
        *,
        bootstrap: Iterable[str] = (),
        bootstrap_admin: Iterable[str] = (),
        refresh_s: float = 5.0,
    ) -> None:
        self._store = store
        self._refresh_s = refresh_s
        self._bootstrap = _bootstrap_ids(bootstrap, "env")
        admin = _bootstrap_ids(bootstrap_admin, "env-admin")
        self._bootstrap.update(admin)
        self._admin_bootstrap = set(admin.values())
        self._by_hash: dict[str, str] = dict(self._bootstrap)
        self._admins: set[str] = set(self._admin_bootstrap)
        self._uncached: frozenset[str] = frozenset()
        self._refresher: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._by_hash)

    def __repr__(self) -> str:
        return f"<KeyRing keys={len(self._by_hash)} bootstrap={len(self._bootstrap)}>"

    def lookup(self, secret: str) -> str | None:
        """The key id for a presented secret, or ``None``."""
        return self._by_hash.get(hash_secret(secret))

    def is_admin(self, key_id: str) -> bool:
        return key_id in self._admins

    def caches(self, key_id: str) -> bool:
        """False for a key created with ``--no-cache``: its requests bypass the cache."""
        return key_id not in self._uncached

    async def refresh(self) -> None:
        keys = [key for key in await self._store.list_api_keys() if key.revoked_at is None]
        by_hash = dict(self._bootstrap)
        by_hash.update({key.hash: key.id for key in keys})
        self._by_hash = by_hash
        self._admins = self._admin_bootstrap | {key.id for key in keys if key.admin}
        self._uncached = frozenset(key.id for key in keys if not key.cache)

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
