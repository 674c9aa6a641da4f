"""Certificates from an ACME (RFC 8555) directory for the TLS listeners (docs/acme.md).

storage (files on disk), schedule (when to renew: sans-IO), challenges (the answers to
http-01 and tls-alpn-01), client (the blocking ACME conversation, run in a thread), service
(the process-wide service that obtains, renews and hands certificates to the listeners)."""
