"""Authentication and authorisation: the auth chain, API keys, roles, the audit log.

See docs/auth.md.
"""

from __future__ import annotations
