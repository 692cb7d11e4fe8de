"""Health checks as functions: how often a check is tried while a service starts."""

from __future__ import annotations

from installer.format import HealthCheck
from installer.health import poll_delay


def test_health_polls_at_once_then_with_growing_waits() -> None:
    """The first waits between health tries are short (a service that answers 30 ms
    after its start ends the outage then), doubling up to the check's interval."""
    check = HealthCheck(name="h", kind="tcp", port="1", interval=0.2)
    assert [poll_delay(check, a) for a in range(8)] == [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.2, 0.2]
    assert poll_delay(check, 9999) == 0.2
