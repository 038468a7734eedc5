"""Utilities shared by train.py, val.py, detect.py and export.py (one concept per module)."""
