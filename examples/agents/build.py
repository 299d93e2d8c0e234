#!/usr/bin/env python3
"""Build every example agent to .wasm: ``python3 examples/agents/build.py [--out DIR]``.

WAT sources (wat/*.wat) are assembled with wasmtime's ``wat2wasm``; C sources (c/*.c)
are compiled with clang for wasm32-wasi against wasi-libc. Output: ``DIR/NAME.wasm``
(default ``examples/agents/build``). Nothing prebuilt is committed: tests build from
source (caxton-core/tests/sandbox_fixtures.py).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSTALL_HINT = "apt-get install clang lld wasi-libc"
SYSROOTS = (Path("/usr/lib/wasm32-wasi"), Path("/usr/share/wasi-sysroot"))
#: The "caxton.abi" custom section declaring agent ABI v1 (clang 14 cannot emit it).
ABI_V1_SECTION = b"\x00\x0c\x0acaxton.abi\x01"
CFLAGS = (
    "--target=wasm32-wasi",
    "-O2",
    "-mexec-model=reactor",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wl,--strip-debug",
)


def build_wat(source: Path, out: Path) -> None:
    import wasmtime

    out.write_bytes(bytes(wasmtime.wat2wasm(source.read_text(encoding="utf-8"))))


def find_clang() -> str:
    clang = shutil.which("clang")
    if clang is None:
        raise SystemExit(f"clang not found: {INSTALL_HINT}")
    if not any((root / "libc.a").is_file() for root in SYSROOTS):
        raise SystemExit(f"wasi-libc not found: {INSTALL_HINT}")
    return clang


def build_c(clang: str, source: Path, out: Path) -> None:
    command = [clang, *CFLAGS, "-I", str(HERE / "include"), "-o", str(out), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        if "wasm-ld" in result.stderr and "not found" in result.stderr:
            raise SystemExit(f"wasm-ld not found: {INSTALL_HINT}")
        raise SystemExit(f"{source.name}: clang failed:\n{result.stderr.strip()}")
    out.write_bytes(out.read_bytes() + ABI_V1_SECTION)


def build_all(out_dir: Path) -> dict[str, Path]:
    """Build every source; return agent name -> .wasm path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    for source in sorted((HERE / "wat").glob("*.wat")):
        target = out_dir / f"{source.stem}.wasm"
        build_wat(source, target)
        built[source.stem] = target
    c_sources = sorted((HERE / "c").glob("*.c"))
    if c_sources:
        clang = find_clang()
        for source in c_sources:
            name = f"{source.stem}_c" if source.stem in built else source.stem
            target = out_dir / f"{name}.wasm"
            build_c(clang, source, target)
            built[name] = target
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "build", help="output directory")
    args = parser.parse_args(argv)
    for name, path in build_all(args.out).items():
        print(f"{name:20} {path.stat().st_size:8d} bytes  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
