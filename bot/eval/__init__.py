"""Offline evaluations: `python -m bot eval <name> ...`, each a module here with `main(argv) -> int`."""
