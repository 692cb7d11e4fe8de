"""demo-manager 4.2.0."""

VERSION = "4.2.0"
