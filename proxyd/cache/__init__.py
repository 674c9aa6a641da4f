"""The HTTP cache (RFC 9111, a shared cache): its sans-IO rules first."""
