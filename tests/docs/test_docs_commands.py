"""Every `cyan` command the README and docs/ show parses as the command line parses it (the command exists,
each option exists and takes its value), in its shortest and its fullest form; the README's operator commands
also run, in order, on a fresh data directory. A doc that names an option that does not exist fails here."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from cyan.app import Actor
from cyan.cli import app as cyan_app
from cyan.cli import main as cyan
from cyan.config import Settings
from cyan.keys import public_key_der
from cyan.service import open_application, prepare_data_directory
from cyan.testing import fixed_device_key

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_SHELL_BLOCK = re.compile(r"```(?:sh|bash|shell|console)\n(.*?)```", re.S)
_OPTIONAL = re.compile(r"\[[^\[\]]*\]")


def shell_lines(doc: Path) -> list[str]:
    """The command lines of a document's shell blocks, continuations joined, comments dropped."""
    lines: list[str] = []
    for block in _SHELL_BLOCK.findall(doc.read_text()):
        joined = block.replace("\\\n", " ")
        for raw in joined.splitlines():
            line = re.sub(r"\s#\s.*$", "", raw).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def cyan_commands(line: str) -> list[str]:
    """The `cyan ...` commands in a shell line: alone, chained with ; && |, or inside $(...)."""
    found = list(re.findall(r"\$\(([^)]*)\)", line))
    rest = re.sub(r"\$\([^)]*\)", "VALUE", line)
    for piece in re.split(r"\s*(?:;|&&|\|\||\||&$)\s*", rest):
        part = re.sub(r"\s[<>]\s*\S+", "", piece).strip()  # redirections
        if part.startswith(("cyan ", ".venv/bin/cyan ")):
            found.append(part)
    return [c for c in found if c.split()[0].endswith("cyan")]


def variants(command: str) -> list[list[str]]:
    """The shortest form (optional [parts] left out) and the fullest (all of them in)."""
    shortest = _OPTIONAL.sub("", command)
    fullest = command.replace("[", "").replace("]", "")
    out = []
    for text in dict.fromkeys((shortest, fullest)):
        words = shlex.split(text)[1:]
        args: list[str] = []
        for word in words:
            if word == "...":
                if args and args[-1].startswith("--"):
                    args.append("x")  # a value left out: any will do for the parser
                continue
            args.append(word.removesuffix("...").split("|")[0])
        out.append(args)
    return out


def parse(args: list[str]) -> None:
    """Parse as `cyan` would, without running: raises the command line's usage error."""
    command: Any = typer.main.get_command(cyan_app)
    name = "cyan"
    while args and args[0] in getattr(command, "commands", {}):
        name, command, args = args[0], command.commands[args[0]], args[1:]
    assert not hasattr(command, "commands"), f"{name}: a command group, not a command"
    command.make_context(name, list(args))


DOC_COMMANDS = [
    (f"{doc.relative_to(ROOT)}: {command}", command)
    for doc in DOCS
    for line in shell_lines(doc)
    for command in cyan_commands(line)
]


def test_the_docs_show_commands() -> None:
    # The collection itself is checked: a change in the code blocks' markup must not leave nothing to test.
    assert len(DOC_COMMANDS) > 50
    assert any("README.md" in label for label, _ in DOC_COMMANDS)


@pytest.mark.parametrize("command", [c for _, c in DOC_COMMANDS], ids=[label for label, _ in DOC_COMMANDS])
def test_each_command_in_the_docs_parses(command: str) -> None:
    for args in variants(command):
        parse(args)


def test_a_command_with_an_option_that_does_not_exist_is_caught() -> None:
    with pytest.raises(Exception, match="No such option"):
        parse(variants("cyan keys inspect --dfu")[0])


def test_the_readme_operator_commands_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The "Using it" block, as written, on a fresh data directory with the files it names."""
    data = tmp_path / "data"
    monkeypatch.setenv("CYAN_DATA_DIR", str(data))
    monkeypatch.chdir(tmp_path)
    settings = Settings(data_dir=data)
    prepare_data_directory(settings)
    (tmp_path / "device_key.der").write_bytes(public_key_der(fixed_device_key(1).public_key()))
    shutil.copy(ROOT / "tests" / "vectors" / "device-os-3.1.0" / "bad_signature.device.log", "device.log")

    async def add_alice() -> None:
        async with open_application(settings) as app:
            await app.accounts.create_user(Actor.operator(), "alice@example.com", "a good password")

    asyncio.run(add_alice())
    text = (ROOT / "README.md").read_text()
    block = _SHELL_BLOCK.findall(text[text.index("## Using it") :])[0]
    ran = []
    for line in block.splitlines():
        for command in cyan_commands(re.sub(r"\s#\s.*$", "", line).strip()):
            if command.startswith("cyan sim"):
                continue  # runs against a server: tests/e2e drives the simulator
            for written in variants(command):
                args = [a.replace("DEVICE_ID", "0123456789abcdef01234567") for a in written]
                if "--server" in args:
                    continue  # the API form: tests/diagnose/test_diagnose_http.py
                status = cyan(args)
                assert status == 0, (args, capsys.readouterr())
                ran.append(args[:2])
    assert ["devices", "add"] in ran
    assert ["devices", "claim"] in ran
    assert ["diagnose", "device.log"] in ran
    out = capsys.readouterr().out
    assert "kitchen" in out
    assert "alice@example.com" in out


BENCH_COMMANDS = [
    (f"{doc.relative_to(ROOT)}: {line}", line)
    for doc in DOCS
    for line in shell_lines(doc)
    if line.startswith(".venv/bin/python bench/")
]


@pytest.mark.parametrize("line", [c for _, c in BENCH_COMMANDS], ids=[label for label, _ in BENCH_COMMANDS])
def test_each_benchmark_command_in_the_docs_names_options_it_has(line: str) -> None:
    """Each benchmark's options, as its own --help lists them (the benchmarks themselves are not run here)."""
    words = shlex.split(line.replace("[", "").replace("]", ""))
    script = ROOT / words[1]
    assert script.is_file(), script
    shown = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, check=True, cwd=script.parent
    ).stdout
    for option in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
        assert re.search(rf"(^|\s){re.escape(option)}(\s|,|$)", shown, re.M), (option, shown)
