"""The HTTP/1.1 reverse proxy: sans-IO framing (h1), routing and header policy, under thin
Twisted protocols for the client side (server) and the upstream side (upstream)."""
