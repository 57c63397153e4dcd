"""The operator console: server-rendered pages at /console (routes.py, mounted by mount.py)."""
