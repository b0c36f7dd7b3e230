/*
 * The abusive neighbour of `make bench` (fairness): from one address, holds as many
 * connections to the directory server as it is let and sends nothing on them; every
 * connection the server closes (at accept, or at its deadline) is opened again at once.
 *
 * usage: holder --port P [--host 127.0.0.1] [--source 127.0.0.1] [--connections 1100]
 *               [--duration 10]
 * Stops after --duration seconds or at SIGTERM/SIGINT, whichever comes first.
 * Output: connections=N reopened=R held_max=H cpu_cores=C
 *   reopened: connections the server closed and the holder opened again;
 *   held_max: most connections open at the same moment (established and not yet closed).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in server, source;
static volatile sig_atomic_t stop_requested;

static void on_signal(int signal_number) {
    (void)signal_number;
    stop_requested = 1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Opens one non-blocking connection and watches it; -1 when the system refuses a socket. */
static int open_one(int epoll) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&source, sizeof source) != 0 ||
        (connect(fd, (struct sockaddr *)&server, sizeof server) != 0 && errno != EINPROGRESS)) {
        close(fd);
        return -1;
    }
    struct epoll_event event = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.fd = fd};
    epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event);
    return fd;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *from = "127.0.0.1";
    int port = 0, connections = 1100;
    double duration = 10;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--host")) host = argv[i + 1];
        else if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--source")) from = argv[i + 1];
        else if (!strcmp(argv[i], "--connections")) connections = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--duration")) duration = atof(argv[i + 1]);
    }
    server.sin_family = source.sin_family = AF_INET;
    server.sin_port = htons(port);
    if (port <= 0 || inet_pton(AF_INET, host, &server.sin_addr) != 1 ||
        inet_pton(AF_INET, from, &source.sin_addr) != 1) {
        fprintf(stderr, "usage: holder --port P [--host IP] [--source IP] [--connections N] [--duration S]\n");
        return 2;
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    struct rlimit limit = {connections + 64, connections + 64};
    setrlimit(RLIMIT_NOFILE, &limit);

    int epoll = epoll_create1(0);
    /* 1: connected and open; 0: connecting. Indexed by fd. */
    char *established = calloc(connections + 1024, 1);
    long reopened = 0;
    int open_count = 0, held = 0, held_max = 0;
    for (int i = 0; i < connections; i++) {
        if (open_one(epoll) >= 0) open_count++;
    }
    struct epoll_event events[256];
    double end = now() + duration;
    double start = now();
    while (now() < end && !stop_requested) {
        int n = epoll_wait(epoll, events, 256, 50);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            uint32_t what = events[i].events;
            if (what & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                /* Closed by the server (or refused): open another in its place. */
                if (established[fd]) held--;
                established[fd] = 0;
                close(fd);
                reopened++;
                if (open_one(epoll) < 0) open_count--;
            } else if ((what & EPOLLOUT) && !established[fd]) {
                established[fd] = 1;
                held++;
                if (held > held_max) held_max = held;
                struct epoll_event event = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = fd};
                epoll_ctl(epoll, EPOLL_CTL_MOD, fd, &event);
            }
        }
        /* Sockets the system refused earlier are tried again. */
        while (open_count < connections && open_one(epoll) >= 0) open_count++;
    }
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    double cpu = usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec +
                 usage.ru_stime.tv_usec / 1e6;
    printf("connections=%d reopened=%ld held_max=%d cpu_cores=%.2f\n", connections, reopened, held_max,
           cpu / (now() - start));
    return 0;
}
