/*
 * Load generator for `make bench`: speaks the directory protocol with one connection per
 * request, keeping N requests in flight (N "clients"), and prints throughput and latency
 * percentiles. Written in C with an epoll loop per thread; the clients are spread over
 * --threads threads (default 2), so that on a small machine the generator is not the limit
 * of what it measures. It reports its own CPU use (cores busy during the run) so the bench
 * can show that it is not the bottleneck.
 *
 * usage: loadgen --port P [--host 127.0.0.1] [--clients 64] [--threads 2] [--duration 3] [--workload W]
 *                [--tag T] [--source IP] [--sessions FILE]
 *   --source binds every connection to IP (another loopback address such as 127.0.0.2).
 *   --sessions FILE: the clients' users are keyed (docs/PROTOCOL.md, "Keys"): line i of FILE is
 *                client i's session and its key in hex, opened (and the user registered and
 *                connected, keyed) by the caller; every PUBLISH then goes keyed, with a counter
 *                and its HMAC-SHA256, as our client sends it. The rest stays as it is.
 *   W: register    a new user per request
 *      publish     a new file per request, for a connected user per client
 *      list-content LIST_CONTENT of a user with 10 files
 *      mixed       40% LIST_CONTENT, 20% LIST_USERS, 20% PUBLISH, 20% REGISTER
 *      mixed-rw    50% LIST_CONTENT, 25% PUBLISH, 25% REGISTER (for a large directory, where a
 *                  LIST_USERS of every connected user would be most of the work)
 * Output: workload=W clients=N threads=T requests=R rps=X p50_ms=A p99_ms=B errors=E cpu_cores=C
 * A request counts as an error when the connection fails or the result code is not 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

enum workload { REGISTER, PUBLISH, LIST_CONTENT, MIXED, MIXED_RW };

struct client {
    int fd;
    int index;
    long sequence;
    /* With --sessions: the user's keyed session, its key, and the last counter used. */
    char session[400];
    unsigned char key[32];
    unsigned long counter;
    double started;
    char request[1200];
    size_t length;
    size_t sent;
    int got_code;
    int code_ok;
};

static struct sockaddr_in server;
static struct sockaddr_in source;
static int has_source;
static const char *tag = "b";
static const char *date_time = "25/11/2026 13:05:09";
static enum workload workload = REGISTER;
static int keyed;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Appends NUL-terminated fields to buffer; returns the total length. */
static size_t fields(char *buffer, int count, ...) {
    va_list args;
    va_start(args, count);
    size_t length = 0;
    for (int i = 0; i < count; i++) {
        const char *field = va_arg(args, const char *);
        size_t n = strlen(field) + 1;
        memcpy(buffer + length, field, n);
        length += n;
    }
    va_end(args);
    return length;
}

/* Standard base64 with padding; returns the length written (out has room for 4/3 of n + 4). */
static size_t base64(const unsigned char *in, size_t n, char *out) {
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        out[o++] = i + 1 < n ? alphabet[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? alphabet[v & 63] : '=';
    }
    out[o] = 0;
    return o;
}

/* Puts KEYED, the session, the next counter and the MAC in front of the request in c->request
   (docs/PROTOCOL.md, "Keyed requests": HMAC-SHA256 over "p2p keyed request v1", the session,
   the counter and the request's fields, each NUL-terminated). */
static void make_keyed(struct client *c) {
    char counter[24], mac_text[64], covered[1600];
    snprintf(counter, sizeof counter, "%lu", ++c->counter);
    size_t n = fields(covered, 3, "p2p keyed request v1", c->session, counter);
    memcpy(covered + n, c->request, c->length);
    n += c->length;
    unsigned char mac[32];
    unsigned int mac_length = 0;
    HMAC(EVP_sha256(), c->key, sizeof c->key, (const unsigned char *)covered, n, mac, &mac_length);
    base64(mac, mac_length, mac_text);
    char request[1200];
    size_t prefix = fields(request, 4, "KEYED", c->session, counter, mac_text);
    memcpy(request + prefix, c->request, c->length);
    memcpy(c->request, request, prefix + c->length);
    c->length += prefix;
}

static void build_request(struct client *c) {
    char user[128], name[160];
    snprintf(user, sizeof user, "%s-c%d", tag, c->index);
    /* kind 0 REGISTER, 1 PUBLISH, 2 LIST_USERS, 3 and 4 LIST_CONTENT. mixed cycles through all
       five; mixed-rw through REGISTER, PUBLISH and LIST_CONTENT twice. */
    long kind = workload == MIXED ? c->sequence % 5 : workload == MIXED_RW ? (c->sequence % 4 == 2 ? 3 : c->sequence % 4) : -1;
    if (workload == REGISTER || kind == 0) {
        snprintf(name, sizeof name, "%s-%ld", user, c->sequence);
        c->length = fields(c->request, 3, "REGISTER", date_time, name);
    } else if (workload == PUBLISH || kind == 1) {
        snprintf(name, sizeof name, "file%ld", c->sequence);
        c->length = fields(c->request, 5, "PUBLISH", date_time, user, name, "bench file");
        if (keyed) make_keyed(c);
    } else if (kind == 2) {
        c->length = fields(c->request, 3, "LIST_USERS", date_time, user);
    } else {
        char owner[128];
        snprintf(owner, sizeof owner, "%s-owner", tag);
        c->length = fields(c->request, 4, "LIST_CONTENT", date_time, user, owner);
    }
}

