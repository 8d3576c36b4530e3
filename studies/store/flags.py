"""Clear the "open for writing" flags a killed SWMR writer leaves in an HDF5 superblock.

A file written in SWMR mode (superblock version 3) carries status flags that
say a writer has it open. When the writer is killed they stay set, and HDF5
refuses plain (non-SWMR) opens with "file is already open for write (may use
<h5clear file> to clear file consistency flags)". The data themselves are
consistent -- SWMR orders its writes so that a reader never sees a dangling
pointer -- so clearing the flags, which is what ``h5clear -s`` does, makes the
file readable by every HDF5 tool. h5py exposes no call for it, so we rewrite
the flag byte and the superblock checksum (Jenkins' lookup3, as HDF5 uses);
the stored checksum is verified first, so a layout we misread is never written.

References
----------
HDF Group, "HDF5 File Format Specification Version 3.0", section II.A
(superblock versions 2 and 3: file consistency flags, checksum).
Bob Jenkins, lookup3.c, ``hashlittle`` (2006).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["lookup3", "superblock_flags", "clear_superblock_flags"]

_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_M = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' ``hashlittle`` (lookup3) of ``data``: the HDF5 metadata checksum."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _M
    i = 0
    while length > 12:
        a = (a + int.from_bytes(data[i : i + 4], "little")) & _M
        b = (b + int.from_bytes(data[i + 4 : i + 8], "little")) & _M
        c = (c + int.from_bytes(data[i + 8 : i + 12], "little")) & _M
        a = (a - c) & _M; a ^= _rot(c, 4); c = (c + b) & _M  # noqa: E702
        b = (b - a) & _M; b ^= _rot(a, 6); a = (a + c) & _M  # noqa: E702
        c = (c - b) & _M; c ^= _rot(b, 8); b = (b + a) & _M  # noqa: E702
        a = (a - c) & _M; a ^= _rot(c, 16); c = (c + b) & _M  # noqa: E702
        b = (b - a) & _M; b ^= _rot(a, 19); a = (a + c) & _M  # noqa: E702
        c = (c - b) & _M; c ^= _rot(b, 4); b = (b + a) & _M  # noqa: E702
        i += 12
        length -= 12
    if length == 0:
        return c
    tail = data[i:] + bytes(12 - length)
    a = (a + int.from_bytes(tail[0:4], "little")) & _M
    b = (b + int.from_bytes(tail[4:8], "little")) & _M
    c = (c + int.from_bytes(tail[8:12], "little")) & _M
    c ^= b; c = (c - _rot(b, 14)) & _M  # noqa: E702
    a ^= c; a = (a - _rot(c, 11)) & _M  # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & _M  # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & _M  # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & _M  # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & _M  # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & _M  # noqa: E702
    return c


def _locate(raw: bytes) -> int:
    # The superblock sits at 0 or after a user block of 512 * 2^k bytes.
    if raw.startswith(_SIGNATURE):
        return 0
    off = 512
    while off + 8 <= len(raw):
        if raw[off : off + 8] == _SIGNATURE:
            return off
        off *= 2
    raise ValueError("no HDF5 superblock signature found")


def _read_superblock(path: Path) -> tuple[int, bytearray, int]:
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    off = _locate(head)
    sb = bytearray(head[off : off + 64])
    version = sb[8]
    if version not in (2, 3):
        raise ValueError(f"superblock version {version} has no status flags to clear")
    n = 12 + 4 * sb[9]  # fixed fields + base, extension, EOF, root addresses
    if lookup3(bytes(sb[:n])) != int.from_bytes(sb[n : n + 4], "little"):
        raise ValueError("superblock checksum does not verify; refusing to modify the file")
    return off, sb, n


def superblock_flags(path: str | Path) -> int:
    """The file consistency flags byte (0 when no writer has the file open)."""
    _, sb, _ = _read_superblock(Path(path))
    return int(sb[11])


def clear_superblock_flags(path: str | Path) -> bool:
    """Zero the status flags (as ``h5clear -s``); return whether anything changed."""
    path = Path(path)
    off, sb, n = _read_superblock(path)
    if sb[11] == 0:
        return False
    sb[11] = 0
    sb[n : n + 4] = lookup3(bytes(sb[:n])).to_bytes(4, "little")
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(bytes(sb[: n + 4]))
    return True
