#!/usr/bin/python3
"""
powercut-fs: a FUSE file system for kedge's power-loss tests (issue 16).

A pass-through mount over a backing directory in which file DATA reaches the backing
file only when that file is fsync'd (fsync or fdatasync, through any descriptor of it).
Until then written bytes and truncations live in this process only, as the page cache
of a real disk would hold them. A power cut (creating `<mount>/.powercut`, e.g. `touch`)
throws every unsynced byte away, makes every later operation fail with EIO and
unmounts; the test then mounts a new instance over the backing directory as it stands,
which is what the disk would hold after the power came back.

The model (what survives a cut):
- File data: exactly what was written before the last fsync/fdatasync of that file
  (the newest content of every page it had then, and its size then). Nothing else.
  Close does NOT sync (as on ext4 without auto_da_alloc games: close makes nothing durable).
- Metadata: creating, renaming, unlinking and truncating-to-zero-on-create of files,
  symlinks (kedge's lock file uses them), mkdir and rmdir reach the backing directory at once and survive a cut, as on a file
  system whose directory operations are journaled synchronously. So a directory fsync
  is accepted and does nothing. (Stricter than needed for kedge, which fsyncs its data
  directory after creating files anyway; simpler than holding directory entries back.)
- Not modelled: torn pages (a page is written whole or not at all), reordering of
  synced writes, metadata lost on a cut, mmap (kedge's SQLite uses no shared memory:
  locking_mode=EXCLUSIVE), xattrs. Hard links pass through, but each name keeps its own
  unsynced data (kedge makes none).

Usage: powercut-fs.py BACKING MOUNTPOINT   (runs in the foreground; root, /dev/fuse)
It prints "ready" on stdout once mounted, "cut" when a cut happened, and exits once
unmounted (after a cut it unmounts itself, lazily, so open descriptors fail with EIO/ENOTCONN).
"""
import errno
import os
import stat
import sys
import threading

from fusepy import FUSE, FuseOSError, Operations

PAGE = 4096
CONTROL = '/.powercut'


class File:
    """Unsynced state of one backing file: dirty pages and the logical size."""

    def __init__(self, size):
        self.pages = {}  # page index -> bytearray(PAGE)
        self.size = size  # logical size (what stat and reads see)
        self.synced_size = size


