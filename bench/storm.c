/*
 * storm.c - loopback TCP connection-storm generator for socktrace benchmarks.
 *
 * Traffic goes ONLY to loopback (127.0.0.1 from 127.0.0.2..127.0.0.N, or ::1).
 * Every loop is bounded in count and in time (hard caps below).
 *
 * Process layout (so that the two ends of every connection have different pids):
 *
 *   storm (parent: coordinator, prints the JSON line, owns no sockets)
 *     +-- server worker(s): own the listeners, epoll accept loop
 *     +-- client worker(s): non-blocking connect() storm (the loopback handshake
 *         normally completes inside connect(); epoll catches the rest)
 *
 * Listener ports base..base+P-1 are split over the workers by index:
 * port i belongs to server (i % servers) and is used by client (i % clients).
 * The servers publish per-port close counters in shared memory; a client
 * counts a connection "in flight" until both ends have closed it, so
 * --concurrency bounds the sockets that exist on both sides and the accept
 * queues never overflow (as long as concurrency <= ports * somaxconn).
 *
 * Close modes:
 *   client  client close()s right after connect; server reads EOF, close()s.
 *   server  server close()s right after accept; client reads EOF, close()s.
 *   reset   client sets SO_LINGER {1,0} and close()s right after connect (RST);
 *           server reads (ECONNRESET or EOF) and close()s.
 *
 * At the end the coordinator waits (--settle, bounded) until sock_diag shows no
 * socket on the storm's ports in any state but TIME_WAIT, so every
 * inet_sock_set_state transition of the storm has happened when it exits.
 *
 * Build: gcc -O2 -Wall -o storm storm.c     (bench/storm.py does this for you)
 * Output: one JSON line on stdout; diagnostics on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

/* ---- hard caps ---------------------------------------------------------- */
#define CAP_COUNT        5000000ULL
#define CAP_SECONDS      600.0
#define CAP_PORTS        256
#define CAP_SOURCES      250          /* 127.0.0.2 .. 127.0.0.251 */
#define CAP_WORKERS      8
#define CAP_CONCURRENCY  16000        /* RLIMIT_NOFILE is 20,000 here */
#define CAP_RATE         2000000.0
#define CAP_DRAIN        60.0
#define CAP_TIMEOUT      60.0
#define MAX_FD           65536

/* inet_sock_set_state transitions per connection on Linux 6.18 (measured with
 * a tracefs instance on sock:inet_sock_set_state, see bench/README.md). */
#define TRANSITIONS_CLIENT 10
#define TRANSITIONS_SERVER 10
#define TRANSITIONS_RESET   6

enum mode { M_CLIENT, M_SERVER, M_RESET };
static const char *mode_names[] = { "client", "server", "reset" };

struct opts {
    enum mode mode;
    int family;                 /* 4 or 6 */
    unsigned long long count;
    double seconds;
    double rate;                /* 0 = as fast as possible */
    int concurrency;
    int ports;
    int base_port;
    int sources;                /* v4 only: 127.0.0.2 .. 127.0.0.(1+sources); 0 = none */
    int clients, servers;
    double drain;
    double timeout;
    double settle;
    int verbose;
};

struct cstats {                 /* one per client worker; single writer */
    _Atomic unsigned long long started, connected, completed, failed;
    _Atomic unsigned long long e_addrnotavail, e_refused, e_timeout, e_other;
    _Atomic unsigned long long connect_inline, connect_epoll;
    _Atomic double t_first, t_last;
    _Atomic int pid;
    _Atomic int done;
    _Atomic int stopped_by;     /* 0 none, 1 count, 2 seconds, 3 signal */
};

struct sstats {                 /* one per server worker; single writer */
    _Atomic unsigned long long accepted, closed, read_errors, forced, eof_first, eof_epoll;
    _Atomic int pid;
    _Atomic int ready;          /* 1 listening, -1 failed */
    _Atomic int done;
};

struct shared {
    _Atomic int stop;                   /* SIGINT/SIGTERM seen */
    _Atomic int clients_done;           /* parent: all clients exited */
    _Atomic unsigned long long connected_by_port[CAP_PORTS];  /* written by clients */
    _Atomic unsigned long long closed_by_port[CAP_PORTS];     /* written by servers */
    struct cstats c[CAP_WORKERS];
    struct sstats s[CAP_WORKERS];
    char err[512];
};

static struct shared *sh;
static struct opts o;

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void on_signal(int sig)
{
    (void)sig;
    if (sh) atomic_store(&sh->stop, 1);
}

static void seterr(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sh->err, sizeof sh->err, fmt, ap);
    va_end(ap);
}

static void child_setup(void)
{
    /* die with the coordinator, never outlive the storm */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1) _exit(3);
    double hard = o.seconds + o.drain + o.timeout + 30.0;
    alarm((unsigned)hard + 1);   /* SIGALRM default action terminates */
}

static void make_addr(struct sockaddr_storage *ss, socklen_t *len, int port, int src_index)
{
    memset(ss, 0, sizeof *ss);
    if (o.family == 4) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        /* src_index < 0: 127.0.0.1 (server side); else 127.0.0.(2+src_index) */
        a->sin_addr.s_addr = htonl(0x7f000001u + (src_index < 0 ? 0 : 1 + src_index));
        *len = sizeof *a;
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        a->sin6_addr = in6addr_loopback;
        *len = sizeof *a;
    }
}

