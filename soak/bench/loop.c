// loop: the benchmark target. Times ITERATIONS raw calls of one syscall.
//
// Usage: loop SYSCALL ITERATIONS
//   SYSCALL is one of:
//     getppid  the cheapest syscall there is: measures pure entry/exit cost
//     write    1 byte to an fd opened on /dev/null before timing starts
//     openat   openat + close of /tmp/faultbox-bench-file (created beforehand)
//
// Prints exactly one line, `ns_per_call=<float>`, to stderr.
//
// The measured syscall may be denied by a supervisor (that is the point of
// the benchmark), so return values are ignored everywhere in the hot path,
// and setup failures that a deny could cause are tolerated too.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define WARMUP_ITERATIONS 1000
#define BENCH_FILE "/tmp/faultbox-bench-file"

enum which { W_GETPPID, W_WRITE, W_OPENAT };

static int null_fd = -1;

static void usage(void) {
    static const char msg[] = "usage: loop getppid|write|openat ITERATIONS\n";
    (void)!write(2, msg, sizeof msg - 1);
    exit(2);
}

// One unit of work. `syscall()` rather than the libc wrappers so that no
// libc caching or vDSO shortcut can skip the kernel entry we want to time.
static inline void one_call(enum which w) {
    switch (w) {
    case W_GETPPID:
        syscall(SYS_getppid);
        break;
    case W_WRITE:
        syscall(SYS_write, null_fd, "x", 1);
        break;
    case W_OPENAT: {
        long fd = syscall(SYS_openat, AT_FDCWD, BENCH_FILE, O_RDONLY | O_CLOEXEC);
        // Only close what was really opened: a denied openat returns -1.
        if (fd >= 0)
            syscall(SYS_close, fd);
        break;
    }
    }
}

static double now_ns(void) {
    struct timespec ts;
    // CLOCK_MONOTONIC goes through the vDSO, so reading the clock is not
    // itself a syscall that a filter could intercept or slow down.
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        perror("clock_gettime");
        exit(1);
    }
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 3)
        usage();

    enum which w;
    if (strcmp(argv[1], "getppid") == 0)
        w = W_GETPPID;
    else if (strcmp(argv[1], "write") == 0)
        w = W_WRITE;
    else if (strcmp(argv[1], "openat") == 0)
        w = W_OPENAT;
    else
        usage();

    char *end;
    errno = 0;
    unsigned long long iterations = strtoull(argv[2], &end, 10);
    if (errno != 0 || *end != '\0' || iterations == 0)
        usage();

    // Setup is done through openat too, so under an openat-deny supervisor
    // it fails. That is harmless: the measured calls would be denied anyway
    // and we only time the (denied) syscall, so failures are ignored here.
    if (w == W_WRITE)
        null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (w == W_OPENAT) {
        int fd = open(BENCH_FILE, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0)
            close(fd);
    }

    // Warm-up: fault in code/data pages, let the supervisor reach its steady
    // state (threads woken, caches hot) before the clock starts.
    for (int i = 0; i < WARMUP_ITERATIONS; i++)
        one_call(w);

    double start = now_ns();
    for (unsigned long long i = 0; i < iterations; i++)
        one_call(w);
    double elapsed = now_ns() - start;

    // Report with a single writev() to fd 2: one syscall keeps the line atomic
    // even when a supervisor interleaves its own stderr output, and using
    // writev (not write) means a write-deny run still gets its report out.
    char line[64];
    int len = snprintf(line, sizeof line, "ns_per_call=%.2f\n", elapsed / (double)iterations);
    if (len < 0 || (size_t)len >= sizeof line)
        return 1;
    struct iovec iov = {.iov_base = line, .iov_len = (size_t)len};
    if (writev(2, &iov, 1) != len)
        return 1;
    return 0;
}
