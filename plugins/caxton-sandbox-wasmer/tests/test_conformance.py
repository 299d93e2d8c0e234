"""The wasmer sandbox passes the sandbox conformance suite (on CPython 3.10)."""

from __future__ import annotations

import pytest
from conftest import needs_wasmer

from caxton.testing.sandbox import SandboxConformance
from caxton_sandbox_wasmer.driver import WasmerSandbox


@needs_wasmer
class TestWasmerConformance(SandboxConformance):
    @pytest.fixture
    def sandbox(self, wasmer_sandbox: WasmerSandbox) -> WasmerSandbox:
        return wasmer_sandbox
