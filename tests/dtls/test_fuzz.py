"""Random and mutated bytes into every parser and endpoint produce only the package's own errors and
events (h11's fuzz invariant, design §5 habit 4); a short coverage-guided atheris run of each target; and
the inputs such runs once crashed on, kept as regressions."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .fuzz_targets import TARGETS, seeds

REPO = Path(__file__).parents[2]
REGRESSIONS = Path(__file__).parent / "fuzz_regressions"


@st.composite
def mutated(draw: st.DrawFn, target: str) -> bytes:
    """A seed with a few bytes flipped, cut, or spliced: random bytes alone rarely pass the first checks."""
    data = bytearray(draw(st.sampled_from(seeds(target))))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@pytest.mark.parametrize("target", sorted(TARGETS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_and_mutated_input_raises_only_our_errors(target: str, data: st.DataObject) -> None:
    payload = data.draw(st.one_of(st.binary(max_size=600), mutated(target)))
    TARGETS[target](payload)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_the_seeds_are_valid_input(target: str) -> None:
    for seed in seeds(target):
        TARGETS[target](seed)


def _regressions() -> list[tuple[str, Path]]:
    return [(p.parent.name, p) for p in sorted(REGRESSIONS.glob("*/*")) if p.is_file()]


@pytest.mark.parametrize(("target", "path"), _regressions(), ids=lambda v: getattr(v, "name", v))
def test_inputs_that_once_crashed_stay_fixed(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed")
@pytest.mark.parametrize("target", ["records", "server", "established"])
def test_a_short_coverage_guided_run_finds_nothing(target: str, tmp_path: Path) -> None:
    """A few thousand libFuzzer inputs per target (a second or two; a fixed count and seed, so the same
    inputs every run); `scripts/fuzz-dtls` runs the same for as long as wanted."""
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "fuzz-dtls"),
            target,
            "--runs",
            "4000",
            "--seconds",
            "60",
            "--artifacts",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
