"""Small apps that the tests serve with real squall processes."""

import os
from pathlib import Path


def write_marker(path: Path | str, text: str) -> None:
    """Write `text` to `path` so that it appears whole: a test that sees the file sees its text."""
    path = Path(path)
    temporary = path.parent / f".{path.name}.tmp"  # hidden: no glob of the test's matches it
    temporary.write_text(text)
    os.replace(temporary, path)
