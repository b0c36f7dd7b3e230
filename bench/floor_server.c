/*
 * The floor for `make bench`: a minimal stateless server of the directory protocol's shape.
 * It accepts a connection, reads until it has the request's NUL-terminated fields (the count
 * is taken from the operation name), answers "0\0" and closes. It keeps no state and does
 * no I/O besides the socket, so its throughput is the cost of one connection per request on
 * this machine. Single-threaded epoll, non-blocking sockets.
 *
 * usage: floor_server PORT   (prints "listening <port>" once ready; PORT 0 picks a free one)
 *
 * SIGUSR1 makes it print "get_file <count>": the GET_FILE requests (peer checks) it has
 * answered so far, for the benchmark that counts the directory servers' checks.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CONNECTIONS 65536

struct connection {
    int fields;        /* NULs seen so far */
    int expected;      /* fields of this request, 0 until the operation name is known */
    char name[16];     /* the operation name as it arrives */
    int name_length;
};

static struct connection connections[MAX_CONNECTIONS];
static unsigned long get_files_answered;
static volatile sig_atomic_t report_requested;

static void request_report(int signal_number) {
    (void)signal_number;
    report_requested = 1;
}

static int fields_for(const char *name) {
    if (strcmp(name, "CONNECT") == 0 || strcmp(name, "DELETE") == 0 || strcmp(name, "LIST_CONTENT") == 0) return 4;
    if (strcmp(name, "PUBLISH") == 0) return 5;
    if (strcmp(name, "GET_FILE") == 0) return 2; /* a peer's request: the peer-check bench */
    return 3;
}

static void finish(int epoll_fd, int fd, int answer) {
    if (answer) {
        (void)!write(fd, "0", 2);
    }
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 1024) != 0) {
        perror("floor_server");
        return 1;
    }
    socklen_t length = sizeof address;
    getsockname(listener, (struct sockaddr *)&address, &length);
    printf("listening %d\n", ntohs(address.sin_port));
    fflush(stdout);

    /* No SA_RESTART: the signal interrupts epoll_wait, and the loop prints the count. */
    struct sigaction action = {.sa_handler = request_report};
    sigemptyset(&action.sa_mask);
    sigaction(SIGUSR1, &action, NULL);

    int epoll_fd = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.fd = listener};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listener, &event);
    struct epoll_event events[256];
    char buffer[4096];
    for (;;) {
        int ready = epoll_wait(epoll_fd, events, 256, -1);
        if (report_requested) {
            report_requested = 0;
            printf("get_file %lu\n", get_files_answered);
            fflush(stdout);
        }
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                int client;
                while ((client = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (client >= MAX_CONNECTIONS) {
                        close(client);
                        continue;
                    }
                    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    memset(&connections[client], 0, sizeof connections[client]);
                    struct epoll_event client_event = {.events = EPOLLIN, .data.fd = client};
                    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, client, &client_event);
                }
                continue;
            }
            struct connection *c = &connections[fd];
            ssize_t count = read(fd, buffer, sizeof buffer);
            if (count <= 0) {
                if (count < 0 && errno == EAGAIN) continue;
                finish(epoll_fd, fd, 0);
                continue;
            }
            int done = 0;
            for (ssize_t k = 0; k < count && !done; k++) {
                if (c->expected == 0 && buffer[k] != '\0' && c->name_length < 15) {
                    c->name[c->name_length++] = buffer[k];
                }
                if (buffer[k] == '\0') {
                    c->fields++;
                    if (c->expected == 0) c->expected = fields_for(c->name);
                    if (c->fields >= c->expected) done = 1;
                }
            }
            if (done) {
                if (strcmp(c->name, "GET_FILE") == 0) get_files_answered++;
                finish(epoll_fd, fd, 1);
            }
        }
    }
}
