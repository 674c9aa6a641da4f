"""proxyd's benchmark harness: `make bench` or `python -m bench` (bench/run.py, bench/README.md)."""
