/* Guest-side test tool: a vsock stream echo server.
 * Usage: vsock-echo PORT [CONNECTIONS]
 * Accepts CONNECTIONS connections (default 1), each served by its own child
 * process that echoes everything back and half-closes on EOF; exits when
 * all are done. Built statically by the nested test and put in the guest
 * initramfs. */
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void echo(int c) {
    static char buf[65536];
    ssize_t n;
    while ((n = read(c, buf, sizeof buf)) > 0) {
        char *p = buf;
        while (n > 0) {
            ssize_t w = write(c, p, (size_t)n);
            if (w <= 0) _exit(1);
            p += w;
            n -= w;
        }
    }
    shutdown(c, SHUT_WR);
    _exit(n < 0);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: vsock-echo PORT [CONNECTIONS]\n"); return 2; }
    int count = argc > 2 ? atoi(argv[2]) : 1;
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_port = (unsigned)atoi(argv[1]), .svm_cid = VMADDR_CID_ANY };
    if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) || listen(s, 128)) { perror("vsock-echo"); return 1; }
    printf("vsock-echo: listening on port %s for %d connection(s)\n", argv[1], count);
    fflush(stdout);
    int failed = 0;
    for (int i = 0; i < count; i++) {
        int c = accept(s, NULL, NULL);
        if (c < 0) { perror("accept"); return 1; }
        if (fork() == 0) echo(c);
        close(c);
    }
    int status;
    while (wait(&status) > 0) failed |= !WIFEXITED(status) || WEXITSTATUS(status);
    printf("vsock-echo: done, %s\n", failed ? "a connection failed" : "all connections ok");
    return failed;
}
