"""Every use case over the in-memory store: who may do it, what it changes, and that its audit entry is
written with the change (docs/keys.md "Who may do what")."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from cyan.app import Actor, Application, Handshakes, InvalidCredentialsError, InvalidRefreshTokenError, NewDevice
from cyan.app.keys import match_fingerprint
from cyan.cloud.errors import (
    AlreadyExistsError,
    ConflictError,
    DeviceNotFoundError,
    InvalidInputError,
    NotFoundError,
    PendingKeyChangedError,
    PermissionDeniedError,
    TooManyRequestsError,
)
from cyan.cloud.models import DeviceRecord, KeyPolicyMode, PendingKey, RekeyWindow, Role
from cyan.keys import fingerprint, public_key_der
from cyan.store import MemoryStore
from cyan.testing import fixed_device_key

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DEVICE, OTHER, NEW = "ab" * 12, "cd" * 12, "ef" * 12
ALICE, BOB, ADMIN = "alice@example.com", "bob@example.com", "admin@example.com"
OPERATOR = Actor.operator()
alice, bob, admin = Actor.account(ALICE, Role.USER), Actor.account(BOB, Role.USER), Actor.account(ADMIN, Role.ADMIN)


def der(n: int) -> bytes:
    return public_key_der(fixed_device_key(n).public_key())


def fp(n: int) -> str:
    return fingerprint(der(n))


@dataclass
class RecordedSessions:
    """`Sessions` that remembers what it was told, with devices marked connected by the test."""

    connected_devices: set[str] = field(default_factory=set)
    told: list[tuple[str, ...]] = field(default_factory=list)

    async def connected(self, device_id: str) -> bool:
        return device_id in self.connected_devices

    def quarantined(self, device_id: str) -> bool:
        return False

    def live(self, device_id: str) -> DeviceRecord | None:
        return None

    def shown_online(self, record: DeviceRecord) -> bool:
        return False

    async def owner_changed(self, device_id: str, owner: str | None) -> None:
        self.told.append(("owner_changed", device_id, str(owner)))

    async def key_approved(self, device_id: str, fingerprint: str) -> None:
        self.told.append(("key_approved", device_id, fingerprint))

    async def key_rejected(self, device_id: str, fingerprint: str) -> None:
        self.told.append(("key_rejected", device_id, fingerprint))

    async def close_sessions(self, device_id: str, *, keep_key: str | None = None) -> None:
        self.told.append(("close_sessions", device_id, str(keep_key)))


World = tuple[Application, MemoryStore, RecordedSessions]


def run(scenario: Callable[[Application, MemoryStore, RecordedSessions], Awaitable[None]]) -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        sessions = RecordedSessions()
        app = Application(store, clock=lambda: NOW)
        app.context.sessions = sessions
        for user, role in ((ALICE, Role.USER), (BOB, Role.USER), (ADMIN, Role.ADMIN)):
            await app.accounts.create_user(OPERATOR, user, "a good password", role=role)
        await app.devices.register(
            OPERATOR,
            [NewDevice(DEVICE, der(1), name="kitchen", owner=ALICE), NewDevice(OTHER, der(2), name="shed")],
        )
        await scenario(app, store, sessions)

    asyncio.run(main())


async def actions(store: MemoryStore, device_id: str | None = None) -> list[str]:
    return [e.action for e in await store.audit.recent(device_id)]


# -- devices ----------------------------------------------------------------------------------------


def test_registering_devices_is_an_admins_act_all_or_nothing() -> None:
    async def scenario(app: Application, store: MemoryStore, sessions: RecordedSessions) -> None:
        with pytest.raises(PermissionDeniedError):
            await app.devices.register(alice, [NewDevice(NEW, der(3))])
        with pytest.raises(AlreadyExistsError, match="kitchen"):
            await app.devices.register(
                admin, [NewDevice(NEW, der(3)), NewDevice("12" * 12, der(4), name="kitchen", owner=ALICE)]
            )
        assert await store.devices.get(NEW) is None
        with pytest.raises(InvalidInputError, match="no user"):
            await app.devices.register(admin, [NewDevice(NEW, der(3), owner="nobody@example.com")])
        for bad in (NEW + "\n", NEW[:-1], "zz" * 12):
            with pytest.raises(InvalidInputError, match="not a device id"):
                await app.devices.register(admin, [NewDevice(bad, der(3))])
        with pytest.raises(InvalidInputError, match="cannot be used"):
            await app.devices.register(admin, [NewDevice(NEW, b"\x30\x03\x02\x01\x00")])
        (record,) = await app.devices.register(admin, [NewDevice(NEW.upper(), der(3), owner=BOB)])
        assert (record.id, record.owner, record.key_fingerprint) == (NEW, BOB, fp(3))
        (entry,) = await store.audit.recent(NEW)
        assert (entry.action, entry.actor, entry.new_fingerprint) == ("registered", ADMIN, fp(3))

    run(scenario)


def test_what_is_not_yours_is_not_found_whatever_the_route() -> None:
    async def scenario(app: Application, store: MemoryStore, sessions: RecordedSessions) -> None:
        for attempt in (
            lambda: app.devices.get(bob, DEVICE),
            lambda: app.devices.get(bob, "kitchen"),
            lambda: app.devices.rename(bob, DEVICE, "mine"),
            lambda: app.devices.release(bob, DEVICE),
            lambda: app.keys.status(bob, DEVICE),
            lambda: app.keys.approve(bob, DEVICE, fp(9)),
            lambda: app.keys.arm_rekey(bob, DEVICE, 60),
            lambda: app.keys.set_device_policy(bob, DEVICE, KeyPolicyMode.QUARANTINE),
            lambda: app.keys.audit(bob, DEVICE),
            lambda: app.diagnostics.attempts(bob, DEVICE),
            lambda: app.devices.group(bob, "porch", [DEVICE]),
            lambda: app.devices.get(bob, "f" * 24),
        ):
            with pytest.raises(DeviceNotFoundError) as caught:
                await attempt()
            assert DEVICE not in str(caught.value) or "it is not yours" in str(caught.value)
        assert await actions(store, DEVICE) == ["registered"]
        assert [v.record.id for v in await app.devices.mine(bob)] == []
        with pytest.raises(PermissionDeniedError):
            await app.devices.mine(bob, everyone=True)
        assert {v.record.id for v in await app.devices.mine(admin, everyone=True)} == {DEVICE, OTHER}

    run(scenario)


def test_claiming_an_ownerless_device_takes_an_admin_or_a_claim_code() -> None:
    async def scenario(app: Application, store: MemoryStore, sessions: RecordedSessions) -> None:
        with pytest.raises(DeviceNotFoundError):
            await app.devices.claim(bob, OTHER)
        with pytest.raises(DeviceNotFoundError):  # someone else's: the same answer
            await app.devices.claim(bob, DEVICE)
        with pytest.raises(ConflictError, match="release it first"):
            await app.devices.claim(admin, DEVICE)
        with pytest.raises(PermissionDeniedError):
            await app.devices.claim(bob, OTHER, owner=BOB)
        with pytest.raises(PermissionDeniedError):
            await app.devices.issue_claim_code(bob, OTHER)
        issued = await app.devices.issue_claim_code(admin, OTHER)
        with pytest.raises(DeviceNotFoundError):
            await app.devices.claim(bob, NEW, claim_code=issued.code)  # a code for another device
        with pytest.raises(DeviceNotFoundError):
            await app.devices.claim(bob, OTHER, claim_code=issued.code + "x")
        record = await app.devices.claim(bob, OTHER, claim_code=issued.code)
        assert record.owner == BOB
        assert sessions.told[-1] == ("owner_changed", OTHER, BOB)
        await app.devices.release(bob, OTHER)
        with pytest.raises(DeviceNotFoundError):  # used once
            await app.devices.claim(alice, OTHER, claim_code=issued.code)
        assert (await app.devices.claim(admin, OTHER, owner=ALICE)).owner == ALICE
        assert await actions(store, OTHER) == ["claimed", "released", "claimed", "claim_code_issued", "registered"]

    run(scenario)


def test_an_expired_claim_code_takes_nothing() -> None:
    async def scenario(app: Application, store: MemoryStore, sessions: RecordedSessions) -> None:
        issued = await app.devices.issue_claim_code(admin, OTHER)
        app.context.clock = lambda: NOW + timedelta(hours=25)
        with pytest.raises(DeviceNotFoundError):
            await app.devices.claim(bob, OTHER, claim_code=issued.code)

    run(scenario)


def test_a_device_presenting_its_accounts_claim_code_is_claimed_once() -> None:
    async def scenario(app: Application, store: MemoryStore, sessions: RecordedSessions) -> None:
        issued = await app.devices.issue_claim_code(bob)
        assert issued.device_ids == []
        assert await app.devices.claimed_by_device(DEVICE, issued.code) is None  # it has an owner
        record = await app.devices.claimed_by_device(OTHER, issued.code)
        assert record is not None
        assert record.owner == BOB
        await app.devices.release(bob, OTHER)
        assert await app.devices.claimed_by_device(OTHER, issued.code) is None
        (entry, *_) = await store.audit.recent(OTHER)
        assert (entry.action, entry.actor) == ("released", BOB)

    run(scenario)


def test_renaming_and_removing() -> None:
    async def scenario(app: Application, store: MemoryStore, sessions: RecordedSessions) -> None:
        assert (await app.devices.rename(alice, "kitchen", "pantry")).name == "pantry"
        # Names are unique within an owner's devices: the ownerless "shed" does not stop Alice naming hers so.
        assert (await app.devices.rename(alice, "pantry", "shed")).name == "shed"
        with pytest.raises(ConflictError, match="several owners are named 'shed'"):
            await app.devices.get(admin, "shed")  # an admin sees both: the name alone is not enough
        assert (await app.devices.get(alice, "shed")).record.id == DEVICE
        with pytest.raises(AlreadyExistsError, match=f"{ALICE} already has a device named 'shed'"):
            await app.devices.claim(admin, OTHER, owner=ALICE)
        await app.devices.register(admin, [NewDevice(NEW, der(3), name="attic", owner=ALICE)])
        with pytest.raises(AlreadyExistsError, match="another device of its owner's is already named 'attic'"):
            await app.devices.rename(alice, "shed", "attic")
        assert (await app.devices.rename(alice, "shed", "pantry")).name == "pantry"
        for bad in ("", "x" * 64, "new\nline", "a b"):
            with pytest.raises(InvalidInputError):
                await app.devices.rename(alice, "pantry", bad)
        with pytest.raises(PermissionDeniedError):
            await app.devices.remove(alice, DEVICE)
        await app.devices.remove(admin, DEVICE)
        assert await store.devices.get(DEVICE) is None
        assert sessions.told[-1] == ("close_sessions", DEVICE, "None")
        assert await actions(store, DEVICE) == ["removed", "renamed", "renamed", "renamed", "registered"]

    run(scenario)


# -- keys -------------------------------------------------------------------------------------------


def test_provisioning_a_key() -> None:
    async def scenario(app: Application, store: MemoryStore, sessions: RecordedSessions) -> None:
        # A new id: an admin's act, unless self-registration is on.
        with pytest.raises(DeviceNotFoundError):
            await app.keys.provision(bob, NEW, der(5))
        with pytest.raises(PermissionDeniedError):
            await app.keys.set_fleet_policy(bob, self_registration=True)
        await app.keys.set_fleet_policy(admin, self_registration=True)
        made = await app.keys.provision(bob, NEW, der(5))
        assert (made.created, made.record.owner) == (True, BOB)
        # Someone else's: not found; one's own: replaced, audited, sessions with the old key closed.
        with pytest.raises(DeviceNotFoundError):
            await app.keys.provision(bob, DEVICE, der(6))
        replaced = await app.keys.provision(alice, DEVICE, der(6))
        assert (replaced.created, replaced.old_fingerprint, replaced.record.key_fingerprint) == (False, fp(1), fp(6))
        assert sessions.told[-1] == ("close_sessions", DEVICE, "None")
        (entry, *_) = await store.audit.recent(DEVICE)
        assert (entry.action, entry.old_fingerprint, entry.new_fingerprint) == ("provisioned", fp(1), fp(6))
        # Ownerless: an admin, or a claim code's holder, who then owns it.
        with pytest.raises(DeviceNotFoundError):
            await app.keys.provision(bob, OTHER, der(7))
        issued = await app.devices.issue_claim_code(admin, OTHER)
        taken = await app.keys.provision(bob, OTHER, der(7), claim_code=issued.code)
        assert (taken.record.owner, taken.record.key_fingerprint) == (BOB, fp(7))
        assert await actions(store, OTHER) == ["provisioned", "claimed", "claim_code_issued", "registered"]
        with pytest.raises(InvalidInputError, match="product_id"):
            await app.keys.provision(bob, OTHER, der(7), product_id=2**63)

    run(scenario)


def test_approving_names_the_key_and_a_changed_pending_key_approves_nothing() -> None:
    async def scenario(app: Application, store: MemoryStore, sessions: RecordedSessions) -> None:
        await store.keys.save_pending_key(PendingKey(DEVICE, der(5), fp(5), fp(1), NOW, NOW, 2, "198.51.100.7:1"))
        with pytest.raises(PendingKeyChangedError) as changed:
            await app.keys.approve(alice, "kitchen", fp(6))
        assert changed.value.pending == [fp(5)]
        with pytest.raises(InvalidInputError, match="fingerprint"):
            await app.keys.approve(alice, "kitchen", "SHA256:abc")  # too short to name a key
        record = await app.keys.approve(alice, "kitchen", fp(5)[:23].upper())  # what `policy pending` shows
        assert record.key_fingerprint == fp(5)
        assert sessions.told[-1] == ("key_approved", DEVICE, fp(5))
        assert await store.keys.list_pending_keys(DEVICE) == []
        (entry, *_) = await store.audit.recent(DEVICE)
        assert (entry.action, entry.actor, entry.old_fingerprint, entry.new_fingerprint) == (
            "approved",
            ALICE,
            fp(1),
            fp(5),
        )
        await store.keys.save_pending_key(PendingKey(DEVICE, der(8), fp(8), fp(5), NOW, NOW, 1))
        rejected = await app.keys.reject(alice, DEVICE, fp(8))
        assert rejected.fingerprint == fp(8)
        assert sessions.told[-1] == ("key_rejected", DEVICE, fp(8))

    run(scenario)


def test_an_ambiguous_prefix_names_no_key() -> None:
    pending = [
        PendingKey(DEVICE, b"", "SHA256:" + "a" * 16 + "1" * 48, None, NOW, NOW),
        PendingKey(DEVICE, b"", "SHA256:" + "a" * 16 + "2" * 48, None, NOW, NOW),
    ]
    with pytest.raises(PendingKeyChangedError):
        match_fingerprint(DEVICE, "sha256:" + "a" * 16, pending)
    assert match_fingerprint(DEVICE, "a" * 16 + "2", pending) is pending[1]


def test_a_rekey_window_is_for_a_device_that_lost_its_key() -> None:
    async def scenario(app: Application, store: MemoryStore, sessions: RecordedSessions) -> None:
        for seconds in (0, -5, float("inf"), float("nan"), 31 * 86400, 2**63):
            with pytest.raises(InvalidInputError, match="seconds"):
                await app.keys.arm_rekey(alice, DEVICE, seconds)
        sessions.connected_devices.add(DEVICE)
        with pytest.raises(ConflictError, match="has not lost its key"):
            await app.keys.arm_rekey(alice, DEVICE, 600)
        sessions.connected_devices.clear()
        window = await app.keys.arm_rekey(alice, "kitchen", 600)
        assert window.until == NOW + timedelta(seconds=600)
        # The device connects with its registered key: the window closes, the owner is told.
        await Handshakes(app.context).session_proven(DEVICE, fp(1))
        assert await store.keys.get_rekey(DEVICE) is None
        assert await actions(store, DEVICE) == ["rekey_cancelled", "rekey_armed", "registered"]

    run(scenario)


def test_the_key_the_window_replaced_connecting_again_undoes_it() -> None:
    async def scenario(app: Application, store: MemoryStore, sessions: RecordedSessions) -> None:
        # The window took K5 in place of K1; then a session proved K1 (it raced the window's decision).
        record = await store.devices.get(DEVICE)
        assert record is not None
        record.public_key_der, record.key_fingerprint = der(5), fp(5)
        await store.devices.save(record)
        await store.keys.save_rekey(
            RekeyWindow(DEVICE, NOW + timedelta(hours=1), ALICE, NOW, fp(5), NOW, der(1), fp(1))
        )
        await Handshakes(app.context).session_proven(DEVICE, fp(1))
        restored = await store.devices.get(DEVICE)
        assert restored is not None
        assert restored.key_fingerprint == fp(1)
        assert [p.fingerprint for p in await store.keys.list_pending_keys(DEVICE)] == [fp(5)]
        assert sessions.told[-1] == ("close_sessions", DEVICE, fp(1))
        assert (await actions(store, DEVICE))[0] == "rekey_reverted"

    run(scenario)


def test_key_policies() -> None:
    async def scenario(app: Application, store: MemoryStore, sessions: RecordedSessions) -> None:
        policy = await app.keys.set_device_policy(alice, "kitchen", "quarantine")
        assert (policy.scope, policy.mode) == (DEVICE, KeyPolicyMode.QUARANTINE)
        with pytest.raises(InvalidInputError, match="mode"):
            await app.keys.set_device_policy(alice, DEVICE, "lenient")
        with pytest.raises(DeviceNotFoundError):
            await app.keys.set_device_policy(OPERATOR, "kitchne", KeyPolicyMode.STRICT)  # a typo: refused
        fleet = await app.keys.set_fleet_policy(OPERATOR, trust_on_first_use=True)
        assert (fleet.mode, fleet.trust_on_first_use, fleet.self_registration) == (KeyPolicyMode.STRICT, True, False)
        fleet, own = await app.keys.policies(bob)
        assert (fleet.trust_on_first_use, own) == (True, [])
        assert [p.scope for p in (await app.keys.policies(alice))[1]] == [DEVICE]
        assert await app.keys.clear_device_policy(alice, DEVICE)
        trail = await store.audit.recent()
        assert [e.action for e in trail[:3]] == ["policy_cleared", "policy_set", "policy_set"]
        assert trail[1].subject == "fleet"
        with pytest.raises(PermissionDeniedError):
            await app.keys.audit(bob)

    run(scenario)


# -- accounts ---------------------------------------------------------------------------------------


def test_accounts_and_roles() -> None:
    async def scenario(app: Application, store: MemoryStore, sessions: RecordedSessions) -> None:
        with pytest.raises(PermissionDeniedError):
            await app.accounts.create_user(alice, "carol@example.com", "a good password")
        with pytest.raises(AlreadyExistsError):
            await app.accounts.create_user(admin, ALICE.upper(), "a good password")
        for bad in ("carol@example.com\n", "car ol", "", "x" * 300):
            with pytest.raises(InvalidInputError, match="username"):
                await app.accounts.create_user(admin, bad, "a good password")
        for bad in ("short", "x" * 2000):
            with pytest.raises(InvalidInputError, match="password"):
                await app.accounts.create_user(admin, "carol@example.com", bad)
        with pytest.raises(PermissionDeniedError):
            await app.accounts.users(alice)
        with pytest.raises(PermissionDeniedError):
            await app.accounts.set_role(alice, ALICE, Role.ADMIN)
        assert (await app.accounts.set_role(admin, ALICE, Role.ADMIN)).role is Role.ADMIN
        with pytest.raises(NotFoundError):  # someone else's account: as if it did not exist
            await app.accounts.remove_user(bob, ALICE)
        await app.accounts.remove_user(alice, ALICE)
        assert (await store.devices.get(DEVICE)).owner is None  # type: ignore[union-attr]
        assert sessions.told[-1] == ("owner_changed", DEVICE, "None")
        trail = [(e.action, e.subject) for e in await store.audit.recent(subject=ALICE)]
        assert trail[:2] == [("user_removed", ALICE), ("role_changed", ALICE)]

    run(scenario)


def test_logins_sent_at_once_get_no_more_checks_than_the_limit() -> None:
    """A hundred wrong passwords sent together: each is counted before its (slow) check, so only as many as the
    limit are checked and the rest are refused at once; a right password taken back from the count."""

    async def scenario(app: Application, store: MemoryStore, sessions: RecordedSessions) -> None:
        async def attempt(password: str, address: str) -> str:
            try:
                await app.accounts.login(ALICE, password, "CLI2", 60, address=address)
            except TooManyRequestsError:
                return "throttled"
            except InvalidCredentialsError:
                return "checked"
            return "ok"

        # A good login first: it takes its count back, so it does not use up the limit.
        assert await attempt("a good password", "192.0.2.1") == "ok"
        outcomes = await asyncio.gather(*(attempt(f"guess {n}", f"192.0.2.{n}") for n in range(100)))
        assert outcomes.count("checked") == app.accounts.limits.per_account
        assert outcomes.count("throttled") == 100 - app.accounts.limits.per_account
        assert (await actions(store)).count("login_failed") == app.accounts.limits.per_account

    run(scenario)


def test_tokens() -> None:
    async def scenario(app: Application, store: MemoryStore, sessions: RecordedSessions) -> None:
        for lifetime in (-1, 2**63, 11 * 365 * 86400):
            with pytest.raises(InvalidInputError, match="expires_in"):
                await app.accounts.login(ALICE, "a good password", "CLI2", lifetime)
        issued = await app.accounts.login(ALICE, "a good password", "CLI2\n\x00", 60)
        assert issued.record.client_id == "CLI2"
        assert await app.accounts.resolve(issued.token) == alice
        forever = await app.accounts.login(ALICE, "a good password", "user", 0)
        assert forever.record.expires_at is None
        with pytest.raises(Exception, match="invalid"):
            await app.accounts.login(ALICE, "wrong password", "CLI2", 60)
        with pytest.raises(Exception, match="invalid"):
            await app.accounts.login("nobody@example.com", "a good password", "CLI2", 60)
        app.context.clock = lambda: NOW + timedelta(seconds=61)
        assert await app.accounts.resolve(issued.token) is None  # expired
        assert await app.accounts.resolve(forever.token) == alice
        assert await app.accounts.revoke(forever.token)
        assert await app.accounts.resolve(forever.token) is None
        assert not await app.accounts.revoke(forever.token)
        with pytest.raises(NotFoundError):
            await app.accounts.create_token(bob, ALICE)
        trail = [e.action for e in await store.audit.recent(subject=ALICE)]
        # the wrong password is on the record under the account it was tried against
        assert trail[:4] == ["token_revoked", "login_failed", "token_created", "token_created"]
        assert issued.token not in str(await store.audit.recent())  # never the token itself

    run(scenario)


def test_refresh_tokens_are_spent_by_their_use_and_die_with_the_password() -> None:
    async def scenario(app: Application, store: MemoryStore, sessions: RecordedSessions) -> None:
        first = await app.accounts.login(ALICE, "a good password", "CLI2", 60)
        assert first.refresh_token is not None
        assert first.refresh_token != first.token
        again = await app.accounts.refresh(first.refresh_token, 3600)
        assert await app.accounts.resolve(again.token) == alice
        assert again.record.client_id == "CLI2"  # the client it was first given to
        assert again.refresh_token not in (None, first.refresh_token)  # rotated
        # Unknown ones get nothing. (A spent one presented again revokes its family: test_refresh_token_reuse.py.)
        for unknown in ("0" * 40, "", "x" * 600):
            with pytest.raises(InvalidRefreshTokenError):
                await app.accounts.refresh(unknown, 60)
        assert again.refresh_token is not None
        latest = (await app.accounts.refresh(again.refresh_token, 60)).refresh_token
        assert latest is not None
        # A password change revokes the refresh tokens too: whoever learnt the old password keeps nothing.
        await app.accounts.change_password(alice, "a good password", "a better password")
        with pytest.raises(InvalidRefreshTokenError):
            await app.accounts.refresh(latest, 60)
        # And they expire.
        late = await app.accounts.login(ALICE, "a better password", "CLI2", 60)
        assert late.refresh_token is not None
        app.context.clock = lambda: NOW + timedelta(days=31)
        with pytest.raises(InvalidRefreshTokenError):
            await app.accounts.refresh(late.refresh_token, 60)
        trail = str(await store.audit.recent(subject=ALICE))
        assert "with a refresh token" in trail
        assert late.refresh_token not in trail

    run(scenario)


def test_notes_are_the_owners_to_write_and_audited_without_their_text() -> None:
    async def scenario(app: Application, store: MemoryStore, sessions: RecordedSessions) -> None:
        record = await app.devices.set_notes(alice, "kitchen", "Under the sink.\nReplace in May.")
        assert record.notes == "Under the sink.\nReplace in May."
        assert (await store.devices.get(DEVICE)).notes == record.notes  # type: ignore[union-attr]
        with pytest.raises(DeviceNotFoundError):
            await app.devices.set_notes(bob, DEVICE, "mine now")
        for bad in ("x" * 1001, "bell\x07", "esc\x1b[2J", "\ud800"):
            with pytest.raises(InvalidInputError, match="notes"):
                await app.devices.set_notes(alice, DEVICE, bad)
        assert (await app.devices.set_notes(admin, DEVICE, "")).notes is None
        entries = [e for e in await store.audit.recent(DEVICE) if e.action == "notes_changed"]
        assert [(e.actor, e.detail) for e in entries] == [(ADMIN, "cleared"), (ALICE, "31 characters")]
        assert "sink" not in str(entries)

    run(scenario)


def test_a_device_claimed_by_its_own_code_loses_a_name_its_new_owner_already_uses() -> None:
    async def scenario(app: Application, store: MemoryStore, sessions: RecordedSessions) -> None:
        await app.devices.rename(alice, "kitchen", "shed")  # OTHER, ownerless, is "shed" too
        issued = await app.devices.issue_claim_code(alice)
        record = await app.devices.claimed_by_device(OTHER, issued.code)
        assert record is not None
        assert (record.owner, record.name) == (ALICE, None)
        (entry,) = [e for e in await store.audit.recent(OTHER) if e.action == "claimed"]
        assert "its name 'shed' was another of the account's devices'" in (entry.detail or "")

    run(scenario)