/* ======================================================================= */
/* server worker                                                           */
/* ======================================================================= */

#define LISTENER_TAG 0x80000000u
#define PENDING_MAX  8192

/* per-process state of a server worker (each worker is its own process) */
static int16_t s_port[MAX_FD];           /* port index of an open accepted fd, -1 = none */
static int s_open;
static unsigned long long s_accepted, s_closed, s_rerr, s_forced, s_eof_first, s_eof_epoll;
static unsigned long long s_closed_port[CAP_PORTS];
static int s_pending[PENDING_MAX], s_npending;

static void srv_close(int fd)
{
    int p = s_port[fd];
    s_port[fd] = -1;
    close(fd);
    s_open--;
    s_closed++;
    s_closed_port[p]++;
    atomic_store_explicit(&sh->closed_by_port[p], s_closed_port[p], memory_order_release);
}

/* read after accept (client/reset modes): EOF or RST -> close; nothing yet -> epoll */
static void srv_try_read(int ep, int fd, int first)
{
    char buf[256];
    ssize_t r = recv(fd, buf, sizeof buf, 0);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (first) {
            /* EPOLL_CTL_ADD reports an already pending EOF at once */
            struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.u32 = (uint32_t)fd };
            if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) { s_rerr++; srv_close(fd); }
        }
        return;
    }
    if (r > 0) return;                     /* unexpected data: keep waiting for EOF */
    if (r < 0 && errno != ECONNRESET) s_rerr++;
    if (first) s_eof_first++; else s_eof_epoll++;
    srv_close(fd);
}

static int server_main(int idx)
{
    struct sstats *st = &sh->s[idx];
    int fam = o.family == 4 ? AF_INET : AF_INET6;
    int lfd[CAP_PORTS];
    int nl = 0;

    atomic_store(&st->pid, getpid());
    for (int i = 0; i < MAX_FD; i++) s_port[i] = -1;

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) { seterr("server epoll_create1: %s", strerror(errno)); atomic_store(&st->ready, -1); return 1; }

    for (int p = idx; p < o.ports; p += o.servers) {
        int fd = socket(fam, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        struct sockaddr_storage ss;
        socklen_t len;
        if (fd < 0) { seterr("server socket: %s", strerror(errno)); goto fail; }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (fam == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        make_addr(&ss, &len, o.base_port + p, -1);
        if (bind(fd, (struct sockaddr *)&ss, len) < 0) {
            seterr("server bind port %d: %s", o.base_port + p, strerror(errno));
            close(fd);
            goto fail;
        }
        if (listen(fd, 65535) < 0) {  /* capped by net.core.somaxconn */
            seterr("server listen port %d: %s", o.base_port + p, strerror(errno));
            close(fd);
            goto fail;
        }
        struct epoll_event ev = { .events = EPOLLIN, .data.u32 = LISTENER_TAG | (uint32_t)p };
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        lfd[p] = fd;
        nl++;
    }
    atomic_store(&st->ready, 1);

    double hard_deadline = now_mono() + o.seconds + o.drain + o.timeout + 20.0;
    double drain_deadline = 0;
    struct epoll_event evs[256];
    int pend[PENDING_MAX], npend = 0;

    for (;;) {
        double now = now_mono();
        if (now > hard_deadline) break;
        if (atomic_load(&sh->clients_done)) {
            if (drain_deadline == 0) drain_deadline = now + o.drain;
            int all = s_open == 0;
            for (int p = idx; all && p < o.ports; p += o.servers)
                if (s_closed_port[p] < atomic_load(&sh->connected_by_port[p])) all = 0;
            if (all) break;
            if (now > drain_deadline) break;
        }
        int n = epoll_wait(ep, evs, 256, (s_npending > 0) ? 0 : 10);
        if (n < 0) {
            if (errno == EINTR) continue;
            seterr("server epoll_wait: %s", strerror(errno));
            break;
        }
        /* reads deferred from the previous round: the client has had time to close */
        npend = s_npending;
        memcpy(pend, s_pending, sizeof(int) * (size_t)npend);
        s_npending = 0;
        for (int i = 0; i < npend; i++) srv_try_read(ep, pend[i], 1);

        for (int i = 0; i < n; i++) {
            uint32_t tag = evs[i].data.u32;
            if (tag & LISTENER_TAG) {
                int p = tag & ~LISTENER_TAG;
                for (int k = 0; k < 256 && s_npending < PENDING_MAX; k++) {   /* bounded batch */
                    int c = accept4(lfd[p], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0) {
                        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) s_rerr++;
                        break;
                    }
                    s_accepted++;
                    if (c >= MAX_FD) {        /* cannot happen: RLIMIT_NOFILE < MAX_FD */
                        close(c); s_rerr++; s_closed++; s_closed_port[p]++;
                        atomic_store_explicit(&sh->closed_by_port[p], s_closed_port[p], memory_order_release);
                        continue;
                    }
                    s_open++;
                    s_port[c] = (int16_t)p;
                    if (o.mode == M_SERVER) srv_close(c);
                    else s_pending[s_npending++] = c;
                }
            } else {
                int c = (int)tag;
                if (s_port[c] >= 0) srv_try_read(ep, c, 0);
            }
        }
        atomic_store_explicit(&st->accepted, s_accepted, memory_order_relaxed);
        atomic_store_explicit(&st->closed, s_closed, memory_order_relaxed);
    }
    /* force-close what is left (counted) */
    for (int c = 0; c < MAX_FD; c++)
        if (s_port[c] >= 0) { srv_close(c); s_forced++; }
    for (int p = idx; p < o.ports; p += o.servers) close(lfd[p]);
    close(ep);
    atomic_store(&st->accepted, s_accepted);
    atomic_store(&st->closed, s_closed);
    atomic_store(&st->read_errors, s_rerr);
    atomic_store(&st->forced, s_forced);
    atomic_store(&st->eof_first, s_eof_first);
    atomic_store(&st->eof_epoll, s_eof_epoll);
    atomic_store(&st->done, 1);
    return 0;
fail:
    for (int p = idx; p < o.ports && nl > 0; p += o.servers, nl--) close(lfd[p]);
    atomic_store(&st->ready, -1);
    return 1;
}

