"""Prometheus-style metrics (new in 4.1.1)."""

import time

STARTED = time.time()


def render(version):
    return (
        f'demo_manager_info{{version="{version}"}} 1\n'
        f"demo_manager_uptime_seconds {time.time() - STARTED:.0f}\n"
    )
