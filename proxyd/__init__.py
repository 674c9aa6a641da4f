"""proxyd: a multi-protocol L4/L7 reverse proxy on Twisted."""

__version__ = "0.1.0"
