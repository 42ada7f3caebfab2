"""`cyan sim --protocol udp` run as a user runs it, a process of its own, against a `cyan serve` process: the
simulated Argons (or, with --firmware 2.3.1, Electrons without connection ids, whose records after the move are
type 254) register, complete their DTLS handshakes on the UDP port the banner names, stay connected through an
address change, and the server has them online with their platform."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from particle_cli_support import CyanServer, run_cyan

UDP_LINE = re.compile(r"UDP devices \(.*?\) connect to 127\.0\.0\.1:(\d+)")
COUNT = 5


@pytest.mark.parametrize(("firmware", "platform"), [(None, 12), ("2.3.1", 10)])
def test_cyan_sim_over_udp_brings_its_devices_online_on_cyan_serve(
    tmp_path: Path, firmware: str | None, platform: int
) -> None:
    data = tmp_path / "data"
    server = CyanServer.start(data, tmp_path / "logs", extra=("--device-udp-port", "0"))
    try:
        found = UDP_LINE.search(server.proc.stdout())
        assert found, server.describe()
        udp_port = int(found.group(1))
        assert udp_port > 0, server.describe()
        sim = run_cyan(
            "sim",
            "--protocol",
            "udp",
            "-n",
            str(COUNT),
            "--server",
            f"127.0.0.1:{udp_port}",
            "--data-dir",
            str(data),
            "--move-after",
            "3",
            "--duration",
            "8",
            *(("--firmware", firmware) if firmware else ()),
            timeout=90,
        )
        assert sim.returncode == 0, f"{sim.stdout}\n{sim.stderr}\n{server.describe()}"
        assert f"Registered {COUNT} new UDP device(s)" in sim.stdout
        assert f"Simulating {COUNT} UDP device(s) against 127.0.0.1:{udp_port}" in sim.stdout
        assert f"Moved {COUNT} device(s) to new addresses" in sim.stdout
        # Every progress line after the move still has the whole fleet connected, and so does the end.
        progress = re.findall(r"^(\d+)/(\d+) connected;", sim.stdout, re.MULTILINE)
        assert progress, sim.stdout
        assert progress[-1] == (str(COUNT), str(COUNT)), sim.stdout
        assert f"Stopped. {COUNT}/{COUNT} were connected." in sim.stdout
        assert "failure:" not in sim.stdout

        # The server saw them: online (their idle timeout is far off), each an Argon (12) or an Electron (10).
        listed = run_cyan("devices", "list", "--data-dir", str(data))
        assert listed.returncode == 0, listed.stderr
        rows = [line for line in listed.stdout.splitlines() if re.search(r"\b[0-9a-f]{24}\b", line)]
        assert len(rows) == COUNT, listed.stdout
        assert all(re.search(rf"\b{platform}\b.*\byes\b", row) for row in rows), listed.stdout
    finally:
        assert server.stop() == 0, server.describe()
