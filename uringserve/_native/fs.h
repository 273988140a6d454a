/* Opening and checking files for the static-file server. */
#ifndef URINGSERVE_FS_H
#define URINGSERVE_FS_H

#include <stdint.h>

/* CDEF BEGIN */
/* openat2(dirfd, path, flags) confined to dirfd's tree: RESOLVE_BENEATH
 * (no "..", absolute path or symlink leading out: -EXDEV) and
 * RESOLVE_NO_MAGICLINKS. The fd, or -errno (-ENOSYS before Linux 5.6, and
 * where a seccomp profile refuses openat2). */
int us_open_beneath(int dirfd, const char *path, int flags);
/* 1 if stat(path) finds the file `id` describes (inode, device, size,
 * mtime and ctime in ns), 0 if another or a changed one, -errno if none:
 * the static-file server's per-request check, without a stat_result. */
int us_same_file(const char *path, const uint64_t *id);
/* CDEF END */

#endif
