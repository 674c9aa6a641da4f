"""API gateway cores, sans-IO: trace context, JSON body and query parameter transformations."""
