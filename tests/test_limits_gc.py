"""A serving process puts its start-up objects out of the cyclic collector's sight (`freeze_startup_objects`):
a full collection then walks only what was created since, and garbage made afterwards is still collected."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap


def test_start_up_objects_are_frozen_and_later_cycles_still_collected() -> None:
    # In a process of its own: freezing is for the life of the process.
    script = textwrap.dedent(
        """
        import gc, weakref
        from cyan.limits import freeze_startup_objects
        import cyan.api  # a serving process's modules
        frozen = freeze_startup_objects()
        assert frozen > 10_000, frozen
        assert frozen == gc.get_freeze_count()
        assert len(gc.get_objects()) < frozen / 10

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made after start-up
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
        print("ok", frozen)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")
    assert gc.get_freeze_count() == 0  # this process is untouched


def _run(script: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_slow_full_collection_freezes_what_survived_it_and_a_quick_one_does_not() -> None:
    out = _run(
        """
        import gc
        from cyan.limits import CollectorPolicy
        import cyan.api  # objects enough for a full collection to take a while

        before = gc.get_threshold()
        quick = CollectorPolicy(slow=3600.0)
        quick.install()
        assert gc.get_threshold() == (before[0], before[1], 1)  # a full collection as often as one may run
        gc.collect()
        assert (gc.get_freeze_count(), quick.freezes) == (0, 0)
        quick.uninstall()
        assert gc.get_threshold() == before

        slow = CollectorPolicy(slow=0.0)
        slow.install()
        survivors = len(gc.get_objects())
        gc.collect()
        assert slow.freezes == 1
        assert gc.get_freeze_count() >= survivors * 0.9, (gc.get_freeze_count(), survivors)
        assert len(gc.get_objects()) < 100
        gc.collect(1)  # a young generation's collection freezes nothing
        assert slow.freezes == 1
        slow.uninstall()
        gc.collect()
        assert slow.freezes == 1  # uninstalled: it no longer sees the collections
        print("ok")
        """
    )
    assert out == "ok\n"


def test_a_cycle_frozen_alive_is_collected_by_the_next_whole_heap_collection() -> None:
    out = _run(
        """
        import asyncio, gc, weakref
        from cyan.limits import CollectorPolicy

        class Node:
            pass

        policy = CollectorPolicy(slow=0.0)
        policy.install()
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        gc.collect()  # the cycle is alive: frozen with the rest
        del a, b
        gc.collect()
        assert gone() is not None  # garbage now, but frozen: out of the collector's sight
        freezes = policy.freezes
        assert policy.reclaim() >= 2
        assert gone() is None
        assert policy.freezes == freezes  # its own collection is not one the policy freezes after
        assert gc.get_freeze_count() > 0  # what survived is frozen again

        async def twice() -> None:
            task = asyncio.create_task(policy.reclaim_every(0.01))
            while policy.reclaims < 3:
                await asyncio.sleep(0.01)
            task.cancel()

        asyncio.run(twice())
        print("ok")
        """
    )
    assert out == "ok\n"


def test_while_serving_the_policy_is_installed_and_reclaims_run_and_both_end_with_it() -> None:
    out = _run(
        """
        import asyncio, gc
        from cyan.limits import CollectorPolicy

        before = gc.get_threshold()

        async def serve() -> None:
            policy = CollectorPolicy()
            async with policy.serving():
                assert gc.get_freeze_count() > 0  # what starting made, frozen with the start-up objects
                assert policy._observe in gc.callbacks
                assert gc.get_threshold()[2] == 1
                [reclaims] = [t for t in asyncio.all_tasks() if t.get_name() == "cyan-reclaim"]
            assert policy._observe not in gc.callbacks
            assert gc.get_threshold() == before
            await asyncio.sleep(0)
            assert reclaims.cancelled()

        asyncio.run(serve())
        print("ok")
        """
    )
    assert out == "ok\n"
