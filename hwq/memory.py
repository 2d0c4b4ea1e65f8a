"""Peak resident memory of one phase of a run (calibration, compile), for the benchmarks' JSON.

Plain Python: no torch, no tvm. On Linux the kernel's high-water mark of the resident set is reset
when a phase starts (``/proc/self/clear_refs``), so each phase reports its own peak; elsewhere the
figure is the peak since the process started, and says so.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_CLEAR_REFS, _STATUS = Path("/proc/self/clear_refs"), Path("/proc/self/status")


class PeakMemory:
    """Context manager measuring the peak resident memory of its block.

    Example::

        >>> with PeakMemory() as calibration:
        ...     graph = quantize_ptq(model, images)
        >>> calibration.as_dict()
        {'peak_rss_mib': 1074.2, 'since': 'phase start'}
    """

    def __init__(self):
        self.peak_mib: float | None = None
        self.since = "process start"

    def __enter__(self) -> PeakMemory:
        try:
            _CLEAR_REFS.write_text("5")     # 5: reset the peak RSS to the current RSS (Linux >= 4.0)
            self.since = "phase start"
        except OSError:
            pass
        return self

    def __exit__(self, *exc) -> None:
        self.peak_mib = _peak_mib()

    def as_dict(self) -> dict:
        """``{"peak_rss_mib": ..., "since": "phase start" | "process start"}``."""
        return {"peak_rss_mib": None if self.peak_mib is None else round(self.peak_mib, 1), "since": self.since}


def _peak_mib() -> float:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024          # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024   # bytes on macOS, kB on Linux
