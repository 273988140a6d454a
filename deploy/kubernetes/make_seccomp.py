"""Writes seccomp-uringserve.json: the container runtimes' default policy
(allow what a normal program uses, deny what Docker's default profile
documents as blocked) plus io_uring_setup, io_uring_enter and
io_uring_register, which the runtimes' defaults block since 2023.

The allow-list is this machine's x86_64 system call table
(asm/unistd_64.h) minus that deny-list, so it is written here, not copied
from a runtime. Run it again after a kernel header update; the test in
tests/test_deploy.py checks the committed file is what it writes.

    python deploy/kubernetes/make_seccomp.py [HEADER] > deploy/kubernetes/seccomp-uringserve.json
"""

from __future__ import annotations

import json
import re
import sys

HEADER = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
IO_URING = ["io_uring_setup", "io_uring_enter", "io_uring_register"]
# Docker's default profile: "significant syscalls blocked" (its seccomp documentation)
# and the ones it allows only with capabilities a non-root container lacks
DENIED = set(
    """
    acct add_key bpf clock_adjtime clock_settime create_module delete_module finit_module
    get_kernel_syms get_mempolicy init_module ioperm iopl kcmp kexec_file_load kexec_load keyctl
    lookup_dcookie mbind mount mount_setattr move_mount move_pages name_to_handle_at nfsservctl
    open_by_handle_at open_tree fsopen fsconfig fsmount fspick perf_event_open pivot_root
    process_vm_readv process_vm_writev ptrace query_module quotactl quotactl_fd reboot request_key
    set_mempolicy set_mempolicy_home_node setns settimeofday stime swapon swapoff sysfs _sysctl
    umount umount2 unshare uselib userfaultfd ustat vm86 vm86old vhangup syslog fanotify_init
    afs_syscall tuxcall security putpmsg getpmsg vserver
    """.split()
)


def syscalls(header: str) -> list[str]:
    with open(header) as f:
        return re.findall(r"^#define __NR_(\w+)\s+\d+", f.read(), re.M)


def profile(header: str = HEADER) -> dict:
    allowed = sorted((set(syscalls(header)) - DENIED) | set(IO_URING))
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": allowed, "action": "SCMP_ACT_ALLOW"}],
    }


if __name__ == "__main__":
    json.dump(profile(*sys.argv[1:2]), sys.stdout, indent=1)
    sys.stdout.write("\n")
