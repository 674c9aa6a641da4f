"""The Autobahn WebSocket test suite's fuzzing-client cases on Python 3, run against a
WebSocket server directly and through proxyd (docs/conformance.md)."""