class PowerCutFS(Operations):
    def __init__(self, backing, mountpoint):
        self.backing = os.path.realpath(backing)
        self.mountpoint = mountpoint
        self.files = {}  # path -> File (only files with unsynced state)
        self.mutex = threading.RLock()
        self.cut = False

    # --- helpers -------------------------------------------------------------------
    def _full(self, path):
        return os.path.join(self.backing, path.lstrip('/'))

    def _check(self):
        if self.cut:
            raise FuseOSError(errno.EIO)

    def _state(self, path):
        f = self.files.get(path)
        if f is None:
            size = os.lstat(self._full(path)).st_size
            f = File(size)
            self.files[path] = f
        return f

    def _backing_page(self, path, index, synced_size):
        start = index * PAGE
        buf = bytearray(PAGE)
        if start < synced_size:
            with open(self._full(path), 'rb') as fh:
                fh.seek(start)
                data = fh.read(min(PAGE, synced_size - start))
            buf[: len(data)] = data
        return buf

    def power_cut(self):
        with self.mutex:
            if self.cut:
                return
            self.cut = True
            self.files.clear()
        print('cut', flush=True)
        # Unmount from another thread: this one may be serving a FUSE request.
        threading.Thread(target=self._unmount, daemon=True).start()

    def _unmount(self):
        os.system(f'fusermount -u -z {self.mountpoint} >/dev/null 2>&1')

    # --- metadata: straight through -----------------------------------------------
    def getattr(self, path, fh=None):
        self._check()
        if path == CONTROL:
            raise FuseOSError(errno.ENOENT)
        st = os.lstat(self._full(path))
        attrs = {
            k: getattr(st, k)
            for k in (
                'st_atime',
                'st_ctime',
                'st_gid',
                'st_mode',
                'st_mtime',
                'st_nlink',
                'st_size',
                'st_uid',
            )
        }
        with self.mutex:
            f = self.files.get(path)
            if f is not None and stat.S_ISREG(st.st_mode):
                attrs['st_size'] = f.size
        return attrs

    def readdir(self, path, fh):
        self._check()
        return ['.', '..'] + os.listdir(self._full(path))

    def access(self, path, mode):
        self._check()
        if not os.access(self._full(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        self._check()
        os.chmod(self._full(path), mode)

    def chown(self, path, uid, gid):
        self._check()
        os.chown(self._full(path), uid, gid)

    def utimens(self, path, times=None):
        self._check()
        os.utime(self._full(path), times)

    def mkdir(self, path, mode):
        self._check()
        os.mkdir(self._full(path), mode)

    def rmdir(self, path):
        self._check()
        os.rmdir(self._full(path))

    def statfs(self, path):
        self._check()
        sv = os.statvfs(self._full(path))
        return {
            k: getattr(sv, k)
            for k in (
                'f_bavail',
                'f_bfree',
                'f_blocks',
                'f_bsize',
                'f_favail',
                'f_ffree',
                'f_files',
                'f_flag',
                'f_frsize',
                'f_namemax',
            )
        }

    def unlink(self, path):
        self._check()
        with self.mutex:
            os.unlink(self._full(path))
            self.files.pop(path, None)

    def rename(self, old, new):
        self._check()
        if new == CONTROL:
            raise FuseOSError(errno.EPERM)
        with self.mutex:
            os.rename(self._full(old), self._full(new))
            f = self.files.pop(old, None)
            self.files.pop(new, None)
            if f is not None:
                self.files[new] = f

    def symlink(self, target, source):
        # fusepy: create the link `target` (a path in this file system) pointing at `source`.
        self._check()
        os.symlink(source, self._full(target))

    def readlink(self, path):
        self._check()
        return os.readlink(self._full(path))

    def link(self, target, source):
        self._check()
        os.link(self._full(source), self._full(target))

    def fsyncdir(self, path, datasync, fh):
        self._check()
        return 0

    # --- files --------------------------------------------------------------------
    def create(self, path, mode, fi=None):
        if path == CONTROL:
            self.power_cut()
            raise FuseOSError(errno.EIO)
        self._check()
        with self.mutex:
            fd = os.open(self._full(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            os.close(fd)
            self.files.pop(path, None)
        return 0

    def open(self, path, flags):
        self._check()
        with self.mutex:
            if not os.path.exists(self._full(path)):
                raise FuseOSError(errno.ENOENT)
            if flags & os.O_TRUNC:
                self._truncate(path, 0)
        return 0

    def read(self, path, size, offset, fh):
        self._check()
        with self.mutex:
            f = self.files.get(path)
            if f is None:
                with open(self._full(path), 'rb') as h:
                    h.seek(offset)
                    return h.read(size)
            end = min(offset + size, f.size)
            out = bytearray()
            pos = offset
            while pos < end:
                index = pos // PAGE
                page = f.pages.get(index)
                if page is None:
                    page = self._backing_page(path, index, f.synced_size)
                start = pos - index * PAGE
                n = min(PAGE - start, end - pos)
                out += page[start : start + n]
                pos += n
            return bytes(out)

    def write(self, path, data, offset, fh):
        self._check()
        with self.mutex:
            f = self._state(path)
            pos = offset
            i = 0
            while i < len(data):
                index = pos // PAGE
                page = f.pages.get(index)
                if page is None:
                    page = self._backing_page(path, index, f.synced_size)
                    f.pages[index] = page
                start = pos - index * PAGE
                n = min(PAGE - start, len(data) - i)
                page[start : start + n] = data[i : i + n]
                pos += n
                i += n
            f.size = max(f.size, offset + len(data))
            return len(data)

    def truncate(self, path, length, fh=None):
        self._check()
        with self.mutex:
            self._truncate(path, length)

    def _truncate(self, path, length):
        f = self._state(path)
        if length < f.size:
            # Bytes past the new end must read as zeros if the file grows again, also
            # where the backing file still holds synced bytes.
            first_gone = (length + PAGE - 1) // PAGE
            for index in [i for i in f.pages if i >= first_gone]:
                del f.pages[index]
            if length % PAGE:
                index = length // PAGE
                page = f.pages.get(index)
                if page is None:
                    page = self._backing_page(path, index, f.synced_size)
                    f.pages[index] = page
                page[length % PAGE :] = bytes(PAGE - length % PAGE)
            for index in range(first_gone, (f.synced_size + PAGE - 1) // PAGE):
                f.pages[index] = bytearray(PAGE)
        f.size = length

    def fsync(self, path, datasync, fh):
        self._check()
        with self.mutex:
            f = self.files.pop(path, None)
            if f is None:
                return 0
            fd = os.open(self._full(path), os.O_WRONLY)
            f.synced_size = f.size
            try:
                for index in sorted(f.pages):
                    start = index * PAGE
                    if start >= f.size:
                        continue
                    os.pwrite(fd, bytes(f.pages[index][: min(PAGE, f.size - start)]), start)
                os.ftruncate(fd, f.size)
                os.fsync(fd)
            finally:
                os.close(fd)
        return 0

    def flush(self, path, fh):
        self._check()
        return 0

    def release(self, path, fh):
        return 0


def main():
    if len(sys.argv) != 3:
        sys.stderr.write('usage: powercut-fs.py BACKING MOUNTPOINT\n')
        sys.exit(2)
    backing, mountpoint = sys.argv[1], sys.argv[2]
    fs = PowerCutFS(backing, mountpoint)

    def announce():
        # Ready once the mount answers (FUSE() below blocks while serving).
        import time

        for _ in range(200):
            if os.path.ismount(mountpoint):
                print('ready', flush=True)
                return
            time.sleep(0.05)
        print('not mounted', flush=True)

    threading.Thread(target=announce, daemon=True).start()
    FUSE(fs, mountpoint, foreground=True, nothreads=True, default_permissions=True, allow_other=True)


if __name__ == '__main__':
    main()