/* ======================================================================= */
/* client worker                                                           */
/* ======================================================================= */

enum cstate { C_FREE = 0, C_CONNECTING, C_WAIT_EOF };

struct cconn {
    uint8_t state;
    uint16_t port;
    double t0;
};

/* per-process state of a client worker */
static struct cconn c_conn[MAX_FD];
static int c_ep, c_open;
static unsigned long long c_started, c_connected, c_completed, c_failed, c_unconnected_fail;
static unsigned long long c_e_ana, c_e_ref, c_e_to, c_e_oth, c_inline, c_epoll;
static unsigned long long c_port_cnt[CAP_PORTS];
static double c_now, c_last;

static void cl_close(int fd, int ok)
{
    close(fd);
    c_conn[fd].state = C_FREE;
    c_open--;
    if (ok) { c_completed++; c_last = c_now; }
    else c_failed++;
}

static void cl_fail(int fd, int err)
{
    if (err == EADDRNOTAVAIL) c_e_ana++;
    else if (err == ECONNREFUSED) c_e_ref++;
    else if (err == ETIMEDOUT) c_e_to++;
    else c_e_oth++;
    if (c_conn[fd].state == C_CONNECTING) c_unconnected_fail++;
    cl_close(fd, 0);
}

static void cl_read_eof(int fd)
{
    char buf[256];
    ssize_t r = recv(fd, buf, sizeof buf, 0);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (r > 0) return;          /* unexpected data; wait for EOF */
    if (r < 0) c_e_oth++;
    cl_close(fd, r == 0);
}

/* the connection is established; registered: fd already in epoll (ET) */
static void cl_connected(int fd, int registered, uint32_t events)
{
    int p = c_conn[fd].port;
    c_connected++;
    c_port_cnt[p]++;
    atomic_store_explicit(&sh->connected_by_port[p], c_port_cnt[p], memory_order_release);
    if (o.mode != M_SERVER) { cl_close(fd, 1); return; }
    c_conn[fd].state = C_WAIT_EOF;
    if (!registered) {
        /* EPOLL_CTL_ADD reports an EOF that is already there */
        struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.u32 = (uint32_t)fd };
        if (epoll_ctl(c_ep, EPOLL_CTL_ADD, fd, &ev) < 0) { c_e_oth++; cl_close(fd, 0); }
    } else if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) {
        cl_read_eof(fd);
    }
}

