/* A slow disk for `cargo xtask bench dhcp --fsync-delay-us N`: every fsync and fdatasync of
 * the process waits N microseconds (SLOW_FSYNC_US) before doing the real one, as a disk whose
 * cache flush takes that long would. Loaded with LD_PRELOAD; this machine has no dm-delay. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static void wait_like_a_disk(void) {
    const char *v = getenv("SLOW_FSYNC_US");
    long us = v ? atol(v) : 0;
    if (us > 0) {
        struct timespec t = { us / 1000000, (us % 1000000) * 1000 };
        nanosleep(&t, NULL);
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    wait_like_a_disk();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    wait_like_a_disk();
    return real(fd);
}
