"""Pictures of maps: one renderer for every PNG."""
