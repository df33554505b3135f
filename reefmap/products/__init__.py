"""What is made from a finished map: open_map, query, statistics, overviews, exports."""
