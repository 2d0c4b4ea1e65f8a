"""Per-phase peak memory (pure tier: no torch, no tvm)."""

import sys

import pytest

from hwq.memory import PeakMemory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-phase peaks need Linux's clear_refs")
def test_each_phase_reports_its_own_peak():
    with PeakMemory() as big:
        data = b"x" * (300 << 20)          # written, so resident
        del data
    with PeakMemory() as small:
        data = b"x" * (10 << 20)
        del data
    assert big.since == small.since == "phase start"
    assert big.peak_mib - small.peak_mib > 250
    assert big.as_dict() == {"peak_rss_mib": round(big.peak_mib, 1), "since": "phase start"}
