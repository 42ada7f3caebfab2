"""Accounts: users, their roles, and access tokens. Every change is audited in its own transaction.

Passwords are hashed with scrypt and tokens kept only as their SHA-256 (`cyan.cloud.auth`). Checking a
password costs ~50 ms of CPU on purpose; it runs on a worker thread so that logging in never stalls the
devices and requests served by the same event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from cyan.cloud.auth import DEFAULT_TOKEN_LIFETIME, check_username, hash_password, hash_token, verify_password
from cyan.cloud.errors import (
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    TooManyRequestsError,
)
from cyan.cloud.models import AccessToken, AuditEntry, RefreshToken, Role, User
from cyan.cloud.ports import Repositories, UserExistsError

from ._context import AppContext
from .actors import Actor

__all__ = [
    "MAX_TOKEN_LIFETIME",
    "REFRESH_TOKEN_LIFETIME",
    "AccountUseCases",
    "InvalidCredentialsError",
    "InvalidRefreshTokenError",
    "IssuedToken",
]

#: The longest lifetime a token may be given in seconds (ten years); 0 or None asks for one that never expires.
MAX_TOKEN_LIFETIME = 10 * 365 * 24 * 3600
#: How long a refresh token can be exchanged for new tokens: a client unused for longer logs in again.
REFRESH_TOKEN_LIFETIME = 30 * 24 * 3600
_MIN_PASSWORD = 8
_MAX_PASSWORD = 1024
#: A client id is shown in listings and the audit trail: short, printable.
_MAX_CLIENT_ID = 64


class InvalidCredentialsError(ValueError):
    """Unknown user or wrong password (deliberately not saying which)."""


class InvalidRefreshTokenError(InvalidCredentialsError):
    """A refresh token that is unknown, already used, revoked or expired (deliberately not saying which)."""


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """How many failed logins are let through (docs/security.md): per account and per source address, in a
    sliding window; past them, a login is refused (429, Retry-After) before its password is checked."""

    per_account: int = 5
    per_address: int = 30
    window: float = 900.0
    #: Password checks running at once: scrypt is ~50 ms of CPU each on purpose, on worker threads; bounded so
    #: that a burst of logins leaves a core to the event loop and the devices.
    concurrent_checks: int = max(1, (os.cpu_count() or 2) - 1)


class _Failures:
    """Failure times per key (an account, an address), in a sliding window, bounded in keys and per key."""

    def __init__(self, limit: int, window: float, max_keys: int = 100_000) -> None:
        self._limit = limit
        self._window = window
        self._max_keys = max_keys
        self._times: dict[str, deque[float]] = {}

    def retry_after(self, key: str, now: float) -> float:
        times = self._times.get(key)
        if times is None:
            return 0.0
        while times and times[0] <= now - self._window:
            times.popleft()
        if not times:
            del self._times[key]
            return 0.0
        return times[0] + self._window - now if len(times) >= self._limit else 0.0

    def add(self, key: str, now: float) -> bool:
        """Count a failure; True when this one reaches the limit."""
        times = self._times.get(key)
        if times is None:
            if len(self._times) >= self._max_keys:
                del self._times[next(iter(self._times))]
            times = self._times[key] = deque(maxlen=self._limit)
        times.append(now)
        return len(times) == self._limit

    def discard(self, key: str, when: float) -> None:
        """Take back the failure counted at `when` (the login it stood for succeeded)."""
        times = self._times.get(key)
        if times is not None:
            with contextlib.suppress(ValueError):  # already pushed out by newer failures
                times.remove(when)
            if not times:
                del self._times[key]

    def clear(self, key: str) -> None:
        self._times.pop(key, None)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    record: AccessToken
    #: Issued with a login (and with each refresh): exchanged once for new tokens (the OAuth refresh grant).
    refresh_token: str | None = None


def _lifetime(expires_in: int | None) -> int | None:
    if expires_in is None or expires_in == 0:
        return None
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or not 0 < expires_in <= MAX_TOKEN_LIFETIME:
        raise InvalidInputError(
            f"expires_in is a number of seconds from 1 to {MAX_TOKEN_LIFETIME}, or 0 for a token that never expires",
            "expires_in",
        )
    return expires_in


def _password(password: str) -> str:
    if not isinstance(password, str) or not _MIN_PASSWORD <= len(password) <= _MAX_PASSWORD:
        raise InvalidInputError(f"the password must have {_MIN_PASSWORD} to {_MAX_PASSWORD} characters", "password")
    return password


def _client(client_id: str) -> str:
    text = "".join(c for c in str(client_id) if c.isprintable())[:_MAX_CLIENT_ID]
    return text or "unknown"


class AccountUseCases:
    def __init__(self, ctx: AppContext, limits: LoginLimits | None = None) -> None:
        self._ctx = ctx
        self.limits = limits or LoginLimits()
        self._checks = asyncio.Semaphore(self.limits.concurrent_checks)
        self._by_account = _Failures(self.limits.per_account, self.limits.window)
        self._by_address = _Failures(self.limits.per_address, self.limits.window)

    # -- users ------------------------------------------------------------------------------------

    async def create_user(self, actor: Actor, username: str, password: str, *, role: Role = Role.USER) -> User:
        """A new account (admins)."""
        if not actor.is_admin:
            raise PermissionDeniedError("creating accounts is an admin's act")
        try:
            username = check_username(username)
        except ValueError as exc:
            raise InvalidInputError(str(exc), "username") from None
        digest = await asyncio.to_thread(hash_password, _password(password))
        now = self._ctx.clock()
        user = User(username, digest, now, Role(role))
        async with self._ctx.store.transaction() as tx:
            try:
                await tx.accounts.add_user(user)
            except UserExistsError as exc:
                raise AlreadyExistsError(str(exc)) from None
            await tx.audit.add(
                AuditEntry(now, None, "user_created", actor.name, detail=f"role {user.role.value}", subject=username)
            )
        return user

    async def remove_user(self, actor: Actor, username: str) -> None:
        """Remove an account (the account itself, or an admin): its tokens are revoked and its devices
        released."""
        username = str(username).lower()
        if not (actor.is_admin or actor.username == username):
            raise NotFoundError(f"no user {username!r}")
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            owned = [d.id for d in await tx.devices.all(owner=username)]
            if not await tx.accounts.remove_user(username):
                raise NotFoundError(f"no user {username!r}")
            await tx.audit.add(
                AuditEntry(
                    now, None, "user_removed", actor.name, detail=f"{len(owned)} device(s) released", subject=username
                )
            )
        for device_id in owned:
            await self._ctx.sessions.owner_changed(device_id, None)

    async def change_password(
        self,
        actor: Actor,
        current_password: str,
        new_password: str,
        *,
        keep_token: str | None = None,
        address: str = "",
    ) -> int:
        """An account changes its own password, proving the current one (counted like a login: a wrong one is a
        failed login, and the limits apply). Every other token of the account is revoked, so that whoever
        learnt the old password loses what they made with it; how many."""
        if actor.username is None:
            raise PermissionDeniedError("only an account has a password")
        new_digest = await asyncio.to_thread(hash_password, _password(new_password))
        await self._check_password(actor.username, current_password, address)
        now = self._ctx.clock()
        kept = hash_token(keep_token) if keep_token else None
        async with self._ctx.store.transaction() as tx:
            user = await tx.accounts.get_user(actor.username)
            if user is None:
                raise NotFoundError(f"no user {actor.username!r}")
            user.password_hash = new_digest
            await tx.accounts.save_user(user)
            revoked = 0
            for token in await tx.accounts.list_tokens(user.username):
                if token.token_hash != kept:
                    revoked += await tx.accounts.remove_token(token.token_hash)
            # A refresh token mints new access tokens: whoever held one would keep the account.
            await tx.accounts.remove_refresh_tokens(user.username)
            await tx.audit.add(
                AuditEntry(
                    now,
                    None,
                    "password_changed",
                    actor.name,
                    detail=f"{revoked} other token(s) revoked",
                    subject=user.username,
                )
            )
        return revoked

    async def remove_own_account(self, actor: Actor, password: str, *, address: str = "") -> None:
        """An account removes itself, proving its password (`DELETE /v1/user`)."""
        if actor.username is None:
            raise PermissionDeniedError("only an account removes itself")
        await self._check_password(actor.username, password, address)
        await self.remove_user(actor, actor.username)

    async def _check_password(self, username: str, password: str, address: str) -> User:
        """The account if `password` is its own; `InvalidCredentialsError` otherwise. Failures are audited and
        counted per account and per address: past `limits`, the password is not checked at all
        (`TooManyRequestsError`)."""
        account = username.lower()[:255]
        now = self._ctx.ticks()
        wait = max(self._by_account.retry_after(account, now), self._by_address.retry_after(address, now))
        if wait > 0:
            raise TooManyRequestsError(
                "too many failed logins for this account or from this address; try again later", wait
            )
        # Counted as a failure before the check and taken back if it succeeds: checks sent at once all wait for
        # the (slow) hash, and would otherwise all pass the limit before the first had failed.
        account_limit = self._by_account.add(account, now)
        address_limit = self._by_address.add(address, now)
        try:
            user = await self.authenticate(username, password)
        except InvalidCredentialsError:
            await self._failed(account, address, account_limit=account_limit, address_limit=address_limit)
            raise
        except BaseException:
            self._by_account.discard(account, now)
            self._by_address.discard(address, now)
            raise
        self._by_account.clear(account)
        self._by_address.discard(address, now)
        return user

    async def set_role(self, actor: Actor, username: str, role: Role) -> User:
        if not actor.is_admin:
            raise PermissionDeniedError("roles are an admin's to give")
        try:
            role = Role(role)
        except ValueError:
            raise InvalidInputError("role is admin or user", "role") from None
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            user = await tx.accounts.get_user(str(username))
            if user is None:
                raise NotFoundError(f"no user {username!r}")
            old = user.role
            user.role = role
            await tx.accounts.save_user(user)
            await tx.audit.add(
                AuditEntry(
                    now, None, "role_changed", actor.name, detail=f"{old.value} -> {role.value}", subject=user.username
                )
            )
        return user

    async def users(self, actor: Actor) -> list[User]:
        if not actor.is_admin:
            raise PermissionDeniedError("the list of accounts is for admins")
        return await self._ctx.store.accounts.list_users()

    async def get_user(self, actor: Actor, username: str) -> User:
        """An account: the account itself, or any for an admin."""
        if not (actor.is_admin or actor.username == str(username).lower()):
            raise NotFoundError(f"no user {username!r}")
        user = await self._ctx.store.accounts.get_user(str(username))
        if user is None:
            raise NotFoundError(f"no user {username!r}")
        return user

    # -- tokens -----------------------------------------------------------------------------------

    async def authenticate(self, username: str, password: str) -> User:
        """The user if the password is theirs; `InvalidCredentialsError` otherwise, taking as long either way
        so that a response time does not reveal who exists."""
        if not isinstance(password, str) or len(password) > _MAX_PASSWORD or not isinstance(username, str):
            raise InvalidCredentialsError("user credentials are invalid")
        user = await self._ctx.store.accounts.get_user(username) if len(username) <= 255 else None
        stored = user.password_hash if user is not None else _decoy()
        async with self._checks:
            matches = await asyncio.to_thread(verify_password, password, stored)
        if not matches or user is None:
            raise InvalidCredentialsError("user credentials are invalid")
        return user

    async def login(
        self, username: str, password: str, client_id: str, expires_in: int | None, *, address: str = ""
    ) -> IssuedToken:
        """A token for whoever knows the password (the OAuth password grant). Failed logins are audited and
        counted per account and per address: past `limits`, a login is refused before its password is
        checked (`TooManyRequestsError`)."""
        lifetime = _lifetime(expires_in)
        user = await self._check_password(str(username), password, address)
        return await self._issue(Actor.account(user.username, user.role), user, client_id, lifetime, refresh=True)

    async def refresh(self, refresh_token: str, expires_in: int | None, *, client_id: str | None = None) -> IssuedToken:
        """New tokens for a refresh token (the OAuth refresh grant), which is spent: the answer carries a new
        refresh token, of the same family. An unknown, spent, revoked or expired one is
        `InvalidRefreshTokenError`, alike.

        A spent one presented again (RFC 9700 §4.14.2, refresh token rotation) means that two parties hold it,
        the client and a thief, and either may hold the newer one: every token of its family, refresh and
        access, is revoked and the reuse audited, so both log in again."""
        lifetime = _lifetime(expires_in)
        # Tokens are hex: anything else (or longer than any token) is unknown without a look.
        if not isinstance(refresh_token, str) or not 0 < len(refresh_token) <= 512 or not refresh_token.isascii():
            raise InvalidRefreshTokenError("the refresh token is invalid")
        now = self._ctx.clock()
        issued: IssuedToken | None = None
        # One transaction, from taking the token to the audit entry: of two requests with the same token, even
        # on two nodes, the first spends it and gets new tokens; the second finds it spent, a reuse.
        async with self._ctx.store.transaction() as tx:
            taken = await tx.accounts.take_refresh_token(hash_token(refresh_token), now)
            if taken is None or taken.expires_at <= now:
                raise InvalidRefreshTokenError("the refresh token is invalid")
            if taken.spent_at is not None:
                revoked = await tx.accounts.remove_token_family(taken.family)
                await tx.audit.add(
                    AuditEntry(
                        now,
                        None,
                        "refresh_token_reused",
                        "policy",
                        detail=f"client {taken.client_id}; refresh token {taken.token_hash[:12]} spent at "
                        f"{taken.spent_at.isoformat(timespec='seconds')} presented again; its family's {revoked} "
                        "token(s) revoked",
                        subject=taken.username,
                    )
                )
            else:
                user = await tx.accounts.get_user(taken.username)
                if user is None:
                    raise InvalidRefreshTokenError("the refresh token is invalid")
                client = taken.client_id if client_id is None else client_id
                actor = Actor.account(user.username, user.role)
                issued = await self._write_issued(
                    tx, actor, user, client, lifetime=lifetime, now=now, family=taken.family
                )
        if issued is None:  # the reuse, revoked and audited above: answered as any invalid token
            raise InvalidRefreshTokenError("the refresh token is invalid")
        return issued

    async def _failed(self, account: str, address: str, *, account_limit: bool, address_limit: bool) -> None:
        """Audit a failed login, and the moment an account or an address reached its limit."""
        known = await self._ctx.store.accounts.get_user(account) is not None
        subject = account if known else None  # an unknown name is not written: anyone could choose it
        source = "".join(c for c in address if c.isprintable())[:64] or "an unknown address"
        at = self._ctx.clock()
        entries = [
            AuditEntry(at, None, "login_failed", "anonymous", detail=f"from {source}", subject=subject)
            if known
            else AuditEntry(at, None, "login_failed", "anonymous", detail=f"from {source}; no such account")
        ]
        minutes = f"{self.limits.window / 60:g} min"
        if account_limit and known:
            why = f"{self.limits.per_account} failed logins within {minutes}"
            entries.append(AuditEntry(at, None, "login_throttled", "policy", detail=why, subject=account))
        if address_limit:
            why = f"{self.limits.per_address} failed logins from {source} within {minutes}"
            entries.append(AuditEntry(at, None, "login_throttled", "policy", detail=why))
        async with self._ctx.store.transaction() as tx:
            for entry in entries:
                await tx.audit.add(entry)

    async def create_token(
        self, actor: Actor, username: str, expires_in: int | None = DEFAULT_TOKEN_LIFETIME
    ) -> IssuedToken:
        """A token for an account: its own, or any for an admin (`cyan tokens create`)."""
        lifetime = _lifetime(expires_in)
        if not (actor.is_admin or actor.username == str(username).lower()):
            raise NotFoundError(f"no user {username!r}")
        user = await self._ctx.store.accounts.get_user(str(username))
        if user is None:
            raise NotFoundError(f"no user {username!r}")
        return await self._issue(actor, user, "cyan-cli", lifetime)

    async def _issue(
        self, actor: Actor, user: User, client_id: str, lifetime: int | None, *, refresh: bool = False
    ) -> IssuedToken:
        now = self._ctx.clock()
        # A login with a refresh token starts a family: every rotation of that refresh token belongs to it.
        family = secrets.token_hex(16) if refresh else None
        async with self._ctx.store.transaction() as tx:
            return await self._write_issued(tx, actor, user, client_id, lifetime=lifetime, now=now, family=family)

    async def _write_issued(
        self,
        tx: Repositories,
        actor: Actor,
        user: User,
        client_id: str,
        *,
        lifetime: int | None,
        now: datetime,
        family: str | None,
    ) -> IssuedToken:
        """Store a new access token (and, with a `family`, a refresh token of that family) and audit it."""
        token = secrets.token_hex(20)
        expires = now + timedelta(seconds=lifetime) if lifetime else None
        record = AccessToken(hash_token(token), user.username, _client(client_id), now, expires, family)
        refresh_token: str | None = None
        await tx.accounts.add_token(record)
        if family is not None:
            refresh_token = secrets.token_hex(20)
            # Spent tokens are kept until they expire, to recognise their reuse: those past it go here.
            await tx.accounts.remove_expired_refresh_tokens(now)
            await tx.accounts.add_refresh_token(
                RefreshToken(
                    hash_token(refresh_token),
                    user.username,
                    record.client_id,
                    now,
                    now + timedelta(seconds=REFRESH_TOKEN_LIFETIME),
                    family,
                )
            )
        await tx.audit.add(
            AuditEntry(
                now,
                None,
                "token_created",
                actor.name,
                detail=f"client {record.client_id}; token {record.token_hash[:12]}"
                + ("; with a refresh token" if refresh_token is not None else ""),
                subject=user.username,
            )
        )
        return IssuedToken(token, record, refresh_token)

    async def resolve(self, token: str) -> Actor | None:
        """The account a token acts for, if the token is valid now."""
        if not token or len(token) > 512:
            return None
        store = self._ctx.store
        record = await store.accounts.get_token(hash_token(token))
        if record is None or (record.expires_at is not None and record.expires_at <= self._ctx.clock()):
            return None
        user = await store.accounts.get_user(record.username)
        if user is None:
            return None
        return Actor.account(user.username, user.role)

    async def revoke(self, token: str, *, actor: Actor | None = None) -> bool:
        """Revoke a token. Knowing it is what authorises revoking it (`particle token revoke` sends no other
        credentials)."""
        if not token or len(token) > 512:
            return False
        digest = hash_token(token)
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            record = await tx.accounts.get_token(digest)
            if record is None:
                return False
            await tx.accounts.remove_token(digest)
            who = actor.name if actor is not None else record.username
            await tx.audit.add(
                AuditEntry(now, None, "token_revoked", who, detail=f"token {digest[:12]}", subject=record.username)
            )
        return True

    async def revoke_by_hash(self, actor: Actor, username: str, token_hash: str) -> None:
        """Revoke one of an account's tokens by its hash (as `tokens` lists them): the account's own, or any
        account's for an admin. The token itself is never shown again after it is issued."""
        name = str(username).lower()
        if not (actor.is_admin or actor.username == name):
            raise NotFoundError(f"no user {username!r}")
        digest = str(token_hash).lower()
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            record = await tx.accounts.get_token(digest) if len(digest) == 64 else None
            if record is None or record.username != name:
                raise NotFoundError("no such access token")
            await tx.accounts.remove_token(digest)
            await tx.audit.add(
                AuditEntry(now, None, "token_revoked", actor.name, detail=f"token {digest[:12]}", subject=name)
            )

    async def tokens(self, actor: Actor, username: str | None = None) -> list[AccessToken]:
        """An account's tokens (hashes, never the tokens): its own, or any account's for an admin."""
        name = str(username or actor.username or "").lower()
        if not (actor.is_admin or actor.username == name):
            raise NotFoundError(f"no user {username!r}")
        return await self._ctx.store.accounts.list_tokens(name)


@functools.cache
def _decoy() -> str:
    """A hash to check unknown users' passwords against, so that they take as long as known ones."""
    return hash_password("not a real password")
