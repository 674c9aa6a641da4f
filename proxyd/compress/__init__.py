"""On-the-fly compression of HTTP responses: which coding to use, and streaming encoders."""
