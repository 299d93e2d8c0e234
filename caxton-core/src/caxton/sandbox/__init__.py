"""Core's sandbox: the agent ABI (:mod:`caxton.sandbox.abi`), the engine-independent host
functions (:mod:`caxton.sandbox.hostcalls`) and the default wasmtime driver
(:mod:`caxton.sandbox.wasmtime_sandbox`)."""
