"""Legacy TCP transport shim (removed in 4.1.1)."""


def connect(address):
    raise NotImplementedError("legacy transport is gone")
