"""An app module that fails on import in workers."""

raise RuntimeError("database unreachable")