static int client_main(int idx)
{
    struct cstats *st = &sh->c[idx];
    int fam = o.family == 4 ? AF_INET : AF_INET6;

    atomic_store(&st->pid, getpid());

    /* this worker's share */
    int myports[CAP_PORTS], nmy = 0;
    for (int p = idx; p < o.ports; p += o.clients) myports[nmy++] = p;
    unsigned long long my_count = o.count / o.clients + ((unsigned long long)idx < o.count % o.clients ? 1 : 0);
    int my_conc = o.concurrency / o.clients + (idx < o.concurrency % o.clients ? 1 : 0);
    if (my_conc < 1) my_conc = 1;
    double my_rate = o.rate / o.clients;

    /* pre-built addresses */
    struct sockaddr_storage dst[CAP_PORTS];
    socklen_t dstlen = 0;
    for (int k = 0; k < nmy; k++) make_addr(&dst[k], &dstlen, o.base_port + myports[k], -1);
    int nsrc = (o.family == 4) ? o.sources : 0;
    struct sockaddr_storage src[CAP_SOURCES];
    socklen_t srclen = 0;
    for (int s = 0; s < nsrc; s++) make_addr(&src[s], &srclen, 0, s);

    c_ep = epoll_create1(EPOLL_CLOEXEC);
    if (c_ep < 0) { seterr("client epoll_create1: %s", strerror(errno)); return 1; }

    int stopped_by = 0;
    struct epoll_event evs[256];
    struct linger lg = { 1, 0 };
    int one = 1;
    unsigned long rr = 0;

    double t0 = now_mono();
    double t_end = t0 + o.seconds;
    double drain_deadline = 0;
    double next_scan = t0 + 0.1;
    c_now = c_last = t0;
    atomic_store(&st->t_first, t0);

    for (;;) {
        double now = c_now = now_mono();

        if (!stopped_by) {
            if (c_started >= my_count) stopped_by = 1;
            else if (now >= t_end) stopped_by = 2;
            else if (atomic_load(&sh->stop)) stopped_by = 3;
            if (stopped_by) drain_deadline = now + o.drain;
        }
        unsigned long long srv_closed = 0;
        for (int k = 0; k < nmy; k++)
            srv_closed += atomic_load_explicit(&sh->closed_by_port[myports[k]], memory_order_acquire);
        if (stopped_by && c_open == 0) {
            /* wait (bounded) for the servers to close our connections too, so
             * that "seconds" covers both ends */
            if (srv_closed >= c_connected) { if (c_completed) c_last = now; break; }
            if (now > drain_deadline) break;
            usleep(200);
            continue;
        }
        if (stopped_by && now > drain_deadline) {
            for (int c = 0; c < MAX_FD; c++)
                if (c_conn[c].state != C_FREE) cl_fail(c, ETIMEDOUT);
            break;
        }

        /* in flight: started and not yet closed by BOTH ends */
        unsigned long long inflight = c_started - c_unconnected_fail - srv_closed;
        if ((long long)inflight < c_open) inflight = (unsigned long long)c_open;

        int want = 0;
        if (!stopped_by) {
            long long allowed = (long long)my_conc - (long long)inflight;
            if (allowed < 0) allowed = 0;
            long long due = allowed;
            if (my_rate > 0) {
                due = (long long)((now - t0) * my_rate) + 1 - (long long)c_started;
                if (due < 0) due = 0;
            }
            long long left = (long long)(my_count - c_started);
            want = (int)(allowed < due ? allowed : due);
            if (want > left) want = (int)left;
            if (want > 64) want = 64;
        }

        for (int k = 0; k < want; k++) {
            int pidx = (int)(rr % (unsigned)nmy);
            int fd = socket(fam, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            c_started++;
            if (fd < 0 || fd >= MAX_FD) {
                if (fd >= 0) close(fd);
                c_e_oth++; c_failed++; c_unconnected_fail++;
                continue;
            }
            c_conn[fd].state = C_CONNECTING;
            c_conn[fd].port = (uint16_t)myports[pidx];
            c_conn[fd].t0 = now;
            c_open++;
            if (o.mode == M_RESET) setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            if (nsrc > 0) {
                setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
                if (bind(fd, (struct sockaddr *)&src[(rr / nmy) % nsrc], srclen) < 0) {
                    rr++;
                    cl_fail(fd, errno);
                    continue;
                }
            }
            rr++;
            if (connect(fd, (struct sockaddr *)&dst[pidx], dstlen) == 0) {
                c_inline++;
                cl_connected(fd, 0, 0);
                continue;
            }
            if (errno != EINPROGRESS) { cl_fail(fd, errno); continue; }
            /* On loopback the handshake usually completes inside connect()
             * (softirq on this CPU): a second connect() returns 0 once the
             * socket is ESTABLISHED and EALREADY while it is still SYN_SENT.
             * One syscall instead of epoll_ctl + epoll_wait. */
            if (connect(fd, (struct sockaddr *)&dst[pidx], dstlen) == 0 || errno == EISCONN) {
                c_inline++;
                cl_connected(fd, 0, 0);
                continue;
            }
            if (errno != EALREADY && errno != EINPROGRESS) { cl_fail(fd, errno); continue; }
            c_epoll++;
            struct epoll_event ev = { .events = EPOLLOUT | EPOLLIN | EPOLLRDHUP | EPOLLET, .data.u32 = (uint32_t)fd };
            if (epoll_ctl(c_ep, EPOLL_CTL_ADD, fd, &ev) < 0) cl_fail(fd, errno);
        }

        int timeout;
        if (want == 64) timeout = 0;                  /* more to start right away */
        else if (stopped_by) timeout = 1;
        else if (my_rate > 0) {
            double dt = t0 + ((double)c_started) / my_rate - now;   /* next one due */
            timeout = (dt <= 0 || want > 0) ? 0 : 1;
        } else timeout = want > 0 ? 0 : 1;            /* blocked on concurrency */
        if (c_open == 0 && timeout > 0) {             /* nothing to wait for in epoll */
            usleep(timeout * 200);
            timeout = 0;
        }

        int n = epoll_wait(c_ep, evs, 256, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            seterr("client epoll_wait: %s", strerror(errno));
            break;
        }
        c_now = now_mono();
        for (int i = 0; i < n; i++) {
            int fd = (int)evs[i].data.u32;
            uint32_t e = evs[i].events;
            if (c_conn[fd].state == C_CONNECTING) {
                if (e & EPOLLERR) {
                    int err = 0; socklen_t el = sizeof err;
                    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
                    cl_fail(fd, err);
                    continue;
                }
                if (e & EPOLLOUT) cl_connected(fd, 1, e);
            } else if (c_conn[fd].state == C_WAIT_EOF) {
                cl_read_eof(fd);
            }
        }

        if (c_now >= next_scan) {
            next_scan = c_now + 0.1;
            for (int c = 0; c < MAX_FD && c_open > 0; c++)
                if (c_conn[c].state != C_FREE && c_now - c_conn[c].t0 > o.timeout)
                    cl_fail(c, ETIMEDOUT);
            atomic_store_explicit(&st->started, c_started, memory_order_relaxed);
            atomic_store_explicit(&st->completed, c_completed, memory_order_relaxed);
        }
    }
    close(c_ep);
    atomic_store(&st->started, c_started);
    atomic_store(&st->connected, c_connected);
    atomic_store(&st->completed, c_completed);
    atomic_store(&st->failed, c_failed);
    atomic_store(&st->e_addrnotavail, c_e_ana);
    atomic_store(&st->e_refused, c_e_ref);
    atomic_store(&st->e_timeout, c_e_to);
    atomic_store(&st->e_other, c_e_oth);
    atomic_store(&st->connect_inline, c_inline);
    atomic_store(&st->connect_epoll, c_epoll);
    atomic_store(&st->t_last, c_last);
    atomic_store(&st->stopped_by, stopped_by);
    atomic_store(&st->done, 1);
    return 0;
}

/* ======================================================================= */
/* coordinator                                                             */
/* ======================================================================= */

/* read selected counters of /proc/net/snmp (Tcp:) and /proc/net/netstat (TcpExt:) */
static const char *net_keys[] = {
    "Tcp:ActiveOpens", "Tcp:PassiveOpens", "Tcp:AttemptFails", "Tcp:EstabResets",
    "Tcp:RetransSegs", "Tcp:OutRsts",
    "TcpExt:ListenOverflows", "TcpExt:ListenDrops", "TcpExt:TCPTimeWaitOverflow",
    "TcpExt:TW", "TcpExt:TCPAbortOnClose",
};
#define NNET (sizeof net_keys / sizeof net_keys[0])

static void read_net(const char *path, long long *vals)
{
    FILE *f = fopen(path, "r");
    if (!f) return;
    static char hdr[8192], val[8192];
    while (fgets(hdr, sizeof hdr, f) && fgets(val, sizeof val, f)) {
        char *sp1, *sp2;
        char *h = strtok_r(hdr, " \n", &sp1);
        char *v = strtok_r(val, " \n", &sp2);
        if (!h || !v) continue;
        char prefix[64];
        snprintf(prefix, sizeof prefix, "%s", h);   /* e.g. "Tcp:" */
        for (;;) {
            h = strtok_r(NULL, " \n", &sp1);
            v = strtok_r(NULL, " \n", &sp2);
            if (!h || !v) break;
            char key[128];
            snprintf(key, sizeof key, "%s%s", prefix, h);
            for (size_t i = 0; i < NNET; i++)
                if (strcmp(key, net_keys[i]) == 0) vals[i] = atoll(v);
        }
    }
    fclose(f);
}

static void read_all_net(long long *vals)
{
    for (size_t i = 0; i < NNET; i++) vals[i] = 0;
    read_net("/proc/net/snmp", vals);
    read_net("/proc/net/netstat", vals);
}

/* busy and total jiffies of all CPUs from /proc/stat ("cpu" line) */
static void read_cpu(unsigned long long *busy, unsigned long long *total)
{
    unsigned long long v[10] = {0};
    *busy = *total = 0;
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return;
    if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu",
               &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]) >= 8) {
        for (int i = 0; i < 8; i++) *total += v[i];
        *busy = *total - v[3] - v[4];      /* minus idle, iowait */
    }
    fclose(f);
}

