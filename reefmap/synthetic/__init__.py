"""The procedural reef world with its truth."""
