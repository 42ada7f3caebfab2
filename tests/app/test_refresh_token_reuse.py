"""Refresh token rotation (RFC 9700 §4.14.2) on every store: a spent refresh token presented again revokes its
whole family, the refresh and the access tokens its rotations issued, in the transaction that audits it; of
two refreshes of one token at once, on two nodes too, one wins and the other is a reuse."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from cyan.app import Actor, Application, InvalidRefreshTokenError, IssuedToken
from cyan.cloud.auth import hash_token
from cyan.cloud.models import Role
from cyan.store import MemoryStore, PostgresStore, SqliteStore
from store_support import StoreFactory

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ALICE, BOB = "alice@example.com", "bob@example.com"
PASSWORD = "a good password"
OPERATOR = Actor.operator()

Scenario = Callable[[Callable[[], Awaitable[Application]]], Awaitable[None]]


def run(make: StoreFactory, scenario: Scenario) -> None:
    """`scenario` gets a maker of nodes: each an `Application` over a store of its own on the same data (one
    process's memory store is shared), at the clock `NOW`."""

    async def main() -> None:
        stores: list[MemoryStore | SqliteStore | PostgresStore] = []

        async def node() -> Application:
            store = make()
            if store not in stores:
                await store.open()
                stores.append(store)
            return Application(store, clock=lambda: NOW)

        first = await node()
        for user in (ALICE, BOB):
            await first.accounts.create_user(OPERATOR, user, PASSWORD, role=Role.USER)
        try:
            await scenario(node)
        finally:
            for store in stores:
                await store.close()

    asyncio.run(main())


async def _alive(app: Application, issued: IssuedToken) -> bool:
    return await app.accounts.resolve(issued.token) is not None


async def _reuses(app: Application) -> list[str]:
    return [e.detail or "" for e in await app.context.store.audit.recent() if e.action == "refresh_token_reused"]


def test_a_spent_refresh_token_presented_again_revokes_its_family_and_only_it(make: StoreFactory) -> None:
    async def scenario(node: Callable[[], Awaitable[Application]]) -> None:
        app = await node()
        first = await app.accounts.login(ALICE, PASSWORD, "particle", 3600)
        assert first.refresh_token is not None
        second = await app.accounts.refresh(first.refresh_token, 3600)
        assert second.refresh_token is not None
        third = await app.accounts.refresh(second.refresh_token, 3600)
        assert third.refresh_token is not None
        # Beside it: another login of the same account, another account's, and a token issued without refresh.
        elsewhere = await app.accounts.login(ALICE, PASSWORD, "CLI2", 3600)
        bobs = await app.accounts.login(BOB, PASSWORD, "CLI2", 3600)
        cli = await app.accounts.create_token(OPERATOR, ALICE, 3600)
        assert [await _alive(app, t) for t in (first, second, third)] == [True, True, True]

        # The first refresh token, spent, comes back (whoever sends it: the client or a thief).
        with pytest.raises(InvalidRefreshTokenError, match="the refresh token is invalid"):
            await app.accounts.refresh(first.refresh_token, 3600)
        # Every token of the family is gone, the newest refresh token too, whoever holds it...
        assert [await _alive(app, t) for t in (first, second, third)] == [False, False, False]
        for refresh_token in (third.refresh_token, second.refresh_token):
            with pytest.raises(InvalidRefreshTokenError, match="the refresh token is invalid"):
                await app.accounts.refresh(refresh_token, 3600)
        # ... and nothing else.
        assert [await _alive(app, t) for t in (elsewhere, bobs, cli)] == [True, True, True]
        assert elsewhere.refresh_token is not None
        assert await app.accounts.refresh(elsewhere.refresh_token, 3600) is not None
        # Audited once, under the account, naming the spent token by its hash's start and never a token.
        [detail] = await _reuses(app)
        assert f"refresh token {hash_token(first.refresh_token)[:12]}" in detail
        assert "6 token(s) revoked" in detail  # three refresh tokens (two spent) and three access tokens
        trail = await app.context.store.audit.recent(subject=ALICE)
        assert trail[1].action == "refresh_token_reused"  # the refresh of `elsewhere` came after
        assert trail[1].actor == "policy"
        for token in (first.refresh_token, second.refresh_token, third.refresh_token, first.token, third.token):
            assert token not in str(trail)
        # Sent again, it is unknown now: nothing more to revoke, nothing more audited.
        with pytest.raises(InvalidRefreshTokenError, match="the refresh token is invalid"):
            await app.accounts.refresh(first.refresh_token, 3600)
        assert len(await _reuses(app)) == 1

    run(make, scenario)


def test_of_two_refreshes_of_one_token_on_two_nodes_one_wins_and_the_other_is_a_reuse(make: StoreFactory) -> None:
    async def scenario(node: Callable[[], Awaitable[Application]]) -> None:
        one, two = await node(), await node()
        for round_ in range(3):
            login = await one.accounts.login(ALICE, PASSWORD, "particle", 3600)
            assert login.refresh_token is not None
            outcomes = await asyncio.gather(
                one.accounts.refresh(login.refresh_token, 3600),
                two.accounts.refresh(login.refresh_token, 3600),
                return_exceptions=True,
            )
            won = [o for o in outcomes if isinstance(o, IssuedToken)]
            lost = [o for o in outcomes if isinstance(o, InvalidRefreshTokenError)]
            assert (len(won), len(lost)) == (1, 1), outcomes
            # The loser's attempt was a reuse: the winner's new tokens went with the family.
            assert not await _alive(one, won[0])
            assert not await _alive(two, login)
            assert won[0].refresh_token is not None
            with pytest.raises(InvalidRefreshTokenError):
                await two.accounts.refresh(won[0].refresh_token, 3600)
            assert len(await _reuses(one)) == round_ + 1

    run(make, scenario)


def test_unknown_malformed_and_expired_refresh_tokens_revoke_nothing_and_spent_ones_are_pruned(
    make: StoreFactory,
) -> None:
    async def scenario(node: Callable[[], Awaitable[Application]]) -> None:
        app = await node()
        login = await app.accounts.login(ALICE, PASSWORD, "particle", 0)  # an access token that never expires
        assert login.refresh_token is not None
        renewed = await app.accounts.refresh(login.refresh_token, 0)
        assert renewed.refresh_token is not None
        unknown = ["0" * 40, login.refresh_token.upper(), login.refresh_token + "0", login.refresh_token[:-1]]
        malformed = ["", "x" * 513, "\ud800", "é" * 40, "\x00" * 40]
        for bad in [*unknown, *malformed]:
            with pytest.raises(InvalidRefreshTokenError, match="the refresh token is invalid"):
                await app.accounts.refresh(bad, 3600)
        assert await _alive(app, renewed)
        assert await _reuses(app) == []
        # Past its 30 days, a spent token is only expired: nothing is revoked (the family's access token stays)...
        app.context.clock = lambda: NOW + timedelta(days=31)
        with pytest.raises(InvalidRefreshTokenError):
            await app.accounts.refresh(login.refresh_token, 3600)
        assert await _alive(app, renewed)
        assert await _reuses(app) == []
        # ... and it goes, with every other expired refresh token, when refresh tokens are next issued.
        store = app.context.store
        spent = hash_token(login.refresh_token)
        assert await store.accounts.take_refresh_token(spent, NOW + timedelta(days=31)) is not None
        await app.accounts.login(ALICE, PASSWORD, "particle", 3600)
        assert await store.accounts.take_refresh_token(spent, NOW + timedelta(days=31)) is None
        assert await store.accounts.take_refresh_token(hash_token(renewed.refresh_token), NOW) is None

    run(make, scenario)