/*
 * Full (or request) sockets of this storm (a listener port at either end)
 * that the kernel has not finished yet: any state but CLOSE, TIME_WAIT and
 * LISTEN; timewait socks in any substate do not count. Uses
 * NETLINK_SOCK_DIAG (the kernel filters by state, cheap even with 100k
 * TIME_WAIT sockets). Returns -1 if the dump fails.
 */
static const char *tcp_state_names[] = {
    "?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
    "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV",
};
static long unsettled_by_state[13];

static long count_unsettled(void)
{
    memset(unsettled_by_state, 0, sizeof unsettled_by_state);
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0) return -1;
    struct {
        struct nlmsghdr nlh;
        struct inet_diag_req_v2 r;
    } req;
    memset(&req, 0, sizeof req);
    req.nlh.nlmsg_len = sizeof req;
    req.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    req.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.r.sdiag_family = o.family == 4 ? AF_INET : AF_INET6;
    req.r.sdiag_protocol = IPPROTO_TCP;
    req.r.idiag_states = 0xfff & ~((1u << 6) | (1u << 7) | (1u << 10));   /* not TW, CLOSE, LISTEN */
    struct sockaddr_nl nl = { .nl_family = AF_NETLINK };
    if (sendto(fd, &req, sizeof req, 0, (struct sockaddr *)&nl, sizeof nl) < 0) { close(fd); return -1; }
    static char buf[65536];
    long n = 0;
    for (int rounds = 0; rounds < 100000; rounds++) {       /* bounded */
        ssize_t len = recv(fd, buf, sizeof buf, 0);
        if (len <= 0) { close(fd); return -1; }
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)len); h = NLMSG_NEXT(h, len)) {
            if (h->nlmsg_type == NLMSG_DONE) { close(fd); return n; }
            if (h->nlmsg_type == NLMSG_ERROR) { close(fd); return -1; }
            struct inet_diag_msg *m = NLMSG_DATA(h);
            /* timewait socks (idiag_timer 3) are reported with their substate,
             * FIN_WAIT2 for an orphan that went to timewait from FIN_WAIT2:
             * their full socket has already gone to CLOSE, skip them */
            if (m->idiag_timer == 3) continue;
            int sp = ntohs(m->id.idiag_sport), dp = ntohs(m->id.idiag_dport);
            if ((sp >= o.base_port && sp < o.base_port + o.ports) ||
                (dp >= o.base_port && dp < o.base_port + o.ports)) {
                n++;
                if (m->idiag_state < 13) unsettled_by_state[m->idiag_state]++;
            }
        }
    }
    close(fd);
    return -1;
}

