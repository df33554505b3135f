"""Pure, JSON-serialisable tile plans and the masks that select tiles."""
