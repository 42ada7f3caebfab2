"""The fleet's read queries (DeviceRepository.search, AttemptRepository.latest): the same answers from every
store implementation, filtered, sorted and paged by the store."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cyan.cloud.models import AttemptOutcome, DeviceRecord, PendingKey
from cyan.cloud.ports import Store
from cyan.cloud.queries import DevicePage, DeviceQuery, DeviceSort, DeviceStatus
from store_support import T0, StoreFactory, attempt, run


def _id(n: int) -> str:
    return f"{n:024x}"


def _fleet() -> list[DeviceRecord]:
    """Ten devices: even ones alice's, odd ones bob's; 0-3 online; photons and P1s; some never heard from."""
    return [
        DeviceRecord(
            id=_id(n),
            name=f"dev_{n:02d}" if n != 9 else None,
            owner="alice" if n % 2 == 0 else "bob",
            platform_id=6 if n < 6 else 8,
            product_version=n % 3,
            system_version=3103 if n % 2 else 1201,
            online=n < 4,
            last_heard=None if n >= 8 else T0 + timedelta(minutes=n),
        )
        for n in range(10)
    ]


async def _seeded(store: Store) -> None:
    await store.devices.add_many(_fleet())
    await store.updates.add_to_group("porch", [_id(1), _id(2), _id(5)])
    await store.keys.save_pending_key(PendingKey(_id(6), b"k", "SHA256:new", "SHA256:old", T0, T0))
    # Device 4: failed, then connected (not failing). Device 5: connected, then failed twice (failing).
    # Device 7: failed long ago only (not failing now). Device 2: failed but is online (not failing).
    await store.attempts.add(
        [
            attempt(T0, device_id=_id(4)),
            attempt(T0 + timedelta(seconds=5), device_id=_id(4), outcome=AttemptOutcome.CONNECTED),
            attempt(T0, device_id=_id(5), outcome=AttemptOutcome.CONNECTED),
            attempt(T0 + timedelta(seconds=5), device_id=_id(5)),
            attempt(T0 + timedelta(seconds=9), device_id=_id(5)),
            attempt(T0 - timedelta(days=2), device_id=_id(7)),
            attempt(T0, device_id=_id(2)),
            attempt(T0, device_id=None),
        ]
    )


def _searches(make: StoreFactory, *queries: DeviceQuery) -> list[DevicePage]:
    async def scenario() -> list[DevicePage]:
        async with make() as store:
            await _seeded(store)
            return [await store.devices.search(query) for query in queries]

    return run(scenario())


def _search(make: StoreFactory, query: DeviceQuery) -> DevicePage:
    return _searches(make, query)[0]


def _ids(page: DevicePage) -> list[int]:
    return [int(d.id, 16) for d in page.devices]


def test_an_empty_query_pages_every_device_by_id(make: StoreFactory) -> None:
    page = _search(make, DeviceQuery(limit=4, offset=2))
    assert page.total == 10
    assert _ids(page) == [2, 3, 4, 5]
    assert page.devices[0] == _fleet()[2]


def test_a_limit_of_zero_only_counts(make: StoreFactory) -> None:
    assert _search(make, DeviceQuery(owner="alice", limit=0)) == DevicePage(5, [])


def test_a_page_past_the_end_is_empty_with_the_total(make: StoreFactory) -> None:
    assert _search(make, DeviceQuery(offset=50)) == DevicePage(10, [])


def test_owner_and_text_filter(make: StoreFactory) -> None:
    pages = _searches(
        make,
        DeviceQuery(owner="bob"),
        DeviceQuery(text="DEV_0"),  # part of a name, in any case
        DeviceQuery(text="0009"),  # part of an id
        DeviceQuery(text="%"),  # LIKE's wildcards are looked for as written
        DeviceQuery(text="v_1"),
    )
    assert [_ids(p) for p in pages] == [[1, 3, 5, 7, 9], [0, 1, 2, 3, 4, 5, 6, 7, 8], [9], [], []]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (DeviceStatus.ONLINE, [0, 1, 2, 3]),
        (DeviceStatus.OFFLINE, [4, 5, 6, 7, 8, 9]),
        (DeviceStatus.PENDING, [6]),
        (DeviceStatus.FAILING, [5]),
    ],
)
def test_status_filters(make: StoreFactory, status: DeviceStatus, expected: list[int]) -> None:
    query = DeviceQuery(status=status, failing_since=T0 - timedelta(hours=1))
    assert _ids(_search(make, query)) == expected


def test_failing_needs_a_since(make: StoreFactory) -> None:
    with pytest.raises(ValueError, match="failing_since"):
        _search(make, DeviceQuery(status=DeviceStatus.FAILING))


def test_group_platform_versions_and_last_seen(make: StoreFactory) -> None:
    pages = _searches(
        make,
        DeviceQuery(group="porch"),
        DeviceQuery(group="nobody"),
        DeviceQuery(platform_id=8),
        DeviceQuery(product_version=0, system_version=1201),
        DeviceQuery(seen_after=T0 + timedelta(minutes=2), seen_before=T0 + timedelta(minutes=5)),
    )
    assert [_ids(p) for p in pages] == [[1, 2, 5], [], [6, 7, 8, 9], [0, 6], [2, 3, 4]]


def test_sorting_puts_unknown_values_last_and_breaks_ties_by_id(make: StoreFactory) -> None:
    pages = _searches(
        make,
        DeviceQuery(sort=DeviceSort.LAST_HEARD, descending=True),
        DeviceQuery(sort=DeviceSort.LAST_HEARD),
        DeviceQuery(sort=DeviceSort.NAME, descending=True, limit=3),
        DeviceQuery(sort=DeviceSort.PRODUCT_VERSION),
        DeviceQuery(sort=DeviceSort.ONLINE, descending=True, limit=5),
    )
    assert [_ids(p) for p in pages] == [
        [7, 6, 5, 4, 3, 2, 1, 0, 9, 8],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [8, 7, 6],
        [0, 3, 6, 9, 1, 4, 7, 2, 5, 8],
        [3, 2, 1, 0, 9],
    ]


def test_latest_attempt_of_each_device(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await _seeded(store)
            latest = await store.attempts.latest([_id(4), _id(5), _id(7), _id(8), _id(5).upper()])
            assert sorted(latest) == [_id(4), _id(5), _id(7)]
            assert latest[_id(4)].outcome is AttemptOutcome.CONNECTED
            assert latest[_id(5)].started_at == T0 + timedelta(seconds=9)
            recent = await store.attempts.latest([_id(4), _id(7)], since=T0 - timedelta(hours=1))
            assert sorted(recent) == [_id(4)]
            assert await store.attempts.latest([]) == {}

    run(scenario())
