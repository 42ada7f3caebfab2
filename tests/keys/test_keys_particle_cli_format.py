"""The server-key file equals, byte for byte, what the real Particle CLI's formatter writes.

particle-cli 3.43.1 (installed by scripts/install-particle-cli) cannot write the file without a device
(particle-cli.md §A.4: `keys server --deviceType` does nothing), so its formatter `_formatPublicKey` is called
directly, as §A.4 describes, for the Photon layout (``laterGenerations``) and the Core's (``generation1``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from keys_cli_support import cyan
from keys_support import server_key, spki_der

import cyan.keys as keys
from cyan.keys import Layout

REPO = Path(__file__).resolve().parents[2]
KEYS_JS = REPO / ".particle-cli" / "node_modules" / "particle-cli" / "src" / "cmd" / "keys.js"

CASES = [
    ("photon", "127.0.0.1", 5683),
    ("photon", "192.168.1.20", None),
    ("photon", "cloud.example.com", 7000),
    ("photon", "cloud.example.com", None),
    ("photon", "a.b", 65534),
    ("core", "10.0.0.2", 5683),
    ("core", "cloud.example.com", None),
]

SCRIPT = """
const K = require(process.env.KEYS_JS);
const cases = JSON.parse(process.env.CASES);
for (const [i, [platform, host, port]] of cases.entries()) {
  const k = new K();
  k.platform = platform;
  k._formatPublicKey('server_pub.der', host, port === null ? undefined : port,
                     {protocol: 'tcp', outputFilename: `out-${i}.der`});
}
"""


def require_formatter() -> Path:
    node = shutil.which("node")
    if node is not None and KEYS_JS.exists():
        return Path(node)
    reason = f"the Particle CLI (node and {KEYS_JS}) is not installed: run scripts/install-particle-cli"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must install it before the tests)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def particle_files(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """The files the real formatter writes for CASES, from the 3.1.0 recordings' server key."""
    node = require_formatter()
    work = tmp_path_factory.mktemp("particle-format")
    (work / ".particle").mkdir()
    (work / "server_pub.der").write_bytes(spki_der(server_key().public_key()))
    env = {
        **os.environ,
        "HOME": str(work),
        "PARTICLE_DISABLE_UPDATE": "true",
        "KEYS_JS": str(KEYS_JS),
        "CASES": json.dumps(CASES),
    }
    done = subprocess.run(
        [str(node), "-e", SCRIPT], cwd=work, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [(work / f"out-{i}.der").read_bytes() for i in range(len(CASES))]


@pytest.mark.parametrize(("index", "case"), list(enumerate(CASES)), ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_build_server_key_file_equals_the_cli(
    particle_files: list[bytes], index: int, case: tuple[str, str, int | None]
) -> None:
    platform, host, port = case
    layout = Layout.CORE if platform == "core" else Layout.PHOTON
    expected = particle_files[index]
    assert len(expected) == layout.size
    assert keys.build_server_key_file(server_key().public_key(), host, port, layout) == expected


def test_cyan_keys_server_equals_the_cli(
    particle_files: list[bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "server_pub.der"
    key_file.write_bytes(spki_der(server_key().public_key()))
    for index, (platform, host, port) in enumerate(CASES):
        out = tmp_path / f"cyan-{index}.der"
        args = ["keys", "server", "--key", str(key_file), "--host", host, "-o", str(out)]
        args += ["--port", str(port)] if port is not None else []
        args += ["--core"] if platform == "core" else []
        ran = cyan(capsys, *args)
        assert ran.code == 0, ran.err
        assert out.read_bytes() == particle_files[index], (platform, host, port)