static void usage(FILE *f)
{
    fprintf(f,
"usage: storm [options]   (loopback TCP connection storm; prints one JSON line)\n"
"  --close MODE        client | server | reset   (default client)\n"
"                      client: client close()s after connect, server reads EOF, closes\n"
"                      server: server close()s after accept, client reads EOF, closes\n"
"                      reset:  client SO_LINGER{1,0} + close() -> RST\n"
"  --family 4|6        127.0.0.x -> 127.0.0.1, or ::1 -> ::1 (default 4)\n"
"  --count N           connections to start (default 100000, cap %llu)\n"
"  --seconds S         time limit for starting connections (default 60, cap %.0f)\n"
"  --rate R            connections/s, fixed; 0 or omitted = as fast as possible\n"
"  --concurrency K     connections in flight, counted until BOTH ends closed (default 2048, cap %d)\n"
"  --ports P           listener ports base..base+P-1 (default 16, cap %d)\n"
"  --base-port B       first listener port (default 21000)\n"
"  --sources N         IPv4 only: bind clients to 127.0.0.2..127.0.0.(N+1) (default 32, cap %d, 0 = kernel choice)\n"
"  --clients N         client worker processes (default 2, cap %d)\n"
"  --servers N         server worker processes (default 1, cap %d)\n"
"  --drain S           seconds to wait for in-flight connections after the stop (default 5)\n"
"  --timeout S         per-connection timeout, counted as failed (default 10)\n"
"  --settle S          at the end, wait up to S s until the kernel has finished every connection\n"
"                      of the storm (no socket left but TIME_WAIT), via sock_diag (default 3)\n"
"  --verbose           progress on stderr\n"
"  --help\n",
        CAP_COUNT, CAP_SECONDS, CAP_CONCURRENCY, CAP_PORTS, CAP_SOURCES, CAP_WORKERS, CAP_WORKERS);
}

static double parse_num(const char *name, const char *s, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "storm: --%s %s: expected a number in [%g, %g]\n", name, s, lo, hi);
        exit(2);
    }
    return v;
}

static pid_t spawn(int (*fn)(int), int idx)
{
    pid_t pid = fork();
    if (pid < 0) { perror("storm: fork"); return -1; }
    if (pid == 0) {
        child_setup();
        _exit(fn(idx));
    }
    return pid;
}

/* wait for all pids (those > 0) until deadline; SIGKILL the rest after it */
static int wait_all(pid_t *pids, int n, double deadline)
{
    int left = 0, killed = 0;
    for (int i = 0; i < n; i++) if (pids[i] > 0) left++;
    while (left > 0) {
        int status;
        pid_t r = waitpid(-1, &status, WNOHANG);
        if (r > 0) {
            for (int i = 0; i < n; i++) if (pids[i] == r) { pids[i] = -pids[i]; left--; }
            continue;
        }
        if (now_mono() > deadline) {
            for (int i = 0; i < n; i++)
                if (pids[i] > 0) { kill(pids[i], SIGKILL); waitpid(pids[i], NULL, 0); pids[i] = -pids[i]; left--; killed++; }
            break;
        }
        usleep(2000);
    }
    for (int i = 0; i < n; i++) if (pids[i] < 0) pids[i] = -pids[i];
    return killed;
}

