"""The command line: it only wires library calls together."""
