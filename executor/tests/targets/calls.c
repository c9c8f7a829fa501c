/* Makes the calls named on its command line, in order, and exits with the errno of
 * the first that fails (0 if none does): the errno a rule injected is the exit code.
 *   getppid   syscall(SYS_getppid), not the C library's cached value
 *   write     two bytes to stdout
 *   sigpipe   fails with 200 unless SIGPIPE has its default action
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "getppid") == 0) {
            if (syscall(SYS_getppid) < 0)
                return errno;
        } else if (strcmp(argv[i], "write") == 0) {
            if (write(1, "x\n", 2) < 0)
                return errno;
        } else if (strcmp(argv[i], "sigpipe") == 0) {
            struct sigaction sa;
            if (sigaction(SIGPIPE, NULL, &sa) != 0 || sa.sa_handler != SIG_DFL)
                return 200;
        } else {
            fprintf(stderr, "calls: unknown call %s\n", argv[i]);
            return 201;
        }
    }
    return 0;
}
