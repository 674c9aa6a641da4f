"""The configuration layer: INI text in, a validated frozen tree out. Imports nothing above it."""
