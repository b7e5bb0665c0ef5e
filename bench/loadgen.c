/* Loopback connection load for bench/capture.py.
 *
 *   loadgen server PORT WORKERS SECONDS      accept, read the request, answer one byte, close
 *   loadgen client PORT SRC_IP SECONDS       connect, send, read the answer, close; repeat
 *
 * The server closes first, so TIME_WAIT lands on its side and clients never run out of
 * ephemeral ports. A client prints how many connections completed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int serve(int port, int workers, double seconds)
{
    for (int w = 0; w < workers; w++) {
        if (fork() == 0) {
            int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
            struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
            addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) || listen(fd, 4096)) {
                perror("server");
                _exit(1);
            }
            alarm((unsigned)seconds + 1);
            char buf[64];
            for (;;) {
                int conn = accept(fd, NULL, NULL);
                if (conn < 0)
                    continue;
                if (read(conn, buf, sizeof(buf)) > 0 && write(conn, "k", 1) < 0)
                    perror("write");
                close(conn);
            }
        }
    }
    int status;
    while (wait(&status) > 0)
        ;
    return 0;
}

static int client(int port, const char *src, double seconds)
{
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(port)};
    dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct sockaddr_in local = {.sin_family = AF_INET};
    inet_pton(AF_INET, src, &local.sin_addr);
    long done = 0, failed = 0;
    double end = now() + seconds;
    char buf[8];
    while (now() < end) {
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&local, sizeof(local)) ||
            connect(fd, (struct sockaddr *)&dst, sizeof(dst))) {
            failed++;
            close(fd);
            continue;
        }
        if (write(fd, "hello", 5) == 5 && read(fd, buf, sizeof(buf)) == 1 &&
            read(fd, buf, sizeof(buf)) == 0)
            done++;
        else
            failed++;
        close(fd);
    }
    printf("%ld %ld\n", done, failed);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "server") == 0)
        return serve(atoi(argv[2]), atoi(argv[3]), atof(argv[4]));
    if (argc == 5 && strcmp(argv[1], "client") == 0)
        return client(atoi(argv[2]), argv[3], atof(argv[4]));
    fprintf(stderr, "usage: loadgen server PORT WORKERS SECONDS | client PORT SRC SECONDS\n");
    return 2;
}
