/* A test target: performs the syscalls named on its command line and records what
 * each one returned ("OK" or the errno name), one line per call, in $PROBE_OUT
 * (or stdout). Results go to a file under /dev/shm by default in the tests: /dev/ is
 * a system path, so write faults without a glob do not hide the report itself.
 *
 * Ops: open: create: write: writev: pwrite: read: fsync: fdatasync: mkdir: rmdir:
 * unlink: stat: statx: connect:PORT sendto sendmsg recvfrom getpid getppid uid ifaces
 * seccomp segv rep:N:OP fork:OP thread:OP spawn:OP join time:OP sleep:MS exit:N kill:SIG
 * tag:ANY
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int out_fd = 1;
static pthread_t spawned[256];
static int nspawned;

static void report(const char *op, const char *arg, const char *result) {
    char line[512];
    int n = snprintf(line, sizeof line, "%s %s %s\n", op, arg ? arg : "-", result);
    if (n > 0) (void)!write(out_fd, line, (size_t)n);
}

static const char *res(long rc) { return rc < 0 ? strerrorname_np(errno) : "OK"; }

static void run(const char *spec);

static void *thread_main(void *arg) { run((const char *)arg); return NULL; }

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Opens PATH for writing; reports and returns -1 when the open itself fails. */
static int open_w(const char *op, const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        char r[64];
        snprintf(r, sizeof r, "open:%s", strerrorname_np(errno));
        report(op, path, r);
    }
    return fd;
}

