// minsup: a minimal seccomp user-notification supervisor.
//
// It is the "raw kernel round trip" baseline of the Faultbox benchmark: it
// does the least a supervisor can do (RECV one notification, SEND one answer)
// so that the gap between it and Faultbox is Faultbox's own overhead.
//
// Usage:
//   minsup [--mode continue|deny] [--recv blocking|poll] [--sync-wakeup 0|1]
//          [--pin-same-cpu 0|1] [--filter-only] SYSCALL -- PROGRAM ARGS...
//
//   --mode continue     answer SECCOMP_USER_NOTIF_FLAG_CONTINUE (default)
//   --mode deny         answer error -EPERM
//   --recv blocking     plain SECCOMP_IOCTL_NOTIF_RECV loop (default)
//   --recv poll         poll() the listener before each RECV
//   --sync-wakeup 1     set SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP on the listener
//   --pin-same-cpu 1    pin supervisor and target to CPU 0
//   --filter-only       SYSCALL is not expected to be called by PROGRAM: the
//                       run measures what a one-rule filter adds to the other
//                       syscalls. Answers (continue) anyway, and warns if any
//                       notification arrived.
//
// On exit it prints `minsup: handled=N ...` to stderr and exits with the
// target's exit code (128+signal if it was killed).
//
// Limits (fine for a benchmark, documented so nobody is surprised):
//   - SYSCALL must not be one the child needs between installing the filter
//     and exec (sendmsg): nobody is listening yet, so that would deadlock.
//   - Only the direct child is waited for; when it exits, minsup exits, and
//     any descendants left behind get ENOSYS for SYSCALL.

#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <seccomp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

// Linux 6.6+, but the installed UAPI headers may predate it.
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#endif

enum mode { MODE_CONTINUE, MODE_DENY };
enum recv_kind { RECV_BLOCKING, RECV_POLL };

struct opts {
    enum mode mode;
    enum recv_kind recv;
    bool sync_wakeup;
    bool pin_same_cpu;
    bool filter_only;
    const char *syscall_name;
    char **argv; // PROGRAM ARGS..., NULL-terminated
};

static struct opts opts = {
    .mode = MODE_CONTINUE,
    .recv = RECV_BLOCKING,
};

static pid_t child_pid;
// Notifications received. Written only by the supervising thread, read by the
// waiter thread after the child is gone; relaxed atomics are enough and cost
// nothing on x86.
static atomic_ulong handled;

static void die(const char *what) {
    fprintf(stderr, "minsup: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void usage(void) {
    fprintf(stderr,
            "usage: minsup [--mode continue|deny] [--recv blocking|poll] [--sync-wakeup 0|1]\n"
            "              [--pin-same-cpu 0|1] [--filter-only] SYSCALL -- PROGRAM ARGS...\n");
    exit(2);
}

// Accepts both `--name value` and `--name=value`; returns the value or NULL
// if argv[*i] is not this option.
static const char *opt_value(int argc, char **argv, int *i, const char *name) {
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0)
        return NULL;
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (argv[*i][n] != '\0')
        return NULL;
    if (*i + 1 >= argc)
        usage();
    return argv[++*i];
}

static bool parse_bool(const char *v) {
    if (strcmp(v, "1") == 0)
        return true;
    if (strcmp(v, "0") == 0)
        return false;
    usage();
    return false;
}

static void parse_args(int argc, char **argv) {
    int i = 1;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0 && argv[i][2] != '\0'; i++) {
        const char *v;
        if ((v = opt_value(argc, argv, &i, "--mode"))) {
            if (strcmp(v, "continue") == 0)
                opts.mode = MODE_CONTINUE;
            else if (strcmp(v, "deny") == 0)
                opts.mode = MODE_DENY;
            else
                usage();
        } else if ((v = opt_value(argc, argv, &i, "--recv"))) {
            if (strcmp(v, "blocking") == 0)
                opts.recv = RECV_BLOCKING;
            else if (strcmp(v, "poll") == 0)
                opts.recv = RECV_POLL;
            else
                usage();
        } else if ((v = opt_value(argc, argv, &i, "--sync-wakeup"))) {
            opts.sync_wakeup = parse_bool(v);
        } else if ((v = opt_value(argc, argv, &i, "--pin-same-cpu"))) {
            opts.pin_same_cpu = parse_bool(v);
        } else if (strcmp(argv[i], "--filter-only") == 0) {
            opts.filter_only = true;
        } else {
            usage();
        }
    }
    // SYSCALL -- PROGRAM [ARGS...]
    if (argc - i < 3 || strcmp(argv[i + 1], "--") != 0)
        usage();
    opts.syscall_name = argv[i];
    opts.argv = &argv[i + 2];
}

