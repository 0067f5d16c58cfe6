/* A storage fault injector for real processes, loaded with LD_PRELOAD by tests/faults.rs.
 *
 * It wraps the calls that write or flush file data (write, pwrite, pwrite64, writev, pwritev,
 * fsync, fdatasync) and, for a file whose path starts with ENLACE_FAULT_UNDER (a directory,
 * or a database file and its -wal and -shm), reads the control file
 * ENLACE_FAULT_CONTROL before each call:
 *
 *   off          (or no file)  every call goes through
 *   enospc                     every call fails with ENOSPC (a full disk)
 *   eio                        every call fails with EIO (a failing disk)
 *   fail-nth N                 the Nth call (1-based) after the control file last changed
 *                              fails with EIO; every other goes through
 *
 * After each call on such a file the shim writes how many it has seen since the control file
 * last changed to ENLACE_FAULT_CONTROL.count, so that a test can count the operations of a
 * workload before sweeping over them. Files elsewhere (sockets, pipes, stderr) are untouched.
 *
 * What to wrap was read from the binary's imports (`nm -D --undefined-only enlace`): SQLite and
 * std write files with write, writev and pwrite64 and flush them with fsync; pwrite, pwritev
 * and fdatasync are wrapped too, for builds that use them. Left alone: ftruncate64 (SQLite
 * sizes and truncates files with it; growing a file that way allocates nothing) and mmap (the
 * WAL index in shared memory, not durable data).
 *
 * Written in C so that the Rust crates keep #![forbid(unsafe_code)].
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char last_control[128];
static long seen;

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);

static void *next(const char *name) {
    void *f = dlsym(RTLD_NEXT, name);
    if (f == NULL) {
        abort();
    }
    return f;
}

/* Whether fd names a regular file under ENLACE_FAULT_UNDER. */
static int watched(int fd) {
    const char *under = getenv("ENLACE_FAULT_UNDER");
    if (under == NULL || *under == '\0' || fd < 0) {
        return 0;
    }
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) {
        return 0;
    }
    path[n] = '\0';
    size_t len = strlen(under);
    return strncmp(path, under, len) == 0;
}

/* The errno the current call must fail with, or 0; counts the call. */
static int fault(void) {
    const char *control = getenv("ENLACE_FAULT_CONTROL");
    if (control == NULL) {
        return 0;
    }
    char text[128] = {0};
    int cfd = open(control, O_RDONLY | O_CLOEXEC);
    if (cfd >= 0) {
        ssize_t n = read(cfd, text, sizeof text - 1);
        close(cfd);
        if (n < 0) {
            n = 0;
        }
        text[n] = '\0';
        while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == ' ')) {
            text[--n] = '\0';
        }
    }
    pthread_mutex_lock(&lock);
    if (strcmp(text, last_control) != 0) {
        memcpy(last_control, text, sizeof last_control);
        seen = 0;
    }
    long count = ++seen;

    /* Written to a temporary file and renamed, under the lock: a reader never sees the count
     * file empty or half written, nor an older count overwrite a newer one. */
    char counted[4096], temporary[4096];
    snprintf(counted, sizeof counted, "%s.count", control);
    snprintf(temporary, sizeof temporary, "%s.count.tmp", control);
    int wfd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (wfd >= 0) {
        char digits[32];
        int len = snprintf(digits, sizeof digits, "%ld\n", count);
        if (real_write(wfd, digits, (size_t)len) < 0) {
            /* the count is best effort */
        }
        close(wfd);
        rename(temporary, counted);
    }
    pthread_mutex_unlock(&lock);

    if (strcmp(text, "enospc") == 0) {
        return ENOSPC;
    }
    if (strcmp(text, "eio") == 0) {
        return EIO;
    }
    long nth;
    if (sscanf(text, "fail-nth %ld", &nth) == 1 && nth == count) {
        return EIO;
    }
    return 0;
}

__attribute__((constructor)) static void init(void) {
    real_write = next("write");
    real_pwrite = next("pwrite");
    real_pwrite64 = next("pwrite64");
    real_writev = next("writev");
    real_pwritev = next("pwritev");
    real_fsync = next("fsync");
    real_fdatasync = next("fdatasync");
}

#define FAIL_IF_FAULTED(fd)                 \
    do {                                    \
        if (watched(fd)) {                  \
            int e = fault();                \
            if (e != 0) {                   \
                errno = e;                  \
                return -1;                  \
            }                               \
        }                                   \
    } while (0)

ssize_t write(int fd, const void *buf, size_t n) {
    FAIL_IF_FAULTED(fd);
    return real_write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    FAIL_IF_FAULTED(fd);
    return real_pwrite(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    FAIL_IF_FAULTED(fd);
    return real_pwrite64(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    FAIL_IF_FAULTED(fd);
    return real_writev(fd, iov, cnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
    FAIL_IF_FAULTED(fd);
    return real_pwritev(fd, iov, cnt, off);
}

int fsync(int fd) {
    FAIL_IF_FAULTED(fd);
    return real_fsync(fd);
}

int fdatasync(int fd) {
    FAIL_IF_FAULTED(fd);
    return real_fdatasync(fd);
}
