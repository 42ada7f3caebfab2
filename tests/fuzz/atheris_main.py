"""Run one fuzz target under atheris (libFuzzer, coverage-guided over Cyan's own code).

    python tests/fuzz/atheris_main.py TARGET [libFuzzer options] [CORPUS_DIR ...]

`scripts/fuzz` runs it for long runs, the tests for short ones. Only `cyan` is instrumented: coverage of
the standard library and of the test harness would only dilute the feedback.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).parent))

with atheris.instrument_imports(include=["cyan"]):
    import fuzz_targets


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in fuzz_targets.TARGETS:
        names = ", ".join(fuzz_targets.TARGETS)
        raise SystemExit(f"usage: {argv[0]} TARGET [libFuzzer options] [CORPUS ...]; targets: {names}")
    target = fuzz_targets.TARGETS[argv[1]]
    # libFuzzer runs its first argument through the shell for -merge (and -fork): give it the command that
    # starts this same target, not the bare path of this script.
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} {target.name}"
    atheris.Setup([command, *argv[2:]], target.run)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