// Pass the listener over the socketpair: the child must install the filter
// on itself, but it is the parent that has to hold the listener.
static void send_fd(int sock, int fd) {
    char dummy = 'f';
    struct iovec iov = {.iov_base = &dummy, .iov_len = 1};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct msghdr msg = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = ctl.buf,
        .msg_controllen = sizeof ctl.buf,
    };
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    if (sendmsg(sock, &msg, 0) != 1)
        die("sendmsg(listener)");
}

// Returns the received fd, or -1 if the child closed the socket without
// sending one (it failed before installing its filter).
static int recv_fd(int sock) {
    char dummy;
    struct iovec iov = {.iov_base = &dummy, .iov_len = 1};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    struct msghdr msg = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = ctl.buf,
        .msg_controllen = sizeof ctl.buf,
    };
    ssize_t n;
    do
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        die("recvmsg(listener)");
    if (n == 0)
        return -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (c == NULL || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
        c->cmsg_len != CMSG_LEN(sizeof(int))) {
        fprintf(stderr, "minsup: child sent no listener fd\n");
        exit(1);
    }
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof(int));
    return fd;
}

static int exit_code(int status) {
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return 1;
}

static int wait_child(void) {
    int status;
    while (waitpid(child_pid, &status, 0) < 0) {
        if (errno != EINTR)
            die("waitpid");
    }
    return exit_code(status);
}

static void finish(int code) {
    unsigned long n = atomic_load_explicit(&handled, memory_order_relaxed);
    fprintf(stderr, "minsup: handled=%lu mode=%s recv=%s sync_wakeup=%d pinned=%d%s\n", n,
            opts.mode == MODE_DENY ? "deny" : "continue",
            opts.recv == RECV_POLL ? "poll" : "blocking", opts.sync_wakeup, opts.pin_same_cpu,
            opts.filter_only ? " filter_only=1" : "");
    if (opts.filter_only && n > 0)
        fprintf(stderr, "minsup: warning: --filter-only run got %lu notifications for %s; "
                        "the measurement is not of the non-targeted path\n",
                n, opts.syscall_name);
    _exit(code);
}

// A blocking SECCOMP_IOCTL_NOTIF_RECV does not return when the last filter
// user exits, so the supervising thread can't notice the end by itself. This
// thread reaps the child and ends the whole process, whatever the main thread
// is blocked in.
static void *waiter(void *unused) {
    (void)unused;
    finish(wait_child());
    return NULL;
}

// Runs in the child, between fork and exec.
static void run_child(int sock, int nr) __attribute__((noreturn));
static void run_child(int sock, int nr) {
    // ALLOW by default; only SYSCALL goes to the supervisor. libseccomp sets
    // no_new_privs itself (SCMP_FLTATR_CTL_NNP defaults to on) and loads with
    // SECCOMP_FILTER_FLAG_NEW_LISTENER because the filter has a NOTIFY rule.
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (ctx == NULL) {
        fprintf(stderr, "minsup: seccomp_init failed\n");
        _exit(127);
    }
    int rc = seccomp_rule_add(ctx, SCMP_ACT_NOTIFY, nr, 0);
    if (rc < 0) {
        fprintf(stderr, "minsup: seccomp_rule_add(%s): %s\n", opts.syscall_name, strerror(-rc));
        _exit(127);
    }
    rc = seccomp_load(ctx);
    if (rc < 0) {
        fprintf(stderr, "minsup: seccomp_load: %s\n", strerror(-rc));
        _exit(127);
    }
    int listener = seccomp_notify_fd(ctx);
    if (listener < 0) {
        fprintf(stderr, "minsup: seccomp_notify_fd: %s\n", strerror(-listener));
        _exit(127);
    }
    seccomp_release(ctx);

    send_fd(sock, listener);
    // The target must not keep a reference to its own listener.
    close(listener);

    // Wait until the parent has configured the listener (SYNC_WAKE_UP) so the
    // whole run, warm-up included, sees one configuration. The result is
    // ignored on purpose: if SYSCALL is read and the mode is deny, this read
    // is itself denied -- but only once the parent is answering, which is the
    // ordering we wanted anyway.
    char ack;
    (void)!read(sock, &ack, 1);
    close(sock);

    execvp(opts.argv[0], opts.argv);
    fprintf(stderr, "minsup: exec %s: %s\n", opts.argv[0], strerror(errno));
    _exit(127);
}

