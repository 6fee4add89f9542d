/* Guest-side test tool for virtio-vsock.
 * Usage: vsock-echo PORT [CONNECTIONS]     echo server
 *        vsock-echo connect CID PORT BYTES client: sends BYTES pseudo-random
 *                                          bytes, reads them back, compares
 * The server accepts CONNECTIONS connections (default 1), each served by its
 * own child process that echoes everything back and half-closes on EOF; it
 * exits when all are done. Built statically by the nested test and put in
 * the guest initramfs. */
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* Client mode: returns 0 when the echoed bytes equal the sent ones. */
static int client(unsigned cid, unsigned port, long total) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_port = port, .svm_cid = cid };
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr)) { perror("vsock-echo connect"); return 1; }
    pid_t writer = fork();
    if (writer == 0) {
        static unsigned char out[65536];
        unsigned x = 12345;
        for (long sent = 0; sent < total;) {
            long n = total - sent < (long)sizeof out ? total - sent : (long)sizeof out;
            for (long i = 0; i < n; i++) { x = x * 1103515245u + 12345u; out[i] = (unsigned char)(x >> 16); }
            for (long off = 0; off < n;) {
                ssize_t w = write(s, out + off, (size_t)(n - off));
                if (w <= 0) _exit(1);
                off += w;
            }
            sent += n;
        }
        shutdown(s, SHUT_WR);
        _exit(0);
    }
    static unsigned char in[65536];
    unsigned x = 12345;
    long got = 0, bad = 0;
    ssize_t n;
    while ((n = read(s, in, sizeof in)) > 0) {
        for (ssize_t i = 0; i < n; i++) { x = x * 1103515245u + 12345u; bad += in[i] != (unsigned char)(x >> 16); }
        got += n;
    }
    int status = 0;
    waitpid(writer, &status, 0);
    printf("vsock-echo: client sent %ld, got %ld back, %ld mismatched\n", total, got, bad);
    return !(got == total && bad == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

int main(int argc, char **argv) {
    if (argc == 5 && !strcmp(argv[1], "connect"))
        return client((unsigned)atoi(argv[2]), (unsigned)atoi(argv[3]), atol(argv[4]));
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
