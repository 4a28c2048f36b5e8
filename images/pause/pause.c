/* The pod sandbox ("pause") program for the test suite's local Kubernetes node: it holds the
 * pod's namespaces open and does nothing else. It sleeps until SIGTERM or SIGINT, then exits 0,
 * and reaps any zombie it inherits (it is PID 1 of the pod when the PID namespace is shared).
 * Built static (gcc -static) so the image is FROM scratch with no registry involved; see
 * ops/kubernetes/node.sh, which builds it. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) { (void)sig; _exit(0); }

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction stop = {.sa_handler = on_stop};
    struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
    sigemptyset(&stop.sa_mask);
    sigemptyset(&child.sa_mask);
    if (sigaction(SIGTERM, &stop, NULL) || sigaction(SIGINT, &stop, NULL) ||
        sigaction(SIGCHLD, &child, NULL))
        return 1;
    for (;;)
        pause();
}
