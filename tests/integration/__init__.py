"""Integration tests: the real twistd proxyd against real peers on loopback."""
