"""The web console's files (served at /ui by :mod:`caxton.api.ui`)."""