static void run(const char *spec) {
    char op[64] = {0};
    const char *arg = strchr(spec, ':');
    size_t oplen = arg ? (size_t)(arg - spec) : strlen(spec);
    if (oplen >= sizeof op) oplen = sizeof op - 1;
    memcpy(op, spec, oplen);
    if (arg) arg++;
    char buf[64] = "hello";

    if (!strcmp(op, "open")) {
        int fd = open(arg, O_RDONLY);
        report(op, arg, res(fd));
        if (fd >= 0) close(fd);
    } else if (!strcmp(op, "create")) {
        int fd = open(arg, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        report(op, arg, res(fd));
        if (fd >= 0) close(fd);
    } else if (!strcmp(op, "write") || !strcmp(op, "writev") || !strcmp(op, "pwrite")) {
        int fd = open_w(op, arg);
        if (fd < 0) return;
        long rc;
        if (!strcmp(op, "write")) rc = write(fd, buf, 5);
        else if (!strcmp(op, "pwrite")) rc = pwrite(fd, buf, 5, 0);
        else { struct iovec iov = {buf, 5}; rc = writev(fd, &iov, 1); }
        report(op, arg, res(rc));
        close(fd);
    } else if (!strcmp(op, "read")) {
        int fd = open(arg, O_RDONLY);
        if (fd < 0) { report(op, arg, "open-failed"); return; }
        report(op, arg, res(read(fd, buf, sizeof buf)));
        close(fd);
    } else if (!strcmp(op, "fsync") || !strcmp(op, "fdatasync")) {
        int fd = open_w(op, arg);
        if (fd < 0) return;
        report(op, arg, res(!strcmp(op, "fsync") ? fsync(fd) : fdatasync(fd)));
        close(fd);
    } else if (!strcmp(op, "mkdir")) {
        report(op, arg, res(mkdir(arg, 0755)));
    } else if (!strcmp(op, "rmdir")) {
        report(op, arg, res(rmdir(arg)));
    } else if (!strcmp(op, "unlink")) {
        report(op, arg, res(unlink(arg)));
    } else if (!strcmp(op, "stat")) {
        struct stat st;
        report(op, arg, res(syscall(SYS_newfstatat, AT_FDCWD, arg, &st, 0)));
    } else if (!strcmp(op, "statx")) {
        struct statx stx;
        report(op, arg, res(statx(AT_FDCWD, arg, 0, STATX_BASIC_STATS, &stx)));
    } else if (!strcmp(op, "connect")) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(arg))};
        inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
        report(op, arg, res(connect(s, (struct sockaddr *)&sa, sizeof sa)));
        close(s);
    } else if (!strcmp(op, "sendto") || !strcmp(op, "sendmsg") || !strcmp(op, "recvfrom")) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0) { report(op, arg, "socketpair-failed"); return; }
        long rc;
        if (!strcmp(op, "sendmsg")) {
            struct iovec iov = {buf, 5};
            struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
            rc = sendmsg(sv[0], &m, 0);
        } else {
            rc = sendto(sv[0], buf, 5, 0, NULL, 0);
        }
        if (!strcmp(op, "recvfrom")) rc = recvfrom(sv[1], buf, sizeof buf, MSG_DONTWAIT, NULL, NULL);
        report(op, arg, res(rc));
        close(sv[0]);
        close(sv[1]);
    } else if (!strcmp(op, "getpid") || !strcmp(op, "getppid") || !strcmp(op, "uid")) {
        long v = !strcmp(op, "getpid") ? getpid() : !strcmp(op, "getppid") ? getppid() : (long)getuid();
        char r[32];
        snprintf(r, sizeof r, "%ld", v);
        report(op, arg, r);
    } else if (!strcmp(op, "ifaces")) {
        struct if_nameindex *ifs = if_nameindex();
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        for (struct if_nameindex *i = ifs; i && i->if_index; i++) {
            struct ifreq ifr = {0};
            strncpy(ifr.ifr_name, i->if_name, IFNAMSIZ - 1);
            ioctl(s, SIOCGIFFLAGS, &ifr);
            report(op, i->if_name, (ifr.ifr_flags & IFF_UP) ? "UP" : "DOWN");
        }
        if (ifs) if_freenameindex(ifs);
        close(s);
    } else if (!strcmp(op, "seccomp")) {
        FILE *f = fopen("/proc/self/status", "r");
        char line[256];
        while (f && fgets(line, sizeof line, f))
            if (!strncmp(line, "Seccomp:", 8)) {
                line[strcspn(line, "\n")] = 0;
                report(op, arg, line + 9 + strspn(line + 9, " \t"));
            }
        if (f) fclose(f);
    } else if (!strcmp(op, "rep")) {
        int n = atoi(arg);
        const char *inner = strchr(arg, ':');
        for (int i = 0; inner && i < n; i++) run(inner + 1);
    } else if (!strcmp(op, "fork")) {
        pid_t p = fork();
        if (p == 0) { run(arg); _exit(0); }
        if (p < 0) { report(op, arg, res(p)); return; }
        waitpid(p, NULL, 0);
    } else if (!strcmp(op, "thread")) {
        pthread_t t;
        if (pthread_create(&t, NULL, thread_main, (void *)arg) != 0) { report(op, arg, "thread-failed"); return; }
        pthread_join(t, NULL);
    } else if (!strcmp(op, "spawn")) {
        /* Runs OP on a thread without waiting for it; "join" waits for all of them. */
        if (nspawned < 256 && pthread_create(&spawned[nspawned], NULL, thread_main, (void *)arg) == 0)
            nspawned++;
        else
            report(op, arg, "thread-failed");
    } else if (!strcmp(op, "join")) {
        for (int i = 0; i < nspawned; i++) pthread_join(spawned[i], NULL);
        nspawned = 0;
    } else if (!strcmp(op, "time")) {
        double t0 = now_ms();
        run(arg);
        char r[32];
        snprintf(r, sizeof r, "%.1f", now_ms() - t0);
        report(op, arg, r);
    } else if (!strcmp(op, "sleep")) {
        usleep((useconds_t)atoi(arg) * 1000);
    } else if (!strcmp(op, "exit")) {
        exit(atoi(arg));
    } else if (!strcmp(op, "kill")) {
        kill(getpid(), atoi(arg));
        signal(atoi(arg), SIG_DFL);
        raise(atoi(arg));
    } else if (!strcmp(op, "segv")) {
        *(volatile int *)0 = 1;
    } else if (!strcmp(op, "tag")) {
        /* A marker on the command line so tests can look for leftovers. */
    } else {
        report(op, arg, "UNKNOWN-OP");
    }
}

int main(int argc, char **argv) {
    const char *out = getenv("PROBE_OUT");
    if (out) {
        out_fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (out_fd < 0) { perror("probe: PROBE_OUT"); return 3; }
    }
    for (int i = 1; i < argc; i++) run(argv[i]);
    return 0;
}
