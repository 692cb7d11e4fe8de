"""demo-manager 3.4.2."""

VERSION = "3.4.2"
