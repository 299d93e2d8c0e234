"""WASI preview 1 for one agent, on ``wasmer.wasi``, narrowed to the granted capabilities.

wasmer-python 1.1's WASI connects the guest's stdin/stdout/stderr to the node's own and
mounts preopened directories read-write, and ``poll_oneoff`` may sleep with the GIL held.
The imports built here replace those functions so that WASI gives exactly what
:class:`caxton.drivers.sandbox.WasiCapabilities` grants, as on the wasmtime sandbox:

* stdout/stderr go to the node log (``stdio``) or nowhere; stdin is always empty;
* preopened directories are read-only: opening with create/truncate/exclusive flags or
  with write rights, writing to any file descriptor but stdout/stderr, and every call
  that changes the file system, fail with ``ENOTCAPABLE`` (the rights of opened files
  are narrowed to reading too, but wasmer 1.1 does not enforce them on ``fd_write``);
* ``poll_oneoff`` fails with ``ENOTSUP`` (a sleeping agent would stop the whole node:
  wasmer runs wasm with the GIL held); agents use timers instead. So do ``proc_raise``
  and the ``sock_*`` functions, which wasmer 1.1 leaves unimplemented (they panic);
* wasmer's WASI functions are native and cannot be called from Python, so the Python
  functions above reach them through a small *trampoline* instance (generated wasm that
  imports them and the agent's memory, and exports a wrapper per function);
* paths are resolved on the host (symlinks included) and must stay inside the preopened
  directory: wasmer 1.1 follows a symlink out of it;
* wasmer puts a virtual root directory at fd 3 and the preopens after it; the guest sees
  the preopens from fd 3 on, named by their guest paths, as WASI programs expect (file
  descriptors are translated on the way in and out).
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, Any

import wasmer
from wasmer import wasi

from caxton.drivers.sandbox import AgentHostAPI, WasiCapabilities
from caxton.errors import ValidationError
from caxton.sandbox import abi
from caxton.sandbox.hostcalls import GuestMemoryError

if TYPE_CHECKING:
    from caxton_sandbox_wasmer.runtime import Linker, WasmerInstance

ERRNO_SUCCESS = 0
ERRNO_BADF = 8
ERRNO_INVAL = 28
ERRNO_NOTSUP = 58
ERRNO_NOTCAPABLE = 76

OFLAGS_WRITING = 0x1 | 0x4 | 0x8  # creat, excl, trunc
FDFLAGS_APPEND = 0x1
RIGHT_FD_DATASYNC = 1 << 0
RIGHT_FD_WRITE = 1 << 6
RIGHT_FD_ALLOCATE = 1 << 8
RIGHT_FD_FILESTAT_SET_SIZE = 1 << 22
#: Rights that let a file descriptor change something.
MUTATING_RIGHTS = (
    RIGHT_FD_DATASYNC
    | (1 << 3)  # fd_fdstat_set_flags
    | (1 << 4)  # fd_sync
    | RIGHT_FD_WRITE
    | RIGHT_FD_ALLOCATE
    | (1 << 9)  # path_create_directory
    | (1 << 10)  # path_create_file
    | (1 << 11)  # path_link_source
    | (1 << 12)  # path_link_target
    | (1 << 16)  # path_rename_source
    | (1 << 17)  # path_rename_target
    | (1 << 19)  # path_filestat_set_size
    | (1 << 20)  # path_filestat_set_times
    | RIGHT_FD_FILESTAT_SET_SIZE
    | (1 << 23)  # fd_filestat_set_times
    | (1 << 24)  # path_symlink
    | (1 << 25)  # path_remove_directory
    | (1 << 26)  # path_unlink_file
)
#: Rights whose request means "open for writing".
WRITE_REQUEST = RIGHT_FD_WRITE | RIGHT_FD_ALLOCATE | RIGHT_FD_FILESTAT_SET_SIZE | RIGHT_FD_DATASYNC
ALL_RIGHTS = (1 << 64) - 1

#: Position of the file descriptor arguments of each WASI function that takes some.
FD_ARGUMENTS: dict[str, tuple[int, ...]] = {
    **{
        name: (0,)
        for name in (
            "fd_advise", "fd_allocate", "fd_close", "fd_datasync", "fd_fdstat_get",
            "fd_fdstat_set_flags", "fd_fdstat_set_rights", "fd_filestat_get",
            "fd_filestat_set_size", "fd_filestat_set_times", "fd_pread", "fd_pwrite",
            "fd_read", "fd_readdir", "fd_seek", "fd_sync", "fd_tell", "fd_write",
            "path_create_directory", "path_filestat_get", "path_filestat_set_times",
            "path_open", "path_readlink", "path_remove_directory", "path_unlink_file",
            "sock_recv", "sock_send", "sock_shutdown",
        )
    },
    "fd_renumber": (0, 1),
    "path_link": (0, 4),
    "path_rename": (0, 3),
    "path_symlink": (2,),
}  # fmt: skip
#: wasmer's virtual root directory takes fd 3; guest fd N >= 3 is wasmer's N + 1.
FIRST_FD = 3

#: Functions answered with ENOTSUP: poll_oneoff may sleep with the GIL held; the others
#: are unimplemented in wasmer 1.1 and panic.
NOT_SUPPORTED = ("poll_oneoff", "proc_raise", "sock_recv", "sock_send", "sock_shutdown")

#: Functions that change the file system: refused outright.
READ_ONLY_REFUSED = (
    "fd_allocate",
    "fd_filestat_set_size",
    "fd_filestat_set_times",
    "fd_pwrite",
    "path_create_directory",
    "path_filestat_set_times",
    "path_link",
    "path_remove_directory",
    "path_rename",
    "path_symlink",
    "path_unlink_file",
)


class WasiImports:
    """The import object of one WASI agent: wasmer's WASI with the overrides above, plus
    the thread's ``caxton``/``env``/metering/plugin imports from ``linker``."""

    def __init__(
        self,
        store: wasmer.Store,
        capabilities: WasiCapabilities,
        agent_name: str,
        host: AgentHostAPI,
        linker: Linker,
    ) -> None:
        self.host = host
        self.stdio = capabilities.stdio
        self.instance: WasmerInstance | None = None
        builder = wasi.StateBuilder(agent_name)
        for argument in capabilities.args:
            builder.argument(argument)
        for key, value in capabilities.env.items():
            builder.environment(key, value)
        self.preopens = [path.encode() for path in capabilities.preopen_dirs]
        #: Guest directory fd -> (the preopen's real host root, the directory's real path):
        #: paths are resolved on the host, symlinks included, and must stay in the root.
        self.directories: dict[int, tuple[str, str]] = {}
        for index, host_dir in enumerate(capabilities.preopen_dirs.values()):
            root = os.path.realpath(host_dir)
            self.directories[FIRST_FD + index] = (root, root)
        for guest_path, host_dir in capabilities.preopen_dirs.items():
            if not os.path.isdir(host_dir):
                raise ValidationError(
                    f"agent {agent_name}: preopened directory {host_dir} does not exist"
                )
            builder.map_directory(guest_path, host_dir)
        environment = builder.finalize()
        generated = environment.generate_import_object(store, wasi.Version.SNAPSHOT1)
        self.original: dict[str, Any] = dict(generated.to_dict()[abi.WASI_MODULE])
        self.trampoline: Any = None
        functions: dict[str, Any] = dict(self.original)
        for name in FD_ARGUMENTS:
            if name in functions:
                functions[name] = _like(store, functions[name], self._delegate_to(name))
        functions.update(self._overrides(store))
        self.import_object = wasmer.ImportObject()
        for module, namespace in linker.namespaces.items():
            self.import_object.register(module, namespace)
        self.import_object.register(abi.WASI_MODULE, functions)

    def bind(self, instance: WasmerInstance, trampoline_module: wasmer.Module) -> None:
        """Connect to the agent's instance, once it exists, and make the trampoline."""
        self.instance = instance
        memory = instance.memory.memory
        if memory is None:
            return  # no memory: every WASI call that reaches wasmer would fail anyway
        imports = wasmer.ImportObject()
        imports.register("agent", {"memory": memory})
        imports.register(abi.WASI_MODULE, {name: self.original[name] for name in TRAMPOLINED})
        self.trampoline = wasmer.Instance(trampoline_module, imports).exports

    def _check_deadline(self) -> None:
        if self.instance is not None:
            self.instance.check_deadline()

    def _memory(self) -> Any:
        assert self.instance is not None
        return self.instance.memory

    def _resolve(self, fd: int, path: int, path_len: int) -> tuple[str, str] | None:
        """(root, real host path) of ``path`` relative to the directory ``fd``, or None
        when it leaves the preopened directory (through ``..``, an absolute path or a
        symlink) or cannot be read. Unknown descriptors pass: wasmer refuses them."""
        directory = self.directories.get(fd)
        if directory is None:
            return ("", "")
        root, base = directory
        try:
            relative = self._memory().read(path, path_len).decode("utf-8")
        except (GuestMemoryError, UnicodeDecodeError):
            return None
        real = os.path.realpath(os.path.join(base, relative.lstrip("/")))
        if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
            return None
        return root, real

    def delegate(self, name: str, *args: int) -> int:
        """Call wasmer's ``name`` with the guest's file descriptors translated."""
        self._check_deadline()
        translated = list(args)
        for position in FD_ARGUMENTS.get(name, ()):
            if translated[position] >= FIRST_FD:
                translated[position] += 1
        if self.trampoline is None:
            return ERRNO_BADF
        return int(getattr(self.trampoline, name)(*translated))

    def _delegate_to(self, name: str) -> Any:
        return lambda *args: self.delegate(name, *args)

    def _overrides(self, store: wasmer.Store) -> dict[str, wasmer.Function]:
        original = self.original

        def fd_write(fd: int, iovs: int, count: int, written: int) -> int:
            if fd > 2:
                # Nothing the agent opens is writable. wasmer does not enforce the rights
                # of a file opened for reading: it writes anyway (seen with 1.1.0).
                return ERRNO_NOTCAPABLE
            if fd == 0:
                return ERRNO_BADF
            self._check_deadline()
            memory = self._memory()
            try:
                data = b"".join(
                    memory.read(*struct.unpack("<II", memory.read(iovs + 8 * i, 8)))
                    for i in range(count)
                )
                memory.write(written, struct.pack("<I", len(data)))
            except (GuestMemoryError, struct.error):
                return ERRNO_INVAL
            if self.stdio and data:
                level = abi.LogLevel.INFO if fd == 1 else abi.LogLevel.WARN
                self.host.log(level, data.decode("utf-8", errors="replace").rstrip("\n"))
            return ERRNO_SUCCESS

        def fd_read(fd: int, iovs: int, count: int, read: int) -> int:
            if fd > 2:
                return self.delegate("fd_read", fd, iovs, count, read)
            if fd != 0:
                return ERRNO_BADF
            try:
                self._memory().write(read, b"\0\0\0\0")  # end of file
            except GuestMemoryError:
                return ERRNO_INVAL
            return ERRNO_SUCCESS

        def preopen_name(fd: int) -> bytes | None:
            index = fd - FIRST_FD
            return self.preopens[index] if 0 <= index < len(self.preopens) else None

        def fd_prestat_get(fd: int, out: int) -> int:
            name = preopen_name(fd)
            if name is None:
                return ERRNO_BADF
            try:
                self._memory().write(out, struct.pack("<II", 0, len(name)))
            except GuestMemoryError:
                return ERRNO_INVAL
            return ERRNO_SUCCESS

        def fd_prestat_dir_name(fd: int, out: int, length: int) -> int:
            name = preopen_name(fd)
            if name is None:
                return ERRNO_BADF
            try:
                self._memory().write(out, name[:length])
            except GuestMemoryError:
                return ERRNO_INVAL
            return ERRNO_SUCCESS

        def path_open(
            fd: int,
            dirflags: int,
            path: int,
            path_len: int,
            oflags: int,
            rights_base: int,
            rights_inheriting: int,
            fdflags: int,
            opened: int,
        ) -> int:
            if (
                oflags & OFLAGS_WRITING
                or (rights_base & ALL_RIGHTS) & WRITE_REQUEST
                or fdflags & FDFLAGS_APPEND
            ):
                return ERRNO_NOTCAPABLE
            target = self._resolve(fd, path, path_len)
            if target is None:
                return ERRNO_NOTCAPABLE
            keep = ALL_RIGHTS & ~MUTATING_RIGHTS
            errno = self.delegate(
                "path_open",
                fd,
                dirflags,
                path,
                path_len,
                oflags,
                _signed64(rights_base & keep),
                _signed64(rights_inheriting & keep),
                fdflags,
                opened,
            )
            if errno == ERRNO_SUCCESS:
                memory = self._memory()
                (new_fd,) = struct.unpack("<I", memory.read(opened, 4))
                memory.write(opened, struct.pack("<I", new_fd - 1))
                if os.path.isdir(target[1]):
                    self.directories[new_fd - 1] = target
            return errno

        def path_filestat_get(fd: int, flags: int, path: int, path_len: int, out: int) -> int:
            if self._resolve(fd, path, path_len) is None:
                return ERRNO_NOTCAPABLE
            return self.delegate("path_filestat_get", fd, flags, path, path_len, out)

        def fd_close(fd: int) -> int:
            errno = self.delegate("fd_close", fd)
            if errno == ERRNO_SUCCESS:
                self.directories.pop(fd, None)
            return errno

        def fd_renumber(fd: int, to: int) -> int:
            errno = self.delegate("fd_renumber", fd, to)
            if errno == ERRNO_SUCCESS:
                moved = self.directories.pop(fd, None)
                self.directories.pop(to, None)
                if moved is not None:
                    self.directories[to] = moved
            return errno

        def refuse(*_args: int) -> int:
            return ERRNO_NOTCAPABLE

        def not_supported(*_args: int) -> int:
            return ERRNO_NOTSUP

        overrides = {
            "fd_write": _like(store, original["fd_write"], fd_write),
            "fd_read": _like(store, original["fd_read"], fd_read),
            "fd_prestat_get": _like(store, original["fd_prestat_get"], fd_prestat_get),
            "fd_prestat_dir_name": _like(
                store, original["fd_prestat_dir_name"], fd_prestat_dir_name
            ),
            "path_open": _like(store, original["path_open"], path_open),
            "path_filestat_get": _like(store, original["path_filestat_get"], path_filestat_get),
            "fd_close": _like(store, original["fd_close"], fd_close),
            "fd_renumber": _like(store, original["fd_renumber"], fd_renumber),
        }
        for name in NOT_SUPPORTED:
            overrides[name] = _like(store, original[name], not_supported)
        for name in READ_ONLY_REFUSED:
            overrides[name] = _like(store, original[name], refuse)
        return overrides


