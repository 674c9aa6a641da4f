"""Who may reach a listener or a route: address lists (allow/deny) and per-client limits."""
