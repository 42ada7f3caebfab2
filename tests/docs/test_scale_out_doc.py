"""docs/scale-out.md shows the HAProxy configuration the cluster tests run (deploy/haproxy.cfg), byte for byte,
and HAProxy accepts it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
CFG = ROOT / "deploy" / "haproxy.cfg"


def test_the_page_shows_the_configuration_in_the_repository() -> None:
    page = (ROOT / "docs" / "scale-out.md").read_text()
    blocks = re.findall(r"```haproxy\n(.*?)```", page, re.S)
    assert blocks == [CFG.read_text()]


def test_haproxy_accepts_the_configuration() -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("HAProxy is not installed (apt-get install haproxy; .ci/run does)")
    env = {**os.environ, "CYAN_LB_DEVICE": "127.0.0.1:5683", "CYAN_LB_API": "127.0.0.1:8080"}
    for n in (1, 2, 3):
        env |= {
            f"CYAN_NODE{n}_DEVICE": f"127.0.0.1:570{n}",
            f"CYAN_NODE{n}_API": f"127.0.0.1:810{n}",
            f"CYAN_NODE{n}_API_PORT": f"810{n}",
        }
    checked = subprocess.run([haproxy, "-c", "-f", str(CFG)], env=env, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "WARNING" not in checked.stdout + checked.stderr
