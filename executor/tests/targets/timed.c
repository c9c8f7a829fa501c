/* Starts THREADS threads that each make CALLS raw getppid calls, times every call
 * with CLOCK_MONOTONIC (through the vDSO, never intercepted), and prints
 * `calls=N min_ns=M` to stdout: M is the shortest call of all.
 *   usage: timed THREADS CALLS
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long calls;
static long long shortest = -1;
static long done;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *worker(void *arg) {
    (void)arg;
    for (long i = 0; i < calls; i++) {
        long long a = now_ns();
        long rc = syscall(SYS_getppid);
        long long took = now_ns() - a;
        pthread_mutex_lock(&lock);
        if (rc >= 0) {
            done++;
            if (shortest < 0 || took < shortest)
                shortest = took;
        }
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    int threads = atoi(argv[1]);
    calls = atol(argv[2]);
    pthread_t th[64];
    if (threads < 1 || threads > 64 || calls < 1)
        return 2;
    for (int t = 0; t < threads; t++)
        if (pthread_create(&th[t], NULL, worker, NULL) != 0)
            return 1;
    for (int t = 0; t < threads; t++)
        pthread_join(th[t], NULL);
    printf("calls=%ld min_ns=%lld\n", done, shortest);
    return 0;
}
