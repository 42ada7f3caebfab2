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
