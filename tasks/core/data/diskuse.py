"""What snapshots really take on disk. Snapshots share bytes two ways: hard links (unchanged files) and
reflinks (a database rebuilt from its base on btrfs or XFS shares every unchanged block with it). Sizes
add those up many times; this counts each block once, by the physical extents the filesystem reports
(FIEMAP), and falls back to allocated blocks per file (st_blocks, each inode once) where it cannot
tell (tmpfs, inline data)."""

from __future__ import annotations

import bisect
import fcntl
import os
import struct
from pathlib import Path

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNKNOWN = 0x2          # data not on disk yet: its place is not known
FIEMAP_EXTENT_DATA_INLINE = 0x200    # in the file's metadata: no place of its own
_HEAD = struct.Struct("=QQIIII")
_EXTENT = struct.Struct("=QQQQQIIII")
_BATCH = 256


def extents(fd: int) -> list[tuple[int, int]] | None:
    """(physical start, length) of a file's data, or None when the filesystem cannot say (no FIEMAP, or
    an extent without a place of its own)."""
    found: list[tuple[int, int]] = []
    start = 0
    while True:
        request = bytearray(_HEAD.pack(start, 2**64 - 1 - start, FIEMAP_FLAG_SYNC, 0, _BATCH, 0)
                            + bytes(_EXTENT.size * _BATCH))
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, request)
        except OSError:
            return None
        mapped = _HEAD.unpack_from(request)[3]
        if mapped == 0:
            return found
        for n in range(mapped):
            logical, physical, length, _, _, flags, _, _, _ = _EXTENT.unpack_from(request, _HEAD.size + n * _EXTENT.size)
            if flags & (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DATA_INLINE):
                return None
            found.append((physical, length))
            start = logical + length
            if flags & FIEMAP_EXTENT_LAST:
                return found


class Ledger:
    """Physical ranges already counted (sorted, merged), and inodes already counted whole."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.inodes: set[tuple[int, int]] = set()

    def add(self, start: int, length: int) -> int:
        """Counts [start, start+length), returns how many of its bytes were not counted before."""
        end = start + length
        i = bisect.bisect_right(self.ends, start)    # the first range that ends after `start`
        new, at = 0, start
        j = i
        while j < len(self.starts) and self.starts[j] < end:
            new += max(0, self.starts[j] - at)
            at = max(at, self.ends[j])
            j += 1
        new += max(0, end - at)
        if j > i:
            start, end = min(start, self.starts[i]), max(end, self.ends[j - 1])
        self.starts[i:j] = [start]
        self.ends[i:j] = [end]
        return new


def file_bytes(path: Path, ledger: Ledger) -> int:
    """What `path` adds on disk beyond what the ledger counted."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    key = (st.st_dev, st.st_ino)
    if key in ledger.inodes:
        return 0
    ledger.inodes.add(key)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return st.st_blocks * 512
    try:
        found = extents(fd)
    finally:
        os.close(fd)
    if found is None:
        return st.st_blocks * 512
    return sum(ledger.add(start + (st.st_dev << 64), length) for start, length in found)


def folder_bytes(folder: Path, ledger: Ledger) -> int:
    """What a folder's files add on disk beyond what the ledger counted (never through a link)."""
    total = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            if not path.is_symlink():
                total += file_bytes(path, ledger)
    return total


def added_bytes(folders: list[Path]) -> list[int]:
    """For each folder, oldest first: what it takes on disk that no folder before it shares."""
    ledger = Ledger()
    return [folder_bytes(folder, ledger) for folder in folders]
