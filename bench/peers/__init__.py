"""The apps each server of bench/compare.py serves: GET / answers the 12 bytes "Hello, world"."""
