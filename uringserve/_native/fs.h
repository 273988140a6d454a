/* Opening files for the static-file server. */
#ifndef URINGSERVE_FS_H
#define URINGSERVE_FS_H

/* CDEF BEGIN */
/* openat2(dirfd, path, flags) confined to dirfd's tree: RESOLVE_BENEATH
 * (no "..", absolute path or symlink leading out: -EXDEV) and
 * RESOLVE_NO_MAGICLINKS. The fd, or -errno (-ENOSYS before Linux 5.6, and
 * where a seccomp profile refuses openat2). */
int us_open_beneath(int dirfd, const char *path, int flags);
/* CDEF END */

#endif
