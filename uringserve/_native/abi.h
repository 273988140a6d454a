/* Kernel ABI pieces newer than the build host's <linux/io_uring.h>.
 *
 * Debian 12 ships 6.1 uapi headers; the running kernel may be far newer.
 * Everything here is a fixed ABI value, so defining it when the header
 * lacks it is safe: whether the *running* kernel accepts it is decided
 * at run time by IORING_REGISTER_PROBE and by retrying setup flags.
 */
#ifndef URINGSERVE_ABI_H
#define URINGSERVE_ABI_H

#include <linux/io_uring.h>

#ifndef IORING_OP_FIXED_FD_INSTALL
#define IORING_OP_FIXED_FD_INSTALL 54          /* 6.8 */
#endif
#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4)       /* 6.10 */
#endif
#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2                    /* 6.12 */
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)        /* 6.12 */
#endif
#ifndef IORING_FEAT_RECVSEND_BUNDLE
#define IORING_FEAT_RECVSEND_BUNDLE (1U << 14) /* 6.10 */
#endif
#ifndef IORING_SETUP_NO_SQARRAY
#define IORING_SETUP_NO_SQARRAY (1U << 16)     /* 6.6 */
#endif
#ifndef IORING_ASYNC_CANCEL_FD_FIXED
#define IORING_ASYNC_CANCEL_FD_FIXED (1U << 3)
#endif

#endif
