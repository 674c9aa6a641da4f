"""The relays: Protocol/Factory pairs that move bytes between clients and pool servers."""
