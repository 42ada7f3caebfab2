"""The key policy's decision (`cyan.cloud.keypolicy.decide`), as a table over every policy and situation: what a
device is allowed to connect with, and everything the decision changes (docs/keys.md)."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from functools import cache

import pytest

from cyan.cloud.keypolicy import Decision, KeySituation, decide
from cyan.cloud.models import DeviceRecord, KeyPolicy, KeyPolicyMode, PendingKey, RekeyWindow
from cyan.keys import fingerprint, public_key_der
from cyan.testing import fixed_device_key

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DEVICE = "ab" * 12
PEER = "198.51.100.7:4000"


@cache
def der(n: int) -> bytes:
    return public_key_der(fixed_device_key(n).public_key())


def fp(n: int) -> str:
    return fingerprint(der(n))


K0, K1, K2 = 0, 1, 2  # the registered key, a new one, another new one


def registered(key: int | None = K0) -> DeviceRecord:
    if key is None:
        return DeviceRecord(id=DEVICE, owner="alice")
    return DeviceRecord(id=DEVICE, owner="alice", public_key_der=der(key), key_fingerprint=fp(key))


def policy(mode: KeyPolicyMode = KeyPolicyMode.STRICT, *, tofu: bool = False) -> KeyPolicy:
    return KeyPolicy("*", mode, tofu)


def window(*, accepted: int | None = None, open_: bool = True) -> RekeyWindow:
    until = NOW + timedelta(hours=1) if open_ else NOW - timedelta(seconds=1)
    if accepted is None:
        return RekeyWindow(DEVICE, until, "alice", NOW - timedelta(minutes=5))
    return RekeyWindow(
        DEVICE,
        until,
        "alice",
        NOW - timedelta(minutes=5),
        accepted_fingerprint=fp(accepted),
        accepted_at=NOW - timedelta(minutes=1),
        previous_key_der=der(K0),
        previous_fingerprint=fp(K0),
    )


def situation(
    presented: int | None,
    record: DeviceRecord | None,
    *,
    pol: KeyPolicy | None = None,
    win: RekeyWindow | None = None,
    pending: tuple[PendingKey, ...] = (),
    connected: bool = False,
) -> KeySituation:
    return KeySituation(
        DEVICE,
        None if presented is None else der(presented),
        record,
        pol or policy(),
        win,
        pending,
        connected,
        NOW,
        PEER,
    )


def outcome(decision: Decision) -> str:
    if decision.trusted_key_der is None:
        assert decision.reason is not None
        return f"refused:{decision.reason.value}"
    which = {der(n): name for n, name in ((K0, "K0"), (K1, "K1"), (K2, "K2"))}[decision.trusted_key_der]
    return f"{'quarantined' if decision.quarantined else 'accepted'}:{which}"


def actions(decision: Decision) -> list[str]:
    return [entry.action for entry in decision.effects.audit]


STRICT, QUARANTINE = policy(), policy(KeyPolicyMode.QUARANTINE)
TOFU = policy(tofu=True)
PENDING_K1 = (PendingKey(DEVICE, der(K1), fp(K1), fp(K0), NOW - timedelta(hours=1), NOW - timedelta(hours=1), 4),)

#: (case, situation, outcome, audit actions, registered key after, pending keys after)
TABLE = [
    ("unknown device, strict", situation(K1, None), "refused:unknown_device", [], None, []),
    (
        "unknown device, trust on first use",
        situation(K1, None, pol=TOFU),
        "accepted:K1",
        ["trusted_on_first_use"],
        K1,
        [],
    ),
    ("unknown device, nothing presented", situation(None, None, pol=TOFU), "refused:unknown_device", [], None, []),
    ("registered without a key", situation(K1, registered(None)), "refused:key_rejected", [], None, []),
    (
        "registered without a key, tofu",
        situation(K1, registered(None), pol=TOFU),
        "accepted:K1",
        ["trusted_on_first_use"],
        K1,
        [],
    ),
    ("the registered key", situation(K0, registered()), "accepted:K0", [], None, []),
    ("the old Core's identity: no key", situation(None, registered()), "accepted:K0", [], None, []),
    ("the registered key, quarantine policy", situation(K0, registered(), pol=QUARANTINE), "accepted:K0", [], None, []),
    ("a new key, strict", situation(K1, registered()), "refused:key_mismatch", ["refused"], None, [K1]),
    (
        "a new key seen before, strict",
        situation(K1, registered(), pending=PENDING_K1),
        "refused:key_mismatch",
        [],
        None,
        [K1],
    ),
    (
        "a new key, quarantine",
        situation(K1, registered(), pol=QUARANTINE),
        "quarantined:K1",
        ["quarantined"],
        None,
        [K1],
    ),
    (
        "a new key, trust on first use is no excuse",
        situation(K1, registered(), pol=TOFU),
        "refused:key_mismatch",
        ["refused"],
        None,
        [K1],
    ),
    ("a new key while connected", situation(K1, registered(), connected=True), "refused:key_mismatch", [], None, []),
    (
        "a new key while connected, quarantine",
        situation(K1, registered(), pol=QUARANTINE, connected=True),
        "refused:key_mismatch",
        [],
        None,
        [],
    ),
    (
        "a new key while connected, window",
        situation(K1, registered(), win=window(), connected=True),
        "refused:key_mismatch",
        [],
        None,
        [],
    ),
    (
        "a new key in a window",
        situation(K1, registered(), win=window(), pending=PENDING_K1),
        "accepted:K1",
        ["rekey_used"],
        K1,
        [],
    ),
    ("the registered key in a window", situation(K0, registered(), win=window()), "accepted:K0", [], None, []),
    (
        "a new key in an expired window",
        situation(K1, registered(), win=window(open_=False)),
        "refused:key_mismatch",
        ["refused"],
        None,
        [K1],
    ),
    ("the accepted key again", situation(K1, registered(K1), win=window(accepted=K1)), "accepted:K1", [], None, []),
    (
        "the replaced key comes back",
        situation(K0, registered(K1), win=window(accepted=K1)),
        "accepted:K0",
        ["rekey_reverted"],
        K0,
        [K1],
    ),
    (
        "a second new key in one window",
        situation(K2, registered(K1), win=window(accepted=K1)),
        "refused:key_mismatch",
        ["rekey_conflict"],
        K0,
        [K1, K2],
    ),
    (
        "a second new key while the window's key is connected",
        situation(K2, registered(K1), win=window(accepted=K1), connected=True),
        "refused:key_mismatch",
        ["rekey_conflict"],
        K0,
        [K1, K2],
    ),
    (
        "the replaced key while the window's key is connected",
        situation(K0, registered(K1), win=window(accepted=K1), connected=True),
        "accepted:K0",
        ["rekey_reverted"],
        K0,
        [K1],
    ),
]


@pytest.mark.parametrize(
    ("case", "given", "expected", "audited", "key_after", "pending_after"), TABLE, ids=[t[0] for t in TABLE]
)
def test_the_decision_table(
    case: str, given: KeySituation, expected: str, audited: list[str], key_after: int | None, pending_after: list[int]
) -> None:
    decision = decide(given)
    assert outcome(decision) == expected
    assert actions(decision) == audited
    saved = decision.effects.save_record
    if key_after is None:
        assert saved is None or saved.public_key_der == (given.record.public_key_der if given.record else None)
    else:
        assert saved is not None
        assert (saved.public_key_der, saved.key_fingerprint) == (der(key_after), fp(key_after))
    assert sorted(p.fingerprint for p in decision.effects.save_pending) == sorted(fp(n) for n in pending_after)


def test_a_window_that_accepted_a_key_keeps_the_key_it_replaced() -> None:
    decision = decide(situation(K1, registered(), win=window(), pending=PENDING_K1))
    stored = decision.effects.save_window
    assert stored is not None
    assert (stored.accepted_fingerprint, stored.previous_fingerprint, stored.previous_key_der) == (
        fp(K1),
        fp(K0),
        der(K0),
    )
    assert decision.effects.remove_pending == [fp(K1)]


def test_undoing_a_window_closes_the_sessions_of_the_key_it_had_accepted() -> None:
    for presented in (K0, K2):
        decision = decide(situation(presented, registered(K1), win=window(accepted=K1)))
        assert decision.effects.close_sessions
        assert decision.effects.remove_window
        assert decision.record is not None
        assert decision.record.key_fingerprint == fp(K0)


def test_the_registered_key_with_an_armed_window_asks_for_a_look_once_proven() -> None:
    assert decide(situation(K0, registered(), win=window())).window_armed
    assert not decide(situation(K0, registered())).window_armed


def test_an_expired_window_is_removed() -> None:
    decision = decide(situation(K0, registered(), win=window(open_=False)))
    assert decision.accepted
    assert decision.effects.remove_window
    assert not decision.window_armed


# -- what holds in every situation ---------------------------------------------------------------

RECORDS = [None, registered(None), registered(K0), registered(K1)]
PRESENTED = [None, K0, K1, K2]
POLICIES = [STRICT, QUARANTINE, TOFU, policy(KeyPolicyMode.QUARANTINE, tofu=True)]
WINDOWS = [None, window(), window(accepted=K1), window(open_=False)]
PENDINGS = [(), PENDING_K1]


def every_situation() -> list[KeySituation]:
    return [
        situation(presented, record, pol=pol, win=win, pending=pending, connected=connected)
        for record, presented, pol, win, pending, connected in itertools.product(
            RECORDS, PRESENTED, POLICIES, WINDOWS, PENDINGS, (False, True)
        )
        # A window that accepted K1 means K1 is the registered key.
        if not (win is not None and win.accepted_fingerprint is not None and record != registered(K1))
    ]


def test_a_key_other_than_the_registered_one_never_changes_a_connected_device() -> None:
    """...unless a re-key window accepted the registered key: then it is only provisional (test below)."""
    for s in every_situation():
        if not s.connected or s.record is None or s.record.public_key_der is None:
            continue
        if s.window is not None and s.window.accepted_fingerprint is not None and s.window.open_at(NOW):
            continue
        if s.presented_der in (None, s.record.public_key_der):
            continue
        decision = decide(s)
        assert not decision.accepted, s
        effects = dataclasses.replace(decision.effects, remove_window=False)  # an expired window may go
        assert not effects.writes, s


def test_every_key_change_is_audited_and_only_a_window_or_first_use_changes_a_key() -> None:
    for s in every_situation():
        decision = decide(s)
        saved = decision.effects.save_record
        before = s.record.public_key_der if s.record is not None else None
        if saved is not None and saved.public_key_der != before:
            assert decision.effects.audit, s
            assert {e.action for e in decision.effects.audit} <= {
                "trusted_on_first_use",
                "rekey_used",
                "rekey_reverted",
                "rekey_conflict",
            }, s


def test_a_new_key_gets_access_only_by_first_use_or_a_window_else_quarantine() -> None:
    for s in every_situation():
        decision = decide(s)
        if not decision.accepted or decision.trusted_key_der in (
            None,
            before := (s.record.public_key_der if s.record else None),
        ):
            continue
        first_use = s.policy is not None and s.policy.trust_on_first_use and (s.record is None or before is None)
        in_window = s.window is not None and s.window.open_at(NOW)
        assert decision.quarantined or first_use or in_window, s


def test_one_window_never_accepts_two_different_new_keys() -> None:
    for s in every_situation():
        w = s.window
        if w is None or w.accepted_fingerprint is None or not w.open_at(NOW):
            continue
        decision = decide(s)
        if decision.accepted:
            assert decision.trusted_key_der in (der(K0), der(K1)), s  # the accepted key, or the one it replaced
