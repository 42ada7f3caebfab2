"""Every recording of real firmware in tests/vectors through the diagnosis: the failures are named (see
test_diagnose_catalog.py), and the healthy sessions, updates included, raise nothing."""

from __future__ import annotations

import pytest
from diagnose_support import VECTORS, ids, recording

from cyan.diagnose import diagnose

OTA = sorted(p.name.removesuffix(".device.log") for p in (VECTORS / "ota").glob("*.device.log"))


def test_a_good_session_has_no_finding() -> None:
    result = diagnose(recording("device-os-3.1.0/good").read_text())
    assert result.analysis is not None
    (attempt,) = result.analysis.attempts
    assert (attempt.outcome, attempt.reached) == ("connected", "session")
    assert attempt.step_started_ms["S5"] == 1001  # "Receive key"
    assert result.findings == []
    assert "no failure" in result.summary_text()


@pytest.mark.parametrize("name", OTA)
def test_updates_over_the_air(name: str) -> None:
    result = diagnose(recording(f"ota/{name}").read_text())
    assert result.analysis is not None
    assert [a.outcome for a in result.analysis.attempts] == ["connected"]
    assert result.analysis.device_id == "0123456789abcdef01234567"
    began = result.analysis.of("ota_begin")
    done = result.analysis.of("ota_done")
    if name.endswith("_stall"):
        # The update began and the log ends before it completed: only a hint at C14, for a device that
        # then shows a dim D7.
        assert began
        assert not done
        assert ids(result) == ["C14"]
        assert result.findings[0].confidence == "low"
    else:
        assert bool(began) == bool(done) == (not name.endswith("_after_reset"))
        assert result.findings == []
    if "badcrc" in name:
        assert result.analysis.of("ota_chunk_bad")
