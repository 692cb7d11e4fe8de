"""demo-manager 4.1.1."""

VERSION = "4.1.1"
