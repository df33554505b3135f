"""Model bundles (metadata without torch) and the torch segmenter."""
