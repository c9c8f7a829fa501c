// delayloop: the target of the delay benchmark (scripts/bench-delay.sh).
//
// Usage: delayloop THREADS CALLS
//
// Starts THREADS threads that each make CALLS raw getpid calls (after a short
// warm-up) and time every one with CLOCK_MONOTONIC (read through the vDSO, so
// the clock itself is never intercepted). A supervisor that delays getpid by d
// shows up as per-call latencies of d plus what the delay overshoots.
//
// Prints one line to stderr:
//   delay_result calls=N wall_s=S rate=R mean_us=M p50_us=P p99_us=Q max_us=X
// where rate is calls per second over all threads, measured from the moment
// every thread has finished its warm-up.

#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 20

static unsigned long calls;
static double *lat_ns;
static int nthreads;
static pthread_barrier_t start_line;

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void *worker(void *arg) {
    long t = (long)arg;
    for (int i = 0; i < WARMUP; i++)
        syscall(SYS_getpid);
    pthread_barrier_wait(&start_line);
    double *mine = lat_ns + (size_t)t * calls;
    for (unsigned long i = 0; i < calls; i++) {
        double a = now_ns();
        syscall(SYS_getpid);
        mine[i] = now_ns() - a;
    }
    return NULL;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: delayloop THREADS CALLS\n");
        return 2;
    }
    nthreads = atoi(argv[1]);
    calls = strtoul(argv[2], NULL, 10);
    if (nthreads < 1 || nthreads > 1024 || calls < 1) {
        fprintf(stderr, "delayloop: bad arguments\n");
        return 2;
    }
    size_t n = (size_t)nthreads * calls;
    lat_ns = calloc(n, sizeof *lat_ns);
    pthread_t *th = calloc((size_t)nthreads, sizeof *th);
    if (!lat_ns || !th)
        return 1;
    pthread_barrier_init(&start_line, NULL, (unsigned)nthreads + 1);
    for (long t = 0; t < nthreads; t++)
        if (pthread_create(&th[t], NULL, worker, (void *)t) != 0) {
            perror("pthread_create");
            return 1;
        }
    pthread_barrier_wait(&start_line);
    double start = now_ns();
    for (int t = 0; t < nthreads; t++)
        pthread_join(th[t], NULL);
    double wall = now_ns() - start;

    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += lat_ns[i];
    qsort(lat_ns, n, sizeof *lat_ns, cmp);
    double p50 = lat_ns[n / 2], p99 = lat_ns[(size_t)((double)(n - 1) * 0.99)];
    char line[256];
    int len = snprintf(line, sizeof line,
                       "delay_result calls=%zu wall_s=%.4f rate=%.1f mean_us=%.2f p50_us=%.2f "
                       "p99_us=%.2f max_us=%.2f\n",
                       n, wall / 1e9, (double)n / (wall / 1e9), sum / (double)n / 1e3, p50 / 1e3,
                       p99 / 1e3, lat_ns[n - 1] / 1e3);
    // One writev, so a supervisor's own stderr lines cannot split the report.
    struct iovec iov = {.iov_base = line, .iov_len = (size_t)len};
    return writev(2, &iov, 1) == len ? 0 : 1;
}
