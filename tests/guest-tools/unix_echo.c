/* Test-host tool: a unix stream socket echo server for hybrid vsock's
 * guest-initiated direction (the VMM connects guest port P to PATH_P), and
 * the no-VM baseline of the vsock throughput benchmark.
 * Usage: unix-echo PATH CONNECTIONS     server: serves CONNECTIONS
 *                                       connections (each in a child that
 *                                       echoes until EOF, then half-closes)
 *        unix-echo connect PATH BYTES   client: sends BYTES, reads them
 *                                       back, exits 0 if all came back */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static int client(const char *path, long total) {
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof addr.sun_path) return 2;
    strcpy(addr.sun_path, path);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr)) { perror("unix-echo connect"); return 1; }
    if (fork() == 0) {
        static char out[65536];
        for (long sent = 0; sent < total;) {
            long n = total - sent < (long)sizeof out ? total - sent : (long)sizeof out;
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
    static char in[65536];
    long got = 0;
    ssize_t n;
    while ((n = read(s, in, sizeof in)) > 0) got += n;
    wait(NULL);
    return got != total;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "connect")) return client(argv[2], atol(argv[3]));
    if (argc != 3) { fprintf(stderr, "usage: unix-echo PATH CONNECTIONS\n"); return 2; }
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    if (strlen(argv[1]) >= sizeof addr.sun_path) { fprintf(stderr, "unix-echo: path too long\n"); return 2; }
    strcpy(addr.sun_path, argv[1]);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    unlink(argv[1]);
    if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) || listen(s, 128)) { perror("unix-echo"); return 1; }
    int count = atoi(argv[2]), failed = 0, status;
    for (int i = 0; i < count; i++) {
        int c = accept(s, NULL, NULL);
        if (c < 0) { perror("accept"); return 1; }
        if (fork() == 0) {
            static char buf[65536];
            ssize_t n;
            while ((n = read(c, buf, sizeof buf)) > 0)
                for (ssize_t off = 0; off < n;) {
                    ssize_t w = write(c, buf + off, (size_t)(n - off));
                    if (w <= 0) _exit(1);
                    off += w;
                }
            shutdown(c, SHUT_WR);
            _exit(n < 0);
        }
        close(c);
    }
    while (wait(&status) > 0) failed |= !WIFEXITED(status) || WEXITSTATUS(status);
    printf("unix-echo: done, %s\n", failed ? "a connection failed" : "all connections ok");
    return failed;
}
