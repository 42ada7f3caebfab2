"""The fuzz targets in the normal test run: a short, deterministic budget each.

Two parts per target: every input of its corpus (tests/fuzz/corpus/<target>/: the seeds from the real
recordings and logs, and what the long runs of `scripts/fuzz` kept) replayed in-process, then a short
atheris run from that corpus with a fixed seed and a fixed number of runs. Long runs: `scripts/fuzz`.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fuzz_targets import CORPUS, TARGETS, corpus_name, seeds

HERE = Path(__file__).parent


def _corpus(name: str) -> list[Path]:
    return sorted((CORPUS / name).iterdir())


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_corpus_replays(name: str) -> None:
    """Every kept input still keeps the invariant (the targets raise on a breach)."""
    files = _corpus(name)
    assert files, f"tests/fuzz/corpus/{name} is empty: run scripts/fuzz --seed"
    for path in files:
        TARGETS[name].run(path.read_bytes())


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_corpus_holds_the_seeds(name: str) -> None:
    """The corpus starts from the recordings: a changed seed means `scripts/fuzz --seed` was not rerun."""
    present = {path.name for path in _corpus(name)}
    missing = [corpus_name(seed) for seed in seeds(name) if corpus_name(seed) not in present]
    assert not missing, f"{len(missing)} seeds of {name} are not in its corpus: run scripts/fuzz --seed"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_atheris_short_run(name: str, tmp_path: Path) -> None:
    """A coverage-guided run from the corpus: fixed seed, fixed number of runs, fixed hash seed, so the
    same inputs every time. New inputs go to a scratch directory, never into the repository."""
    # Looked up, not imported: atheris belongs in the fuzzing process only.
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is in the dev extra: pip install -e '.[dev]'")
    target = TARGETS[name]
    scratch = tmp_path / "new"
    scratch.mkdir()
    command = [
        sys.executable,
        str(HERE / "atheris_main.py"),
        name,
        "-seed=1",
        f"-runs={target.short_runs + len(_corpus(name))}",
        f"-max_len={target.max_len}",
        f"-timeout={target.timeout}",
        f"-artifact_prefix={tmp_path}/",
        "-print_final_stats=1",
        str(scratch),
        str(CORPUS / name),
    ]
    dictionary = HERE / "dicts" / f"{name}.dict"
    if dictionary.exists():
        command.insert(3, f"-dict={dictionary}")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 0, f"atheris found a breach in {name}:\n{result.stderr[-6000:]}"
