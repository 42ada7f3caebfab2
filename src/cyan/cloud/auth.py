"""Users, passwords and access tokens.

Passwords are hashed with scrypt (stdlib `hashlib.scrypt`, memory-hard); tokens are 160 random bits shown
once and stored only as their SHA-256, so neither a database dump nor a log line yields a usable secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from .models import AccessToken, User
from .ports import Store

__all__ = [
    "DEFAULT_TOKEN_LIFETIME",
    "Accounts",
    "InvalidCredentialsError",
    "hash_password",
    "hash_token",
    "verify_password",
]

#: Particle's default: a token is good for 90 days.
DEFAULT_TOKEN_LIFETIME = 90 * 24 * 3600
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_USERNAME = re.compile(r"^[^\s@]+@[^\s@]+$|^[A-Za-z0-9._-]{1,64}$")


class InvalidCredentialsError(ValueError):
    """Unknown user or wrong password (deliberately not saying which)."""


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT, dklen=32)
    encoded = [base64.b64encode(x).decode() for x in (salt, digest)]
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${encoded[0]}${encoded[1]}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    """User and token operations over the store."""

    def __init__(self, store: Store, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self._clock = clock

    async def create_user(self, username: str, password: str) -> User:
        if not _USERNAME.match(username):
            raise ValueError(f"{username!r} is not a valid username: use an e-mail address")
        if len(password) < 8:
            raise ValueError("the password must have at least 8 characters")
        user = User(username.lower(), hash_password(password), self._clock())
        await self.store.add_user(user)
        return user

    async def authenticate(self, username: str, password: str) -> User:
        user = await self.store.get_user(username)
        if user is None:
            # Spend the same time as a real check, so a response time does not reveal who exists.
            verify_password(password, hash_password("not a real password"))
            raise InvalidCredentialsError("user credentials are invalid")
        if not verify_password(password, user.password_hash):
            raise InvalidCredentialsError("user credentials are invalid")
        return user

    async def issue_token(
        self, username: str, client_id: str, expires_in: int | None = DEFAULT_TOKEN_LIFETIME
    ) -> tuple[str, AccessToken]:
        """A new token; `expires_in` None or 0 means it never expires (as `particle token create
        --never-expires` asks)."""
        token = secrets.token_hex(20)
        now = self._clock()
        expires = now + timedelta(seconds=expires_in) if expires_in else None
        record = AccessToken(hash_token(token), username.lower(), client_id[:64], now, expires)
        await self.store.add_token(record)
        return token, record

    async def resolve(self, token: str) -> AccessToken | None:
        """The token's record if it is valid now."""
        if not token or len(token) > 512:
            return None
        record = await self.store.get_token(hash_token(token))
        if record is None:
            return None
        if record.expires_at is not None and record.expires_at <= self._clock():
            return None
        return record

    async def revoke(self, token: str) -> bool:
        return await self.store.remove_token(hash_token(token))
