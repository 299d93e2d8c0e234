"""Core's wasmtime sandbox passes the sandbox conformance suite."""

from __future__ import annotations

import pytest

from caxton.sandbox.wasmtime_sandbox import WasmtimeSandbox
from caxton.testing.sandbox import SandboxConformance


class TestWasmtimeConformance(SandboxConformance):
    @pytest.fixture
    def sandbox(self, wasmtime_sandbox: WasmtimeSandbox) -> WasmtimeSandbox:
        return wasmtime_sandbox
