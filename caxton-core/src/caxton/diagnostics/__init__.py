"""What the diagnostic commands read: each node's own figures, gathered from every node.

:mod:`caxton.diagnostics.local` answers for one node, from what the node already keeps
(agents' handling times, memory, the routers' recent conversation messages, dead letters, crash
records, gossip counters, the configuration); :mod:`caxton.diagnostics.recorder` keeps
the few records nothing else did (agent crashes, the node's recent log lines);
:mod:`caxton.diagnostics.gather` asks every reachable node through the ``diag`` cluster
operation; :mod:`caxton.diagnostics.dump` writes the support bundle. The REST routes are
in :mod:`caxton.api.diagnostics`, the commands in :mod:`caxton.cli.diagnostics`. See
docs/observability.md, "Diagnostics".
"""

from __future__ import annotations
