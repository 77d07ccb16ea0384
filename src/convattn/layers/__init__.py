"""Operators: each a pure function, a thin module, and a loop-based reference in `reference.py`."""