/* One blocking request for the set-up phase; returns the first reply byte or -1. */
static int blocking_request(const char *request, size_t length) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (has_source && bind(fd, (struct sockaddr *)&source, sizeof source) != 0) {
        close(fd);
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&server, sizeof server) != 0) {
        close(fd);
        return -1;
    }
    (void)!write(fd, request, length);
    unsigned char byte;
    int code = read(fd, &byte, 1) == 1 ? byte : -1;
    char sink[4096];
    while (read(fd, sink, sizeof sink) > 0) {}
    close(fd);
    return code;
}

static int start(int epoll_fd, struct client *c) {
    c->sequence++;
    build_request(c);
    c->sent = 0;
    c->got_code = 0;
    c->code_ok = 0;
    c->started = now();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (has_source && bind(c->fd, (struct sockaddr *)&source, sizeof source) != 0) {
        perror("loadgen: bind --source");
        exit(1);
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&server, sizeof server) != 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    struct epoll_event event = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, c->fd, &event);
    return 0;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One thread's share of the clients, each with its own epoll loop. */
struct worker {
    pthread_t thread;
    struct client *clients;
    int count;
    double warm_up_end, end;
    double *latencies;
    size_t latency_count;
    long errors;
};

static void *run_worker(void *argument) {
    struct worker *w = argument;
    size_t capacity = 1 << 18, count = 0;
    double *latencies = malloc(capacity * sizeof *latencies);
    long errors = 0;
    double warm_up_end = w->warm_up_end, end = w->end;
    int epoll_fd = epoll_create1(0);
    for (int i = 0; i < w->count; i++) {
        if (start(epoll_fd, &w->clients[i]) != 0) errors++;
    }
    struct epoll_event events[512];
    char buffer[65536];
    int active = w->count;
    while (active > 0) {
        int ready = epoll_wait(epoll_fd, events, 512, 100);
        for (int e = 0; e < ready; e++) {
            struct client *c = events[e].data.ptr;
            int failed = 0, finished = 0;
            if (events[e].events & EPOLLOUT) {
                ssize_t n = write(c->fd, c->request + c->sent, c->length - c->sent);
                if (n < 0 && errno != EAGAIN) failed = 1;
                else if (n > 0) c->sent += (size_t)n;
                if (!failed && c->sent == c->length) {
                    struct epoll_event event = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(epoll_fd, EPOLL_CTL_MOD, c->fd, &event);
                }
            } else if (events[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                for (;;) {
                    ssize_t n = read(c->fd, buffer, sizeof buffer);
                    if (n > 0) {
                        if (!c->got_code) {
                            c->got_code = 1;
                            c->code_ok = buffer[0] == '0' || buffer[0] == 0;
                            /* A keyed reply: the status 0, then the request's own code. */
                            if (keyed && c->request[0] == 'K') c->code_ok = n >= 3 && buffer[0] == '0' && buffer[2] == '0';
                        }
                        continue;
                    }
                    if (n == 0) finished = 1;
                    else if (errno != EAGAIN) failed = 1;
                    break;
                }
            }
            if (!failed && !finished) continue;
            double t = now();
            epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
            close(c->fd);
            if (c->started >= warm_up_end && t <= end) {
                if (failed || !c->got_code || !c->code_ok) errors++;
                if (count == capacity) {
                    capacity *= 2;
                    latencies = realloc(latencies, capacity * sizeof *latencies);
                }
                latencies[count++] = (t - c->started) * 1000.0;
            }
            if (t < end) {
                if (start(epoll_fd, c) != 0) {
                    errors++;
                    active--;
                }
            } else {
                active--;
            }
        }
    }
    close(epoll_fd);
    w->latencies = latencies;
    w->latency_count = count;
    w->errors = errors;
    return NULL;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0, clients = 64, threads = 2;
    double duration = 3.0;
    const char *workload_name = "register";
    const char *sessions = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--host")) host = argv[i + 1];
        else if (!strcmp(argv[i], "--port") || !strcmp(argv[i], "-p")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--clients")) clients = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--duration")) duration = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--workload")) workload_name = argv[i + 1];
        else if (!strcmp(argv[i], "--tag")) tag = argv[i + 1];
        else if (!strcmp(argv[i], "--sessions")) sessions = argv[i + 1];
        else if (!strcmp(argv[i], "--source")) {
            source.sin_family = AF_INET;
            if (inet_pton(AF_INET, argv[i + 1], &source.sin_addr) != 1) {
                fprintf(stderr, "loadgen: --source must be an IPv4 address\n");
                return 2;
            }
            has_source = 1;
        }
        else { fprintf(stderr, "loadgen: unknown option %s\n", argv[i]); return 2; }
    }
    if (!strcmp(workload_name, "register")) workload = REGISTER;
    else if (!strcmp(workload_name, "publish")) workload = PUBLISH;
    else if (!strcmp(workload_name, "list-content")) workload = LIST_CONTENT;
    else if (!strcmp(workload_name, "mixed")) workload = MIXED;
    else if (!strcmp(workload_name, "mixed-rw")) workload = MIXED_RW;
    else { fprintf(stderr, "loadgen: unknown workload %s\n", workload_name); return 2; }
    if (threads > clients) threads = clients;
    if (port <= 0 || clients <= 0 || duration <= 0 || threads <= 0) {
        fprintf(stderr, "usage: loadgen --port P [--clients N] [--duration S] [--workload W] [--tag T]\n");
        return 2;
    }
    server.sin_family = AF_INET;
    server.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &server.sin_addr) != 1) {
        fprintf(stderr, "loadgen: --host must be an IPv4 address\n");
        return 2;
    }

    /* Set-up: an owner with 10 files, and a connected user per client. */
    char request[1200], name[160], owner[128];
    snprintf(owner, sizeof owner, "%s-owner", tag);
    blocking_request(request, fields(request, 3, "REGISTER", date_time, owner));
    blocking_request(request, fields(request, 4, "CONNECT", date_time, owner, "4000"));
    for (int f = 0; f < 10; f++) {
        snprintf(name, sizeof name, "f%d", f);
        blocking_request(request, fields(request, 5, "PUBLISH", date_time, owner, name, "a file"));
    }
    struct client *pool = calloc((size_t)clients, sizeof *pool);
    if (sessions) {
        FILE *file = fopen(sessions, "r");
        if (!file) { perror("loadgen: --sessions"); return 2; }
        for (int i = 0; i < clients; i++) {
            char hex[65];
            if (fscanf(file, "%399s %64s", pool[i].session, hex) != 2) {
                fprintf(stderr, "loadgen: %s has fewer than %d sessions\n", sessions, clients);
                return 2;
            }
            for (int b = 0; b < 32; b++) sscanf(hex + 2 * b, "%2hhx", &pool[i].key[b]);
            /* The caller used counters 1 and 2 (REGISTER, CONNECT). */
            pool[i].counter = 2;
        }
        fclose(file);
        keyed = 1;
    }
    for (int i = 0; i < clients && !keyed; i++) {
        snprintf(name, sizeof name, "%s-c%d", tag, i);
        blocking_request(request, fields(request, 3, "REGISTER", date_time, name));
        if (blocking_request(request, fields(request, 4, "CONNECT", date_time, name, "4000")) < 0) {
            fprintf(stderr, "loadgen: cannot reach %s:%d\n", host, port);
            return 1;
        }
    }

    struct worker *workers = calloc((size_t)threads, sizeof *workers);
    for (int i = 0; i < clients; i++) pool[i].index = i;
    double warm_up_end = now() + 0.3, end = warm_up_end + duration;
    for (int t = 0; t < threads; t++) {
        /* A contiguous share of the clients per thread. */
        int first = clients * t / threads, last = clients * (t + 1) / threads;
        workers[t] = (struct worker){.clients = pool + first, .count = last - first, .warm_up_end = warm_up_end,
                                     .end = end};
    }
    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    double started = now();
    for (int t = 0; t < threads; t++) pthread_create(&workers[t].thread, NULL, run_worker, &workers[t]);
    size_t count = 0;
    long errors = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(workers[t].thread, NULL);
        count += workers[t].latency_count;
        errors += workers[t].errors;
    }
    double elapsed = now() - started;
    getrusage(RUSAGE_SELF, &after);
    double cpu = (double)(after.ru_utime.tv_sec - before.ru_utime.tv_sec) +
                 (double)(after.ru_utime.tv_usec - before.ru_utime.tv_usec) / 1e6 +
                 (double)(after.ru_stime.tv_sec - before.ru_stime.tv_sec) +
                 (double)(after.ru_stime.tv_usec - before.ru_stime.tv_usec) / 1e6;
    double *latencies = malloc((count ? count : 1) * sizeof *latencies);
    size_t offset = 0;
    for (int t = 0; t < threads; t++) {
        memcpy(latencies + offset, workers[t].latencies, workers[t].latency_count * sizeof *latencies);
        offset += workers[t].latency_count;
    }
    qsort(latencies, count, sizeof *latencies, compare);
    double p50 = count ? latencies[count / 2] : 0, p99 = count ? latencies[(size_t)((double)count * 0.99)] : 0;
    printf("workload=%s clients=%d threads=%d requests=%zu rps=%.0f p50_ms=%.3f p99_ms=%.3f errors=%ld "
           "cpu_cores=%.2f\n",
           workload_name, clients, threads, count, (double)count / duration, p50, p99, errors, cpu / elapsed);
    return 0;
}
