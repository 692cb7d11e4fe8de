"""python-tuf's client, imported without boto3.

``tuf.api.metadata`` imports ``securesystemslib.signer``, which imports every signer it
knows; its AWS KMS signer imports boto3 and botocore whenever they are installed (they
are: the builder publishes to S3 with them). That was 0.13 s of a 0.33 s ``tuf-client``
call (``python -X importtime``), for a signer a client never uses: clients verify, they
do not sign. boto3 is hidden for the duration of this one import (securesystemslib then
records the AWS signer as unavailable) and is importable again right after, for a
process that publishes too. Everything else imports the client from here.
"""

from __future__ import annotations

import sys

_HIDDEN = ("boto3", "botocore")
_absent = [m for m in _HIDDEN if m not in sys.modules]
for _m in _absent:
    sys.modules[_m] = None  # type: ignore[assignment]  # import of it raises ImportError
try:
    from tuf.api import exceptions
    from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig
finally:
    for _m in _absent:
        del sys.modules[_m]

__all__ = ["FetcherInterface", "Updater", "UpdaterConfig", "exceptions"]