int main(int argc, char **argv)
{
    o.mode = M_CLIENT; o.family = 4; o.count = 100000; o.seconds = 60; o.rate = 0;
    o.concurrency = 2048; o.ports = 16; o.base_port = 21000; o.sources = 32;
    o.clients = 2; o.servers = 1; o.drain = 5; o.timeout = 10; o.settle = 3;

    static struct option lo[] = {
        {"close", 1, 0, 'm'}, {"family", 1, 0, 'f'}, {"count", 1, 0, 'n'},
        {"seconds", 1, 0, 's'}, {"rate", 1, 0, 'r'}, {"concurrency", 1, 0, 'k'},
        {"ports", 1, 0, 'p'}, {"base-port", 1, 0, 'b'}, {"sources", 1, 0, 'S'},
        {"clients", 1, 0, 'C'}, {"servers", 1, 0, 'V'}, {"drain", 1, 0, 'd'},
        {"timeout", 1, 0, 't'}, {"settle", 1, 0, 'e'}, {"verbose", 0, 0, 'v'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}
    };
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (!strcmp(optarg, "client")) o.mode = M_CLIENT;
            else if (!strcmp(optarg, "server")) o.mode = M_SERVER;
            else if (!strcmp(optarg, "reset")) o.mode = M_RESET;
            else { fprintf(stderr, "storm: --close must be client, server or reset\n"); return 2; }
            break;
        case 'f': o.family = (int)parse_num("family", optarg, 4, 6);
            if (o.family != 4 && o.family != 6) { fprintf(stderr, "storm: --family must be 4 or 6\n"); return 2; }
            break;
        case 'n': o.count = (unsigned long long)parse_num("count", optarg, 1, (double)CAP_COUNT); break;
        case 's': o.seconds = parse_num("seconds", optarg, 0.001, CAP_SECONDS); break;
        case 'r': o.rate = parse_num("rate", optarg, 0, CAP_RATE); break;
        case 'k': o.concurrency = (int)parse_num("concurrency", optarg, 1, CAP_CONCURRENCY); break;
        case 'p': o.ports = (int)parse_num("ports", optarg, 1, CAP_PORTS); break;
        case 'b': o.base_port = (int)parse_num("base-port", optarg, 1024, 65535); break;
        case 'S': o.sources = (int)parse_num("sources", optarg, 0, CAP_SOURCES); break;
        case 'C': o.clients = (int)parse_num("clients", optarg, 1, CAP_WORKERS); break;
        case 'V': o.servers = (int)parse_num("servers", optarg, 1, CAP_WORKERS); break;
        case 'd': o.drain = parse_num("drain", optarg, 0, CAP_DRAIN); break;
        case 't': o.timeout = parse_num("timeout", optarg, 0.1, CAP_TIMEOUT); break;
        case 'e': o.settle = parse_num("settle", optarg, 0, CAP_DRAIN); break;
        case 'v': o.verbose = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) { fprintf(stderr, "storm: unexpected argument %s\n", argv[optind]); return 2; }
    if (o.base_port + o.ports - 1 > 65535) { fprintf(stderr, "storm: base-port + ports exceeds 65535\n"); return 2; }
    if (o.ports < o.clients || o.ports < o.servers) { fprintf(stderr, "storm: --ports must be >= --clients and >= --servers\n"); return 2; }

    /* descriptors: each client worker holds up to its concurrency share, each server as many */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        (rlim_t)(o.concurrency / o.clients + o.ports + 64) > rl.rlim_cur) {
        fprintf(stderr, "storm: --concurrency %d needs more descriptors than RLIMIT_NOFILE %llu per worker;"
                " use more --clients/--servers\n", o.concurrency, (unsigned long long)rl.rlim_cur);
        return 2;
    }

    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) { perror("storm: mmap"); return 1; }
    memset(sh, 0, sizeof *sh);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    long long net0[NNET], net1[NNET];
    read_all_net(net0);

    pid_t spids[CAP_WORKERS] = {0}, cpids[CAP_WORKERS] = {0};
    int rc = 0;
    for (int i = 0; i < o.servers; i++) spids[i] = spawn(server_main, i);

    /* wait (bounded) for the listeners */
    double t_ready = now_mono() + 10.0;
    int ready = 0;
    while (!ready) {
        int ok = 0, bad = 0;
        for (int i = 0; i < o.servers; i++) {
            int r = atomic_load(&sh->s[i].ready);
            if (r == 1) ok++;
            if (r < 0 || spids[i] <= 0) bad++;
        }
        if (bad || now_mono() > t_ready) break;
        if (ok == o.servers) ready = 1;
        else usleep(1000);
    }
    if (!ready) {
        atomic_store(&sh->clients_done, 1);
        atomic_store(&sh->stop, 1);
        o.drain = 0;
        wait_all(spids, o.servers, now_mono() + 3.0);
        fprintf(stderr, "storm: servers not ready: %s\n", sh->err[0] ? sh->err : "timeout");
        printf("{\"error\": \"servers not ready\"}\n");
        return 1;
    }

    unsigned long long cpu_b0, cpu_t0, cpu_b1, cpu_t1;
    read_cpu(&cpu_b0, &cpu_t0);
    double t_clients = now_mono();
    for (int i = 0; i < o.clients; i++) cpids[i] = spawn(client_main, i);

    /* progress (verbose) while the clients run */
    double cdeadline = t_clients + o.seconds + o.drain + o.timeout + 10.0;
    double next_report = t_clients + 1.0;
    int killed = 0;
    for (;;) {
        int alive = 0;
        for (int i = 0; i < o.clients; i++) {
            if (cpids[i] > 0 && waitpid(cpids[i], NULL, WNOHANG) == cpids[i]) cpids[i] = -cpids[i];
            if (cpids[i] > 0) alive++;
        }
        if (!alive) break;
        double now = now_mono();
        if (now > cdeadline) { killed += wait_all(cpids, o.clients, now); break; }
        if (o.verbose && now >= next_report) {
            unsigned long long st = 0, cp = 0;
            for (int i = 0; i < o.clients; i++) { st += atomic_load(&sh->c[i].started); cp += atomic_load(&sh->c[i].completed); }
            fprintf(stderr, "storm: %.1fs started %llu completed %llu\n", now - t_clients, st, cp);
            next_report += 1.0;
        }
        usleep(5000);
    }
    for (int i = 0; i < o.clients; i++) if (cpids[i] < 0) cpids[i] = -cpids[i];
    atomic_store(&sh->clients_done, 1);
    killed += wait_all(spids, o.servers, now_mono() + o.drain + 5.0);
    /* settle: wait (bounded) until the kernel has finished every connection
     * of this storm, so that all its state transitions have happened */
    double t_settle = now_mono();
    long unsettled = count_unsettled();
    while (unsettled != 0 && now_mono() - t_settle < o.settle && !atomic_load(&sh->stop)) {
        usleep(20000);
        unsettled = count_unsettled();
    }
    double settle_secs = now_mono() - t_settle;
    read_all_net(net1);
    read_cpu(&cpu_b1, &cpu_t1);
    double t_finish = now_mono();
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    getrusage(RUSAGE_CHILDREN, &ru);
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0) hz = 100;

    unsigned long long started = 0, connected = 0, completed = 0, failed = 0;
    unsigned long long ana = 0, ref = 0, to = 0, oth = 0, acc = 0, sclosed = 0, rerr = 0, forced = 0;
    unsigned long long p_cin = 0, p_cep = 0, p_sfirst = 0, p_sepoll = 0;
    double tf = 1e300, tl = 0;
    int stopped_by = 0;
    for (int i = 0; i < o.clients; i++) {
        struct cstats *s = &sh->c[i];
        started += s->started; connected += s->connected; completed += s->completed; failed += s->failed;
        p_cin += s->connect_inline; p_cep += s->connect_epoll;
        ana += s->e_addrnotavail; ref += s->e_refused; to += s->e_timeout; oth += s->e_other;
        if (s->t_first < tf) tf = s->t_first;
        if (s->t_last > tl) tl = s->t_last;
        if (s->stopped_by > stopped_by) stopped_by = s->stopped_by;
        if (!s->done) rc = 1;
    }
    for (int i = 0; i < o.servers; i++) {
        struct sstats *s = &sh->s[i];
        p_sfirst += s->eof_first; p_sepoll += s->eof_epoll;
        acc += s->accepted; sclosed += s->closed; rerr += s->read_errors; forced += s->forced;
        if (!s->done) rc = 1;
    }
    double secs = tl > tf ? tl - tf : 0.0;
    int tpc = o.mode == M_RESET ? TRANSITIONS_RESET : (o.mode == M_SERVER ? TRANSITIONS_SERVER : TRANSITIONS_CLIENT);
    static const char *stop_names[] = { "none", "count", "seconds", "signal" };
    char ustates[512] = "";
    for (int i = 0, w = 0; i < 13; i++)
        if (unsettled_by_state[i] > 0 && w < (int)sizeof ustates - 40)
            w += snprintf(ustates + w, sizeof ustates - w, "%s\"%s\": %ld", w ? ", " : "",
                          tcp_state_names[i], unsettled_by_state[i]);

    printf("{\"connections\": %llu, \"completed\": %llu, \"failed\": %llu, \"seconds\": %.3f, \"rate\": %.1f, "
           "\"mode\": \"%s\", \"family\": %d, \"expected_transitions\": %llu, "
           "\"transitions_per_connection\": %d, \"listener_transitions\": %d, "
           "\"client_pid\": %d, \"server_pid\": %d, \"client_pids\": [",
           started, completed, failed, secs, secs > 0 ? completed / secs : 0.0,
           mode_names[o.mode], o.family, (unsigned long long)tpc * completed, tpc, 2 * o.ports,
           (int)cpids[0], (int)spids[0]);
    for (int i = 0; i < o.clients; i++) printf("%s%d", i ? ", " : "", (int)cpids[i]);
    printf("], \"server_pids\": [");
    for (int i = 0; i < o.servers; i++) printf("%s%d", i ? ", " : "", (int)spids[i]);
    printf("], \"connected\": %llu, \"accepted\": %llu, \"server_closed\": %llu, \"server_forced\": %llu, "
           "\"server_read_errors\": %llu, "
           "\"errors\": {\"addrnotavail\": %llu, \"refused\": %llu, \"timeout\": %llu, \"other\": %llu}, "
           "\"paths\": {\"connect_inline\": %llu, \"connect_epoll\": %llu, \"server_eof_first_read\": %llu, \"server_eof_epoll\": %llu}, "
           "\"stopped_by\": \"%s\", \"killed\": %d, \"unsettled\": %ld, \"unsettled_states\": {%s}, \"settle_seconds\": %.3f, "
           "\"cpu\": {\"wall\": %.3f, \"workers_user\": %.3f, \"workers_sys\": %.3f, \"machine_busy\": %.3f, \"ncpu\": %ld}, "
           "\"config\": {\"count\": %llu, \"seconds\": %g, \"rate\": %g, \"concurrency\": %d, \"ports\": %d, "
           "\"base_port\": %d, \"sources\": %d, \"clients\": %d, \"servers\": %d}, \"netstat_delta\": {",
           connected, acc, sclosed, forced, rerr, ana, ref, to, oth, p_cin, p_cep, p_sfirst, p_sepoll, stop_names[stopped_by], killed, unsettled, ustates, settle_secs,
           t_finish - t_clients, ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6,
           ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6, (double)(cpu_b1 - cpu_b0) / hz,
           sysconf(_SC_NPROCESSORS_ONLN),
           o.count, o.seconds, o.rate, o.concurrency, o.ports, o.base_port,
           o.family == 4 ? o.sources : 0, o.clients, o.servers);
    for (size_t i = 0; i < NNET; i++) {
        const char *k = strchr(net_keys[i], ':') + 1;
        printf("%s\"%s\": %lld", i ? ", " : "", k, net1[i] - net0[i]);
    }
    printf("}}\n");
    fflush(stdout);
    if (sh->err[0]) fprintf(stderr, "storm: %s\n", sh->err);
    if (killed) rc = 1;
    return rc;
}
