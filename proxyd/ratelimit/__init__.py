"""Rate limits, sans-IO: rates and bursts from the config, GCRA, keyed tables, header fields."""
