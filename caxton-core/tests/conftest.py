# Fixtures shared by the test modules of this directory. Imported rather than listed in
# ``pytest_plugins``, which pytest refuses in a conftest below the rootdir.
from sandbox_fixtures import example_agents, wasmtime_sandbox

__all__ = ["example_agents", "wasmtime_sandbox"]
