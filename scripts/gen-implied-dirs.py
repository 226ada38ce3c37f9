#!/usr/bin/env python3
"""Writes the hostile "implied directories" archive of issue 12, deterministically.

Usage: gen-implied-dirs.py OUT.tgz [FILES [PAD]]

FILES (default 16000) empty files at depth 64, each under its own top-level directory:
    t00000/d00xxx.../d01xxx.../.../d61xxx.../f
that is a unique top, 62 directories named d<k> padded with PAD (default 57) 'x' bytes, and
a file: 64 components, 3 790 bytes per path with the default PAD. The archive lists no
directory, so every file implies 63 directories: ~1 M with the defaults, from a ~1 MB
archive. Paths over 100 bytes go into PAX records. mtime, owners and the gzip header are
fixed, so the output is the same bytes on every run (same Python version).

The same shape is built in memory by crownest-core/tests/archive_implied_dirs.rs.
"""
import gzip
import io
import sys
import tarfile

out = sys.argv[1]
files = int(sys.argv[2]) if len(sys.argv) > 2 else 16000
pad = int(sys.argv[3]) if len(sys.argv) > 3 else 57


def path(i):
    return f"t{i:05}" + "".join(f"/d{k:02}" + "x" * pad for k in range(62)) + "/f"


with open(out, "wb") as raw:
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for i in range(files):
                info = tarfile.TarInfo(path(i))
                info.size = 0
                info.mode = 0o644
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(b""))