#: wasmer functions the Python overrides call through the trampoline.
TRAMPOLINED = tuple(FD_ARGUMENTS)


def trampoline_wat(store: wasmer.Store) -> str:
    """The text of the trampoline module (types read from wasmer's own functions)."""
    environment = wasi.StateBuilder("trampoline").finalize()
    generated = environment.generate_import_object(store, wasi.Version.SNAPSHOT1)
    functions = generated.to_dict()[abi.WASI_MODULE]
    names = {wasmer.Type.I32: "i32", wasmer.Type.I64: "i64"}
    lines = ['(module (import "agent" "memory" (memory 0))']
    for index, name in enumerate(TRAMPOLINED):
        function_type = functions[name].type
        params = " ".join(names[t] for t in function_type.params)
        results = " ".join(names[t] for t in function_type.results)
        lines.append(
            f'(import "{abi.WASI_MODULE}" "{name}" (func $f{index} (param {params}) '
            f"(result {results})))"
        )
    lines.append('(export "memory" (memory 0))')
    for index, name in enumerate(TRAMPOLINED):
        function_type = functions[name].type
        params = " ".join(names[t] for t in function_type.params)
        results = " ".join(names[t] for t in function_type.results)
        gets = " ".join(f"local.get {i}" for i in range(len(function_type.params)))
        lines.append(
            f'(func (export "{name}") (param {params}) (result {results}) {gets} call $f{index})'
        )
    lines.append(")")
    return "\n".join(lines)


def _like(store: wasmer.Store, function: Any, body: Any) -> wasmer.Function:
    """A host function with the type of ``function`` and the given body."""
    function_type = function.type
    return wasmer.Function(
        store, body, wasmer.FunctionType(list(function_type.params), list(function_type.results))
    )


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value
