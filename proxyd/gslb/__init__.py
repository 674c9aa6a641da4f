"""`[gslb NAME]`: authoritative DNS answered from the pools' health (docs/gslb.md).

answers.py is the sans-IO core (a query's bytes in, the answer's bytes out, given the
healthy servers and a random source), view.py the healthy servers of the pools kept from
their published state changes, server.py the thin UDP and TCP protocols, listeners.py the
listening sockets.
"""
