"""Backups of a node's state store, cluster snapshots and their destinations.

See docs/operations.md for the procedures and :mod:`caxton.backup.archive` for the file.
"""