static void supervise(int listener) {
    struct seccomp_notif req;
    struct seccomp_notif_resp resp;
    unsigned long n = 0;

    for (;;) {
        if (opts.recv == RECV_POLL) {
            struct pollfd p = {.fd = listener, .events = POLLIN};
            if (poll(&p, 1, -1) < 0) {
                if (errno == EINTR)
                    continue;
                die("poll(listener)");
            }
            // Check POLLIN first: a pending notification must be answered
            // even if the hang-up is reported in the same wake-up.
            if (!(p.revents & POLLIN)) {
                if (p.revents & (POLLHUP | POLLERR | POLLNVAL))
                    return;
                continue;
            }
        }

        // The kernel rejects a RECV buffer that is not zeroed.
        memset(&req, 0, sizeof req);
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0) {
            // ENOENT: the target was interrupted/killed after the kernel
            // queued the notification; there is nothing left to answer.
            if (errno == EINTR || errno == ENOENT)
                continue;
            die("SECCOMP_IOCTL_NOTIF_RECV");
        }
        // Count on receipt, not after SEND: once answered, the target may run
        // to exit before this thread is scheduled again, and the waiter would
        // report a count one short.
        atomic_store_explicit(&handled, ++n, memory_order_relaxed);

        memset(&resp, 0, sizeof resp);
        resp.id = req.id;
        if (opts.mode == MODE_DENY && !opts.filter_only)
            resp.error = -EPERM;
        else
            resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;

        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0) {
            // Same race as above, seen from the answering side.
            if (errno == ENOENT)
                continue;
            die("SECCOMP_IOCTL_NOTIF_SEND");
        }
    }
}

int main(int argc, char **argv) {
    parse_args(argc, argv);

    int nr = seccomp_syscall_resolve_name(opts.syscall_name);
    if (nr == __NR_SCMP_ERROR) {
        fprintf(stderr, "minsup: unknown syscall %s\n", opts.syscall_name);
        return 2;
    }

    // Pin before fork so the child (and, through exec, the target) and every
    // supervisor thread inherit CPU 0: the notification wake-up then never
    // has to cross CPUs.
    if (opts.pin_same_cpu) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(0, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0)
            die("sched_setaffinity(CPU 0)");
    }

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        die("socketpair");

    // Flush before fork so buffered output is not duplicated into the child.
    fflush(NULL);
    child_pid = fork();
    if (child_pid < 0)
        die("fork");
    if (child_pid == 0) {
        close(sv[0]);
        run_child(sv[1], nr);
    }
    close(sv[1]);

    int listener = recv_fd(sv[0]);
    if (listener < 0) {
        // The child reported its own error; pass its exit code on.
        int code = wait_child();
        fprintf(stderr, "minsup: child exited (%d) before handing over the listener\n", code);
        return code ? code : 1;
    }

    if (opts.sync_wakeup &&
        ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP) < 0)
        die("SECCOMP_IOCTL_NOTIF_SET_FLAGS(SYNC_WAKE_UP)");

    // Release the child into exec.
    if (write(sv[0], "g", 1) != 1)
        die("write(ack)");
    close(sv[0]);

    // Created after fork on purpose: the child of a multi-threaded process
    // may only call async-signal-safe functions, and libseccomp is not.
    pthread_t t;
    int rc = pthread_create(&t, NULL, waiter, NULL);
    if (rc != 0) {
        errno = rc;
        die("pthread_create");
    }

    supervise(listener);

    // Only the poll loop gets here, on POLLHUP (the last filter user is
    // gone). The waiter thread owns reaping and exiting; wait for it.
    pthread_join(t, NULL);
    return 1; // not reached: finish() exits
}
