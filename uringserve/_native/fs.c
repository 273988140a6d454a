/* openat2 has no glibc wrapper and no Python binding: this is the one
 * system call the static-file server needs that os.open cannot make. The
 * kernel resolves the whole path under dirfd atomically, so a symlink
 * swapped in between a check and an open cannot lead outside the root. */
#define _GNU_SOURCE
#include "fs.h"

#include <errno.h>
#include <linux/openat2.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437 /* the same number on every architecture */
#endif

int us_open_beneath(int dirfd, const char *path, int flags)
{
    struct open_how how = {
        .flags = (uint64_t)(unsigned)flags,
        .mode = 0,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
    };
    long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    return fd < 0 ? -errno : (int)fd;
}

int us_same_file(const char *path, const uint64_t *id)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return -errno;
    return (uint64_t)st.st_ino == id[0] && (uint64_t)st.st_dev == id[1] && (uint64_t)st.st_size == id[2] &&
           (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec == id[3] &&
           (uint64_t)st.st_ctim.tv_sec * 1000000000u + (uint64_t)st.st_ctim.tv_nsec == id[4];
}
