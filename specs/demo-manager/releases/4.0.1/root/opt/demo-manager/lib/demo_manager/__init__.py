"""demo-manager 4.0.1."""

VERSION = "4.0.1"
