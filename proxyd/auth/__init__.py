"""Authentication of HTTP requests: each method a module (basic, api_keys, jwt, forward),
each deciding a request's credentials into a proxyd.auth.result value."""
