/* socktrace.bpf.c - every TCP state transition, and each connection's whole
 * story, kept in the kernel.
 *
 * The kernel owns a connection's story (as bcc's tcplife does): the `socks`
 * map holds, per live socket, its id, owner, role, path and time per state;
 * it moves to `tws` when a timewait socket takes over (TIME_WAIT, or an
 * orphaned FIN_WAIT2); when the connection ends the program sends the
 * finished `closed` record itself.  User space only formats records.
 *
 * Compiled by bcc at start-up (tracer/bpf_backend.py passes the -D settings
 * below).  Tracepoints only: kprobes and fentry are not available on the
 * machines this must run on, and header struct layouts may be of another
 * kernel, so struct fields are read only at offsets found in BTF at run time.
 *
 * Settings (-D):
 *   ST_MAX_SOCKS        entries of the per-socket, timewait and seed maps
 *   ST_RINGBUF_PAGES    ring buffer size in pages (power of two)
 *   ST_USE_PERFBUF      kernel < 5.8: perf buffer instead of the ring buffer
 *   ST_TCP_SET_STATE    kernel 4.15: hook tcp:tcp_set_state instead
 *   ST_LATE_CHILD_TUPLE kernel < 6.15: an accepted socket's LISTEN->SYN_RECV
 *                       comes before its tuple is set (see on_set_state);
 *                       the port filters wait for its next transition
 *   ST_TW_HANDLER       address of tw_timer_handler; 0 disables TIME_WAIT
 *   ST_OFF_TW_TIMER, ST_OFF_TW_SUBSTATE, ST_OFF_TIMER_EXPIRES,
 *   ST_OFF_TIMER_PPREV, ST_OFF_TW_PORTS (tw_rearmed)
 *                       BTF offsets; without them every timewait arm is
 *                       taken as TIME_WAIT (no FIN_WAIT2 hand-off)
 *   ST_OFF_SKC_COOKIE   BTF offset of the socket cookie (else own ids only)
 *   ST_OFF_SK_ERR       BTF offset of sk_err (else `end` cannot name errors)
 *   ST_OFF_SKC_NET, ST_OFF_NET_INUM
 *                       BTF offsets of the socket's network namespace inode
 *   ST_OFF_SK_UID       BTF offset of sk_uid (else uid null)
 *   ST_OFF_SK_CGROUP, ST_OFF_CGROUP_KN, ST_OFF_KN_ID (ST_CGROUP_VAL: the
 *                       pre-5.15 union, a pointer with bit 0 clear)
 *                       the socket's cgroup v2 id (else cgroup null)
 *   ST_OFF_TP_*         BTF offsets of struct tcp_sock's counters: the
 *                       health of closed records (else null)
 *   ST_OFF_SK_LINGERTIME, ST_OFF_SKC_FLAGS
 *                       a close() that aborts (SO_LINGER 0) sends a reset
 *   ST_OFF_TASK_FILES, ST_OFF_FILES_FDT, ST_OFF_FDT_FD, ST_OFF_FDT_MAX,
 *   ST_OFF_FILE_PRIVATE, ST_OFF_SOCKET_SK
 *                       accept()'s new fd to its socket: the acceptor owns it
 *   ST_FIN_TIMEOUT      net.ipv4.tcp_fin_timeout in seconds
 *   ST_NO_STATE         --records without state: no per-transition records
 *   ST_NO_CLOSED        --records without closed
 *   ST_FILTER_FAMILY    4 or 6: emit only that family
 *   ST_FILTER_PORTS     port_filter bitmap is in use
 *   ST_FILTER_LPORTS    ... and holds local-port (--lport) entries
 *   ST_FILTER_PIDS      pid_filter set is in use
 *   ST_FILTER_UID       uid_filter set (sk_uid) is in use
 *   ST_FILTER_NETNS     netns_filter set (namespace inodes) is in use
 *   ST_FILTER_CGROUP    cgroup_filter (id, level) pairs are in use, with
 *                       ST_OFF_CGROUP_LEVEL and ST_OFF_CGROUP_ANCESTORS (an
 *                       array of cgroup pointers, 6.0+) or, with
 *                       ST_CGROUP_ANCESTOR_IDS, of ids (older kernels)
 *   ST_GATE_TIMERS      the timer programs stand idle while no socket that
 *                       could reach TIME_WAIT passes the filters (see "gate")
 *   ST_RAW_TP           attach raw tracepoints (see "attachment" below), with
 *                       ST_OFF_SK_*, ST_OFF_SKC_*, ST_OFF_INET_SPORT and
 *                       ST_OFF_TIMER_FUNCTION: BTF offsets of what they read
 */
#include "socktrace.h"
#include "hist.h"

#define TCP_ESTABLISHED	1
#define TCP_SYN_SENT	2
#define TCP_SYN_RECV	3
#define TCP_FIN_WAIT1	4
#define TCP_FIN_WAIT2	5
#define TCP_TIME_WAIT	6
#define TCP_CLOSE	7
#define TCP_CLOSE_WAIT	8
#define TCP_LAST_ACK	9
#define TCP_LISTEN	10
#define TCP_CLOSING	11

#define ST_AF_INET	2
#define ST_AF_INET6	10

#define ST_EPIPE	32
#define ST_ECONNRESET	104
#define ST_ETIMEDOUT	110
#define ST_ECONNREFUSED	111

/* A timewait arm belongs to a set_state(CLOSE) that follows it on the same
 * CPU, of a socket with its ports (take_arm); without the ports to compare,
 * to the next one only, and soon. */
#ifdef ST_OFF_TW_PORTS
#define ST_ARM_WINDOW_NS	(100 * 1000 * 1000ULL)
#else
#define ST_ARM_WINDOW_NS	(1000 * 1000ULL)
#endif
/* connect() cancels a reused timewait timer within the same syscall. */
#define ST_CONNECT_WINDOW_NS	(10 * 1000 * 1000ULL)
#define ST_TIME_WAIT_LEN_S	60

/* Which per-CPU slot (scratch space, counters, tallies) a program uses:
 * programs nest on a CPU (the backup and the timer programs run in
 * interrupts that can come in while the main program runs), and each must
 * have its own.  A program never nests with itself, so the main and backup
 * slots count with plain increments; the three timer programs share a slot
 * and nest with each other, so that one adds atomically.  (An atomic add
 * cost the main program ~60 ns a transition here; a plain one, nothing
 * measurable.) */
#define ST_SLOT_MAIN	0
#define ST_SLOT_BACKUP	1
#define ST_SLOT_TIMER	2
#define ST_NR_SLOTS	3

/* ---- maps ---------------------------------------------------------------- */

#ifdef ST_USE_PERFBUF
BPF_PERF_OUTPUT(events);
BPF_PERCPU_ARRAY(scratch_state, struct st_state, 1);
BPF_PERCPU_ARRAY(scratch_closed, struct st_closed, 1);
#else
BPF_RINGBUF_OUTPUT(events, ST_RINGBUF_PAGES);
#endif

/* A connection's story (struct st_story, socktrace.h): in `socks` (by
 * socket address) while its full socket lives, then in `tws` (by timewait
 * timer address). */
BPF_HASH(socks, __u64, struct st_story, ST_MAX_SOCKS);
BPF_HASH(tws, __u64, struct st_story, ST_MAX_SOCKS);
BPF_PERCPU_ARRAY(scratch, struct st_story, 3);

/* Sockets older than us, by cookie (user space fills it at start). */
/* Not preallocated: filled once at start, emptied as they are taken, and
 * most hosts have far fewer sockets than ST_MAX_SOCKS. */
BPF_F_TABLE("hash", __u64, struct st_seed, seeds, ST_MAX_SOCKS, BPF_F_NO_PREALLOC);

/* Own connection ids, per CPU and slot: see new_conn(). */
BPF_PERCPU_ARRAY(conn_seq, __u64, 2);

/* Listening sockets by local address and port: the owner of what they accept. */
struct st_lkey {
	__u8  addr[16];
	__u16 port;
	__u16 pad;
};
struct st_listener {
	__u64 sk;
	__u32 pid;
	char  comm[ST_COMM_LEN];
};
BPF_HASH(listeners, struct st_lkey, struct st_listener, 65536);

/* FIN_WAIT2 timewait sockets by 4-tuple, so that a local peer's
 * LAST_ACK->CLOSE (our ACK of its FIN arrived) shows us entering TIME_WAIT. */
struct st_tuple {
	__u8  laddr[16];
	__u8  raddr[16];
	__u16 lport;
	__u16 rport;
};
BPF_HASH(fw2_tuples, struct st_tuple, __u64, ST_MAX_SOCKS);

/* The last connect() of each thread, to tell a timewait reuse: connect()
 * takes over a timewait socket while its own socket is in SYN_SENT. */
struct st_connect {
	__u64 ts;
	__u64 sk;
	struct st_tuple t;
};
BPF_TABLE("lru_hash", __u64, struct st_connect, connecting, 16384);

/* Per CPU: timewait arms waiting for their set_state, and a timewait timer
 * cancel waiting to be told apart from a re-arm (cancel + start).  Arms are
 * kept four deep: tcp_time_wait() arms the timer with softirqs off and turns
 * them on before its set_state(CLOSE), so pending softirqs run in between,
 * and may hand other sockets to timewait sockets of their own (seen on 6.1
 * under emulation: an arm that waited 1 ms was taken for no socket's). */
struct st_arm {
	__u64 timer;
	__u64 expires;
	__u64 now;
	__u64 ts;
};
#define ST_ARMS 4
struct st_arms {
	__u32 next;
	__u32 pad;
	struct st_arm slot[ST_ARMS];
};
BPF_PERCPU_ARRAY(pending_arm, struct st_arms, 1);
struct st_cancel {
	__u64 timer;
	__u64 ts;
	__u64 expires;			/* timer->expires read at the cancel */
	__u64 jiffies;
	__u8  reason;
	__u8  substate;
};
BPF_PERCPU_ARRAY(pending_cancel, struct st_cancel, 1);

/* Counters, per slot: [slot * ST_NR_COUNTERS + counter]. */
BPF_PERCPU_ARRAY(counters, __u64, ST_NR_SLOTS * ST_NR_COUNTERS);
/* What the exit report shows, per slot: transitions by old*16+new, and per
 * state a log-linear histogram of the time spent in it (bpf/hist.h). */
#define ST_TRANS_PER_SLOT	(ST_NR_STATES * ST_NR_STATES)
#define ST_HIST_PER_SLOT	(ST_NR_STATES * ST_HIST_BUCKETS)
BPF_PERCPU_ARRAY(transitions, __u64, ST_NR_SLOTS * ST_TRANS_PER_SLOT);
BPF_PERCPU_ARRAY(hist, __u64, ST_NR_SLOTS * ST_HIST_PER_SLOT);

#ifdef ST_GATE_TIMERS
/* The gate.  With a port or family filter most sockets never enter our
 * maps, yet the timer programs run for every timer on the host (a dozen per
 * loopback connection).  A timewait socket we report is always one we
 * follow first: a socket reaches TIME_WAIT through FIN_WAIT1 or CLOSING, a
 * transition that passed the filters and put it in `socks`.  So the timer
 * programs do nothing while `socks` and `tws` hold no entry of ours:
 * followed[0] counts those entries; followed[1] is set to 1 by user space
 * when a matching socket older than us is closing (a slot of its own: the
 * count changes meanwhile).  An entry whose delete we miss keeps the gate
 * open: the cost of a miss is speed, never a TIME_WAIT. */
BPF_ARRAY(followed, __s64, 2);
#endif

#ifdef ST_FILTER_PORTS
/* bit 1: either port, bit 2: local port, bit 4: remote port */
BPF_ARRAY(port_filter, __u8, 65536);
#endif
#ifdef ST_FILTER_PIDS
BPF_HASH(pid_filter, __u32, __u8, 4096);
#endif
#ifdef ST_FILTER_UID
BPF_HASH(uid_filter, __u32, __u8, 1024);
#endif
#ifdef ST_FILTER_NETNS
BPF_HASH(netns_filter, __u32, __u8, 1024);
#endif
#ifdef ST_FILTER_CGROUP
/* --cgroup PATH: that cgroup and the ones below it, as (id, level): a
 * socket's cgroup whose ancestor at that level has that id */
#define ST_CGROUP_FILTERS 8
struct st_cgroup_filter {
	__u64 id;			/* 0: unused slot */
	__u32 level;
	__u32 pad;
};
BPF_ARRAY(cgroup_filter, struct st_cgroup_filter, ST_CGROUP_FILTERS);
#endif

/* ---- helpers ------------------------------------------------------------- */

/* One more in a per-CPU slot of this program's (see ST_SLOT_MAIN). */
static __always_inline void bump(__u64 *v, int slot)
{
	if (!v)
		return;
	if (slot == ST_SLOT_TIMER)
		__sync_fetch_and_add(v, 1);
	else
		*v += 1;
}

static __always_inline void count(int idx, int slot)
{
	int i = slot * ST_NR_COUNTERS + idx;
	bump(counters.lookup(&i), slot);
}

static __always_inline void follow(__s64 n)
{
#ifdef ST_GATE_TIMERS
	int zero = 0;
	__s64 *v = followed.lookup(&zero);
	if (v)
		__sync_fetch_and_add(v, n);
#endif
}

static __always_inline int timers_idle(void)
{
#ifdef ST_GATE_TIMERS
	int zero = 0, one = 1;
	__s64 *n = followed.lookup(&zero), *older = followed.lookup(&one);
	return n && older && *n <= 0 && *older <= 0;
#else
	return 0;
#endif
}

/* Map entries go through these two, which keep the gate's count. */
static __always_inline void forget_sock(__u64 sk)
{
	if (socks.delete(&sk) == 0)
		follow(-1);
}

static __always_inline void forget_tw(__u64 timer)
{
	if (tws.delete(&timer) == 0)
		follow(-1);
}

static __always_inline struct st_story *scratch_slot(int slot)
{
	return scratch.lookup(&slot);
}

/* An id of our own for a socket the kernel gave no cookie yet: the top bit
 * (never a cookie's), the CPU and slot, then a per-CPU sequence.  Per CPU
 * and slot, so no two programs ever bump one counter at once. */
static __always_inline __u64 new_conn(int slot)
{
	__u64 *seq = conn_seq.lookup(&slot);
	__u64 n = 0;

	if (seq)
		n = ++*seq;
	return ST_CONN_OWN | ((__u64)bpf_get_smp_processor_id() << 40) |
	       ((__u64)slot << 38) | (n & ((1ULL << 38) - 1));
}

static __always_inline __u64 read_cookie(__u64 sk)
{
	__u64 c = 0;
#ifdef ST_OFF_SKC_COOKIE
	bpf_probe_read_kernel(&c, sizeof(c), (void *)(sk + ST_OFF_SKC_COOKIE));
#endif
	return c;
}

/* The socket's network namespace (sk->__sk_common.skc_net->ns.inum): user
 * space compares stories with its own sock_diag view, which is one
 * namespace's. */
static __always_inline __u32 read_netns(__u64 sk)
{
	__u32 inum = 0;
#if defined(ST_OFF_SKC_NET) && defined(ST_OFF_NET_INUM)
	__u64 net = 0;
	bpf_probe_read_kernel(&net, sizeof(net), (void *)(sk + ST_OFF_SKC_NET));
	if (net)
		bpf_probe_read_kernel(&inum, sizeof(inum), (void *)(net + ST_OFF_NET_INUM));
#endif
	return inum;
}

static __always_inline int read_err(__u64 sk)
{
	int err = 0;
#ifdef ST_OFF_SK_ERR
	bpf_probe_read_kernel(&err, sizeof(err), (void *)(sk + ST_OFF_SK_ERR));
#endif
	return err;
}

/* A kernel value at an address (BTF offset arithmetic): 0 if unreadable. */
#define ST_READER(name, type)						\
static __always_inline type name(__u64 addr)				\
{									\
	type v = 0;							\
	bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);		\
	return v;							\
}
ST_READER(read_u16, __u16)
ST_READER(read_u32_at, __u32)
ST_READER(read_u64_at, __u64)

/* The socket's owner uid (sk_uid: what ss and sock_diag show). */
static __always_inline __u32 read_uid(__u64 sk)
{
#ifdef ST_OFF_SK_UID
	return read_u32_at(sk + ST_OFF_SK_UID);
#else
	return ST_NONE_U32;
#endif
}

/* The socket's cgroup v2 id as the kernel records it (sk_cgrp_data: the
 * cgroup of the task that made the socket; an accepted socket gets its
 * listener's): cgroup->kn->id, the inode of the cgroup's directory, as
 * bpf_get_current_cgroup_id() and sock_diag's INET_DIAG_CGROUP_ID give it.
 * A field of the socket, not of whatever task runs now: right in softirq. */
static __always_inline __u64 read_cgroup(__u64 sk)
{
#if defined(ST_OFF_SK_CGROUP) && defined(ST_OFF_CGROUP_KN) && defined(ST_OFF_KN_ID)
	__u64 cg = read_u64_at(sk + ST_OFF_SK_CGROUP);
#ifdef ST_CGROUP_VAL
	if (cg & 1)		/* pre-5.15: a net_cls/net_prio id, no pointer */
		return 0;
#endif
	if (!cg)
		return 0;
	__u64 kn = read_u64_at(cg + ST_OFF_CGROUP_KN);
	return kn ? read_u64_at(kn + ST_OFF_KN_ID) : 0;
#else
	return 0;
#endif
}

/* Where the socket lives: read once, when a story begins. */
static __always_inline void read_context(struct st_story *s, __u64 sk)
{
	s->netns = read_netns(sk);
	s->uid = read_uid(sk);
	s->cgroup = read_cgroup(sk);
	s->syn_retrans = ST_NONE_U32;
}

/* The connection's counters from struct tcp_sock, at its last transition
 * (CLOSE, or the hand-off to a timewait socket): what tcp_info would show
 * then.  Only closed records carry them.  The kernel's byte counts move
 * with the sequence numbers, which the SYN and the FIN take one each of:
 * a client's bytes_acked counts its SYN (an accepted socket starts past
 * it), everyone's their FIN once acknowledged (*fin_out*), bytes_received
 * the peer's FIN once it came (*fin_in*).  What users count is payload:
 * those are taken off. */
static __always_inline void read_health(struct st_story *s, __u64 sk, int fin_out, int fin_in)
{
#if defined(ST_OFF_TP_BYTES_ACKED) && !defined(ST_NO_CLOSED)
	__u64 acked = read_u64_at(sk + ST_OFF_TP_BYTES_ACKED);
	__u64 received = read_u64_at(sk + ST_OFF_TP_BYTES_RECEIVED);

	if (acked && s->role == ST_ROLE_CLIENT)
		acked--;		/* the SYN */
	if (acked && fin_out)
		acked--;
	if (received && fin_in)
		received--;
	s->bytes_acked = acked;
	s->bytes_received = received;
	s->segs_out = read_u32_at(sk + ST_OFF_TP_SEGS_OUT);
	s->segs_in = read_u32_at(sk + ST_OFF_TP_SEGS_IN);
	s->retrans = read_u32_at(sk + ST_OFF_TP_TOTAL_RETRANS);
	s->srtt_us = read_u32_at(sk + ST_OFF_TP_SRTT_US) >> 3;
	s->rttvar_us = read_u32_at(sk + ST_OFF_TP_MDEV_US) >> 2;
	s->flags |= ST_F_HEALTH;
#endif
}

/* Does this X->CLOSE come from a close() that aborts the connection, which
 * sends a reset right after it (tcp_close(): SO_LINGER with a zero time, or
 * data the application never read)?  The reset's own tracepoint comes too
 * late for the closed record: the story is gone by then. */
static __always_inline int closing_with_reset(__u64 sk, int old)
{
	/* tcp_need_reset(): only these states answer an abort with a reset */
	if (old != TCP_ESTABLISHED && old != TCP_CLOSE_WAIT && old != TCP_FIN_WAIT1 &&
	    old != TCP_FIN_WAIT2 && old != TCP_SYN_RECV)
		return 0;
#if defined(ST_OFF_SK_LINGERTIME) && defined(ST_OFF_SKC_FLAGS)
	/* SOCK_LINGER is bit 4 of sk_flags (enum sock_flags) */
	if ((read_u64_at(sk + ST_OFF_SKC_FLAGS) & (1 << 4)) &&
	    !read_u64_at(sk + ST_OFF_SK_LINGERTIME))
		return 1;
#endif
#if defined(ST_OFF_TP_RCV_NXT) && defined(ST_OFF_TP_COPIED_SEQ)
	/* unread data: tcp_close() drops it without moving copied_seq; a
	 * peer's FIN (CLOSE_WAIT) takes one sequence number of its own */
	__u32 unread = read_u32_at(sk + ST_OFF_TP_RCV_NXT) -
		       read_u32_at(sk + ST_OFF_TP_COPIED_SEQ);
	if (unread > (old == TCP_CLOSE_WAIT ? 1u : 0u))
		return 1;
#endif
	return 0;
}

/* Filters run in the kernel so that what is filtered out costs user space
 * nothing.  A socket whose owner is not known yet passes the pid filter:
 * user space may know it from /proc and filters again. */
static __always_inline int wanted(const struct st_story *s)
{
#ifdef ST_FILTER_FAMILY
	if (s->family != ST_FILTER_FAMILY)
		return 0;
#endif
#ifdef ST_FILTER_PORTS
	int lp = s->sport, rp = s->dport;
	__u8 *l = port_filter.lookup(&lp), *r = port_filter.lookup(&rp);
	__u8 lb = l ? *l : 0, rb = r ? *r : 0;
	if (!((lb & 1) || (rb & 1) || (lb & 2) || (rb & 4)))
		return 0;
#endif
#ifdef ST_FILTER_PIDS
	if (s->pid) {
		__u32 pid = s->pid;
		if (!pid_filter.lookup(&pid))
			return 0;
	}
#endif
	return 1;
}

#ifndef ST_USE_PERFBUF
/* No wake-up per record: user space reads on a short timer, which costs
 * far less than a wake-up for every transition.  But every ST_WAKE_EVERY
 * records of a CPU one does wake it, so that a burst (100k TIME_WAITs
 * expiring at once) is read as it comes, not after the timer, by then
 * perhaps past the ring's end. */
#define ST_WAKE_EVERY	2048
BPF_PERCPU_ARRAY(since_wake, __u32, ST_NR_SLOTS);

static __always_inline __u64 wake_flag(int slot)
{
	__u32 *n = since_wake.lookup(&slot);

	if (n && ++*n >= ST_WAKE_EVERY) {
		*n = 0;
		return BPF_RB_FORCE_WAKEUP;
	}
	return BPF_RB_NO_WAKEUP;
}
#endif

/* One transition's record: reserve, fill from the story, submit.  A full
 * buffer is counted so that user space can say exactly what was lost. */
static __always_inline void emit_state(void *ctx, const struct st_story *s, __u64 ts,
				       int old, int new, __u64 in_old, __u8 flags,
				       __u8 via, __u8 reason, int slot)
{
#ifndef ST_NO_STATE
	int derived = flags & ST_F_DERIVED;

	if (!wanted(s))
		return;
#ifdef ST_USE_PERFBUF
	int zero = 0;
	struct st_state *e = scratch_state.lookup(&zero);
#else
	struct st_state *e = events.ringbuf_reserve(sizeof(*e));
#endif
	if (!e) {
		count(derived ? ST_CNT_DERIVED_LOST : ST_CNT_RINGBUF_LOST, slot);
		return;
	}
	e->kind = ST_KIND_STATE;
	e->pid = s->pid;
	e->ts_ns = ts;
	e->conn = s->conn;
	e->in_old_ns = in_old;
	__builtin_memcpy(e->saddr, s->saddr, 16);
	__builtin_memcpy(e->daddr, s->daddr, 16);
	e->sport = s->sport;
	e->dport = s->dport;
	e->family = s->family;
	e->oldstate = old;
	e->newstate = new;
	e->owner_from = s->owner_from;
	e->role = s->role;
	e->flags = flags;
	e->reason = reason;
	e->via = via;
	__builtin_memcpy(e->comm, s->comm, ST_COMM_LEN);
	e->cgroup = s->cgroup;
	e->netns = s->netns;
	e->uid = s->uid;
#ifdef ST_USE_PERFBUF
	if (events.perf_submit(ctx, e, sizeof(*e)) < 0) {
		count(derived ? ST_CNT_DERIVED_LOST : ST_CNT_RINGBUF_LOST, slot);
		return;
	}
#else
	events.ringbuf_submit(e, wake_flag(slot));
#endif
	count(derived ? ST_CNT_DERIVED_SENT : ST_CNT_STATE_SENT, slot);
#endif
}

/* How the connection ended, from what the kernel knew at its close. */
static __always_inline __u8 end_of(const struct st_story *s, int last, int err, __u8 reason)
{
	if (last == TCP_SYN_SENT) {
		if (err == ST_ECONNREFUSED || (s->flags & ST_F_RST_RECV))
			return ST_END_REFUSED;
		if (err == ST_ETIMEDOUT)
			return ST_END_TIMEOUT;
		return err ? ST_END_ERROR : ST_END_CANCELLED;
	}
	if (last == TCP_TIME_WAIT)
		return ST_END_NORMAL;
	if ((s->flags & (ST_F_RST_RECV | ST_F_RST_SENT)) || err == ST_ECONNRESET ||
	    err == ST_EPIPE)
		return ST_END_RESET;
	if (err == ST_ETIMEDOUT)
		return ST_END_TIMEOUT;
	if (err)
		return ST_END_ERROR;
	if (last == TCP_LAST_ACK)
		return ST_END_NORMAL;
	if (last == TCP_FIN_WAIT2 && reason) {
		/* a timewait socket still in FIN_WAIT2 */
		if (reason == ST_REASON_EXPIRED)
			return ST_END_TIMEOUT;
		if (reason == ST_REASON_REUSED)
			return ST_END_NORMAL;
		return ST_END_RESET;
	}
	return ST_END_ABORTED;
}

/* The finished story.  Listeners have none: they are no connection.
 * end: an enum st_end, or -1 to work it out from what the kernel knew. */
static __always_inline void emit_closed(void *ctx, const struct st_story *s, __u64 ts,
					int err, __u8 reason, int how, int slot)
{
	if (s->role == ST_ROLE_LISTENER || !wanted(s))
		return;
	__u8 n = s->path_len > ST_PATH_LEN ? ST_PATH_LEN : s->path_len;
	int last = n ? s->path[(n - 1) & (ST_PATH_LEN - 1)] : s->state;
	__u8 end = how < 0 ? end_of(s, last, err, reason) : how;

	/* how it ended, for the exit report and --metrics, records or not */
	if (end <= ST_END_UNKNOWN)
		count(ST_CNT_END_NORMAL + end, slot);
#ifndef ST_NO_CLOSED
#ifdef ST_USE_PERFBUF
	int zero = 0;
	struct st_closed *c = scratch_closed.lookup(&zero);
#else
	struct st_closed *c = events.ringbuf_reserve(sizeof(*c));
#endif
	if (!c) {
		count(ST_CNT_CLOSED_LOST, slot);
		return;
	}
	c->kind = ST_KIND_CLOSED;
	c->pid = s->pid;
	c->ts_ns = ts;
	c->conn = s->conn;
	c->start_ns = s->start_ns;
	__builtin_memcpy(c->spent, s->spent, sizeof(c->spent));
	__builtin_memcpy(c->saddr, s->saddr, 16);
	__builtin_memcpy(c->daddr, s->daddr, 16);
	c->sport = s->sport;
	c->dport = s->dport;
	c->error = err;
	c->family = s->family;
	c->owner_from = s->owner_from;
	c->role = s->role;
	c->flags = s->flags;
	c->end = end;
	c->reason = reason;
	c->path_len = n;
	c->pad = 0;
	__builtin_memcpy(c->path, s->path, ST_PATH_LEN);
	__builtin_memcpy(c->comm, s->comm, ST_COMM_LEN);
	c->cgroup = s->cgroup;
	c->netns = s->netns;
	c->uid = s->uid;
	c->bytes_acked = s->bytes_acked;
	c->bytes_received = s->bytes_received;
	c->segs_out = s->segs_out;
	c->segs_in = s->segs_in;
	c->retrans = s->retrans;
	c->srtt_us = s->srtt_us;
	c->rttvar_us = s->rttvar_us;
	c->syn_retrans = s->syn_retrans;
#ifdef ST_USE_PERFBUF
	if (events.perf_submit(ctx, c, sizeof(*c)) < 0) {
		count(ST_CNT_CLOSED_LOST, slot);
		return;
	}
#else
	events.ringbuf_submit(c, wake_flag(slot));
#endif
	count(ST_CNT_CLOSED_SENT, slot);
#endif
}

/* A state number as an array index the verifier can bound.  The compiler
 * drops a plain `old & 15` where it knows `old` already (FIN_WAIT1,
 * FIN_WAIT2 or CLOSING, on the way to TIME_WAIT); the 6.18 verifier follows
 * that, Debian 12's 6.1 refused the program ("R3 unbounded memory
 * access").  The empty asm hides the value, so the mask stays. */
static __always_inline __u32 state_idx(int state)
{
	__u32 i = state;

	asm volatile("" : "+r"(i));
	return i & (ST_NR_STATES - 1);
}

/* A state left, onto the story's path (cut, and said so, when full). */
static __always_inline void path_push(struct st_story *s, int state)
{
	if (s->path_len < ST_PATH_LEN)
		s->path[s->path_len & (ST_PATH_LEN - 1)] = state;
	else
		s->flags |= ST_F_PATH_CUT;
	if (s->path_len < 255)
		s->path_len++;
}

/* The story leaves state `old` at `ts`: time, path, transition count and
 * histogram.  A time that is only a lower bound stays out of the histogram. */
static __always_inline void leave(struct st_story *s, int old, int new, __u64 ts, int slot)
{
	__u64 in_old = 0;
	int idx;

	if (ts >= s->ts)
		in_old = ts - s->ts;
	else
		count(ST_CNT_IMPOSSIBLE, slot);

	/* CLOSE is no state of the connection's; a new child socket never
	 * was in its listener's LISTEN */
	if (old != TCP_CLOSE && !(old == TCP_LISTEN && new == TCP_SYN_RECV)) {
		s->spent[state_idx(old)] += in_old;
		path_push(s, old);
		if (s->cur_lower) {
			count(ST_CNT_LOWER, slot);
		} else if (old != TCP_LISTEN) {
			int h = old == TCP_SYN_SENT && new == TCP_CLOSE ?
				ST_HIST_CONNECT_FAILED : (old & (ST_NR_STATES - 1));
			idx = slot * ST_HIST_PER_SLOT + h * ST_HIST_BUCKETS + st_hist_bucket(in_old);
			bump(hist.lookup(&idx), slot);
		}
	}
	idx = slot * ST_TRANS_PER_SLOT +
	      (old & (ST_NR_STATES - 1)) * ST_NR_STATES + (new & (ST_NR_STATES - 1));
	bump(transitions.lookup(&idx), slot);
	s->state = new;
	s->ts = ts;
	s->cur_lower = 0;
}

static __always_inline __u8 read_substate(__u64 timer)
{
	__u8 sub = TCP_TIME_WAIT;
#ifdef ST_OFF_TW_SUBSTATE
	bpf_probe_read_kernel(&sub, sizeof(sub),
			      (void *)(timer - ST_OFF_TW_TIMER + ST_OFF_TW_SUBSTATE));
#endif
	return sub;
}

static __always_inline void tuple_of(struct st_tuple *t, const struct st_story *s)
{
	__builtin_memcpy(t->laddr, s->saddr, 16);
	__builtin_memcpy(t->raddr, s->daddr, 16);
	t->lport = s->sport;
	t->rport = s->dport;
}

static __always_inline struct st_listener *find_listener(const __u8 *addr, __u16 port)
{
	struct st_lkey k = {};
	struct st_listener *l;

	__builtin_memcpy(k.addr, addr, 16);
	k.port = port;
	l = listeners.lookup(&k);
	if (l)
		return l;
	/* bound to the IPv4 wildcard: ::ffff:0.0.0.0 */
	__builtin_memset(k.addr, 0, 16);
	k.addr[10] = 0xff;
	k.addr[11] = 0xff;
	l = listeners.lookup(&k);
	if (l)
		return l;
	/* bound to the IPv6 wildcard :: (dual stack) */
	k.addr[10] = 0;
	k.addr[11] = 0;
	return listeners.lookup(&k);
}

/* A story from a seed: a socket older than us that sock_diag showed at start. */
static __always_inline void story_from_seed(struct st_story *s, __u64 cookie,
					    const struct st_seed *seed)
{
	s->conn = cookie;
	s->start_ns = seed->since_ns;
	s->ts = seed->since_ns;
	s->pid = seed->pid;
	s->owner_from = seed->owner_from;
	s->role = seed->role;
	s->flags = ST_F_LOWER | (seed->flags & ST_F_ESTIMATE);
	s->cur_lower = 1;
	__builtin_memcpy(s->comm, seed->comm, ST_COMM_LEN);
	/* what sock_diag said, where the socket itself cannot say (a timewait
	 * socket has no sk_uid or cgroup) */
	if (seed->uid != ST_NONE_U32)
		s->uid = seed->uid;
	if (seed->cgroup)
		s->cgroup = seed->cgroup;
}

/* ---- timewait -------------------------------------------------------------- */

/* A timewait substate change we can see: FIN_WAIT2 -> TIME_WAIT. */
static __always_inline void tw_promote(void *ctx, struct st_story *tw, __u64 ts, __u8 via,
				       int slot)
{
	struct st_tuple t = {};
	__u64 in_old = ts - tw->ts;
	__u8 flags = ST_F_IN_OLD | ST_F_DERIVED | (tw->cur_lower ? ST_F_LOWER : 0);

	leave(tw, TCP_FIN_WAIT2, TCP_TIME_WAIT, ts, slot);
	emit_state(ctx, tw, ts, TCP_FIN_WAIT2, TCP_TIME_WAIT, in_old, flags, via,
		   ST_REASON_NONE, slot);
	tuple_of(&t, tw);
	fw2_tuples.delete(&t);
}

/* Is this timewait timer armed again, on the same socket?  A re-arm is a
 * cancel and a start in one __mod_timer() call, but the kernel skips our
 * timer_start program when it is already running on this CPU (a softirq
 * that re-arms a timewait timer came in while it ran for some other timer:
 * counted in recursion_misses).  The cancel is then settled by some later
 * event and would read as the socket's end (seen under emulation, where
 * programs run long enough to be interrupted).  A timer that is pending
 * again (entry.pprev set) on a timewait socket with the same ports is that
 * re-arm; a socket really gone has its timer detached, and a new timewait
 * socket in the same memory (the slab is SLAB_TYPESAFE_BY_RCU) has other
 * ports. */
static __always_inline int tw_rearmed(__u64 timer, struct st_story *tw)
{
#if defined(ST_OFF_TIMER_PPREV) && defined(ST_OFF_TW_PORTS)
	__u64 pprev = 0;
	__u16 ports[2] = {};	/* skc_dport (network order), skc_num */

	bpf_probe_read_kernel(&pprev, sizeof(pprev), (void *)(timer + ST_OFF_TIMER_PPREV));
	if (!pprev)
		return 0;
	bpf_probe_read_kernel(ports, sizeof(ports),
			      (void *)(timer - ST_OFF_TW_TIMER + ST_OFF_TW_PORTS));
	return __builtin_bswap16(ports[0]) == tw->dport && ports[1] == tw->sport;
#else
	return 0;
#endif
}

/* The timewait arm of a socket closing now with these ports (host order),
 * taken off this CPU's list: 0 when there is none. */
static __always_inline int take_arm(struct st_arm *out, __u16 sport, __u16 dport, __u64 now)
{
	int zero = 0;
	struct st_arms *arms = pending_arm.lookup(&zero);

	if (!arms)
		return 0;
#pragma unroll
	for (int i = 0; i < ST_ARMS; i++) {
		/* newest first */
		struct st_arm *a = &arms->slot[(arms->next - 1 - i) & (ST_ARMS - 1)];
		if (!a->timer || now - a->ts >= ST_ARM_WINDOW_NS)
			continue;
#ifdef ST_OFF_TW_PORTS
		__u16 ports[2] = {};	/* skc_dport (network order), skc_num */
		bpf_probe_read_kernel(ports, sizeof(ports),
				      (void *)(a->timer - ST_OFF_TW_TIMER + ST_OFF_TW_PORTS));
		if (__builtin_bswap16(ports[0]) != dport || ports[1] != sport)
			continue;
#endif
		__builtin_memcpy(out, a, sizeof(*out));
		a->timer = 0;
		return 1;
	}
	return 0;
}

/* A pending timewait cancel on this CPU was not followed by a re-arm of the
 * same timer: the timewait socket is gone.  Its end, and its story. */
static __always_inline void tw_end(void *ctx, struct st_cancel *pc, int slot)
{
	__u64 timer = pc->timer;
	struct st_story *tw = tws.lookup(&timer);
	struct st_tuple t = {};

	pc->timer = 0;
	if (!tw)
		return;
	if (tw_rearmed(timer, tw)) {
		/* a re-arm after all: what on_timer_start does for one */
#ifdef ST_OFF_TIMER_EXPIRES
		bpf_probe_read_kernel(&tw->deadline, sizeof(tw->deadline),
				      (void *)(timer + ST_OFF_TIMER_EXPIRES));
#endif
		if (tw->state == TCP_FIN_WAIT2 && read_substate(timer) == TCP_TIME_WAIT)
			tw_promote(ctx, tw, pc->ts, ST_VIA_TIMER, slot);
		return;
	}
	if (tw->state == TCP_FIN_WAIT2 && pc->substate == TCP_TIME_WAIT) {
		/* The peer's FIN arrived unseen (a remote peer): the re-arm that
		 * came with it set expires = then + TIME_WAIT_LEN. */
		__u64 when = pc->ts;
#ifdef ST_OFF_TIMER_EXPIRES
		__u64 twlen_j = tw->len_j * ST_TIME_WAIT_LEN_S / ST_FIN_TIMEOUT;
		if (twlen_j && pc->expires > twlen_j) {
			__u64 entered_j = pc->expires - twlen_j;
			if (entered_j <= pc->jiffies) {
				__u64 ago = (pc->jiffies - entered_j) *
					    (ST_TIME_WAIT_LEN_S * 1000000000ULL / twlen_j);
				if (ago < pc->ts - tw->ts)
					when = pc->ts - ago;
			}
		}
#endif
		tw_promote(ctx, tw, when, ST_VIA_TIMER, slot);
	}
	int sub = tw->state;
	__u64 in_old = pc->ts - tw->ts;
	__u8 flags = ST_F_IN_OLD | ST_F_DERIVED | (tw->cur_lower ? ST_F_LOWER : 0);
	leave(tw, sub, TCP_CLOSE, pc->ts, slot);
	emit_state(ctx, tw, pc->ts, sub, TCP_CLOSE, in_old, flags, ST_VIA_TIMER, pc->reason,
		   slot);
	emit_closed(ctx, tw, pc->ts, 0, pc->reason, -1, slot);
	tuple_of(&t, tw);
	fw2_tuples.delete(&t);
	forget_tw(timer);
}

/* Every program first settles a cancel left pending on this CPU.  Returns 1
 * when the pending cancel was of `timer` (then it was a re-arm). */
static __always_inline int settle_cancel(void *ctx, __u64 timer, int slot)
{
	int zero = 0;
	struct st_cancel *pc = pending_cancel.lookup(&zero);

	if (!pc || !pc->timer)
		return 0;
	if (timer && pc->timer == timer) {
		pc->timer = 0;
		return 1;
	}
	tw_end(ctx, pc, slot);
	return 0;
}

/* A timewait socket older than us: its story from its seed, found by the
 * cookie the timewait socket keeps (tw_cookie). */
static __always_inline struct st_story *tw_adopt(__u64 timer)
{
#if defined(ST_OFF_SKC_COOKIE) && defined(ST_OFF_TW_TIMER)
	__u64 cookie = read_cookie(timer - ST_OFF_TW_TIMER);
	struct st_seed *seed;
	struct st_story *s = scratch_slot(ST_SLOT_TIMER);

	if (!cookie || !s)
		return 0;
	seed = seeds.lookup(&cookie);
	if (!seed)
		return 0;
	__builtin_memset(s, 0, sizeof(*s));
	s->uid = ST_NONE_U32;
	s->syn_retrans = ST_NONE_U32;
	story_from_seed(s, cookie, seed);
	__builtin_memcpy(s->saddr, seed->saddr, 16);
	__builtin_memcpy(s->daddr, seed->daddr, 16);
	s->sport = seed->sport;
	s->dport = seed->dport;
	s->family = seed->family;
	s->state = seed->state;
	s->netns = read_netns(timer - ST_OFF_TW_TIMER);
#ifdef ST_OFF_TIMER_EXPIRES
	bpf_probe_read_kernel(&s->deadline, sizeof(s->deadline),
			      (void *)(timer + ST_OFF_TIMER_EXPIRES));
#endif
	seeds.delete(&cookie);
	if (tws.update(&timer, s)) {
		count(ST_CNT_TW_FULL, ST_SLOT_TIMER);
		return 0;
	}
	follow(1);
	return tws.lookup(&timer);
#else
	return 0;
#endif
}

/* ---- sock:inet_sock_set_state -------------------------------------------- */

/* The ports a filter asks for, in either role; or a socket to decide later:
 * an accepted socket's tuple may not be set yet, and a client's
 * CLOSE->SYN_SENT has no local port yet (with an --lport filter it passes,
 * to record the owner, and the socket's later CLOSE then clears it). */
static __always_inline int ports_pass(int new, __u16 sport, __u16 dport)
{
#ifdef ST_FILTER_PORTS
	int lp = sport, rp = dport;
	__u8 *l = port_filter.lookup(&lp), *r = port_filter.lookup(&rp);
	__u8 lb = l ? *l : 0, rb = r ? *r : 0;
	if ((lb & 1) || (rb & 1) || (lb & 2) || (rb & 4))
		return 1;
#ifdef ST_LATE_CHILD_TUPLE
	/* an accepted socket whose tuple the kernel has not set yet (see
	 * on_set_state): decided at its next transition, which clears it
	 * below if the ports are not wanted */
	if (new == TCP_SYN_RECV && !dport)
		return 1;
#endif
#ifdef ST_FILTER_LPORTS
	if (!sport)
		return 1;
#endif
	return 0;
#else
	return 1;
#endif
}

#ifdef ST_FILTER_CGROUP
/* Is the socket's cgroup one of --cgroup's, or below one?  Its ancestor at
 * the filter's level (cgroup->ancestors[level], itself included) is that
 * cgroup.  A handful of reads, only with the filter on. */
static __always_inline int cgroup_pass(__u64 sk)
{
	__u64 cg = read_u64_at(sk + ST_OFF_SK_CGROUP);
#ifdef ST_CGROUP_VAL
	if (cg & 1)
		return 0;
#endif
	if (!cg)
		return 0;
	__u32 level = read_u32_at(cg + ST_OFF_CGROUP_LEVEL);
#pragma unroll
	for (int i = 0; i < ST_CGROUP_FILTERS; i++) {
		int k = i;
		struct st_cgroup_filter *f = cgroup_filter.lookup(&k);
		if (!f || !f->id)
			break;
		if (f->level > level)
			continue;
#ifdef ST_CGROUP_ANCESTOR_IDS
		__u64 id = read_u64_at(cg + ST_OFF_CGROUP_ANCESTORS + 8 * (__u64)(f->level & 255));
#else
		__u64 a = read_u64_at(cg + ST_OFF_CGROUP_ANCESTORS + 8 * (__u64)(f->level & 255));
		__u64 kn = a ? read_u64_at(a + ST_OFF_CGROUP_KN) : 0;
		__u64 id = kn ? read_u64_at(kn + ST_OFF_KN_ID) : 0;
#endif
		if (id == f->id)
			return 1;
	}
	return 0;
}
#endif

/* The filters, which each front end runs before anything else (the raw one
 * before it reads the addresses): a socket they reject costs a few reads and
 * a lookup or two per transition, nothing more.  The family and ports come from the tracepoint; uid,
 * namespace and cgroup from the socket, so every transition of one socket
 * gets the same answer. */
static __always_inline int filtered_out(__u64 sk, int new, __u16 sport, __u16 dport,
					__u16 family)
{
#ifdef ST_FILTER_FAMILY
	if ((family == ST_AF_INET6 ? 6 : 4) != ST_FILTER_FAMILY)
		goto out;
#endif
	if (!ports_pass(new, sport, dport))
		goto out;
#ifdef ST_FILTER_UID
	{
		__u32 uid = read_uid(sk);
		if (!uid_filter.lookup(&uid))
			goto out;
	}
#endif
#ifdef ST_FILTER_NETNS
	{
		__u32 ns = read_netns(sk);
		if (!netns_filter.lookup(&ns))
			goto out;
	}
#endif
#ifdef ST_FILTER_CGROUP
	if (!cgroup_pass(sk))
		goto out;
#endif
	return 0;
out: __attribute__((unused));
	if (new == TCP_CLOSE) {
		/* its timewait arm, if any, must not be taken by another socket */
		struct st_arm arm;
		take_arm(&arm, sport, dport, bpf_ktime_get_ns());
#if defined(ST_FILTER_LPORTS) && !defined(ST_LATE_CHILD_TUPLE)
		forget_sock(sk);
#endif
	}
#if defined(ST_FILTER_PORTS) && defined(ST_LATE_CHILD_TUPLE)
	forget_sock(sk);
#endif
	return 1;
}

/* A listener the filters leave out still owns what it accepts: `--rport P`
 * keeps the connections a server accepted from port P, never its listener
 * (remote port 0), and an accepted socket's owner is its listener's (see
 * find_listener).  Listens are rare: note the owner anyway, as on_set_state
 * does for the listeners it follows. */
static __always_inline void listener_aside(__u64 sk, int old, int new, __u16 sport,
					   const __u8 *saddr6)
{
	struct st_lkey k = {};

	__builtin_memcpy(k.addr, saddr6, 16);
	k.port = sport;
	if (new == TCP_LISTEN) {
		struct st_listener l = {};
		l.sk = sk;
		l.pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(l.comm, sizeof(l.comm));
		listeners.update(&k, &l);
	} else if (old == TCP_LISTEN && new == TCP_CLOSE) {
		struct st_listener *l = listeners.lookup(&k);
		if (l && l->sk == sk)
			listeners.delete(&k);
	}
}

/* A socket seen for the first time: a new one (connect, listen, accept),
 * or one older than us (its seed, if sock_diag showed it at start).
 * Returns 1 when the time it has spent in `old` is known (from its seed). */
static __always_inline int story_new(struct st_story *s, __u64 sk, int old, int new,
				     __u64 now, int slot)
{
	__builtin_memset(s, 0, sizeof(*s));
	s->start_ns = now;
	s->ts = now;
	read_context(s, sk);
	if (old == TCP_CLOSE) {
		s->conn = new_conn(slot);
		s->role = new == TCP_SYN_SENT ? ST_ROLE_CLIENT :
			  new == TCP_LISTEN ? ST_ROLE_LISTENER : ST_ROLE_UNKNOWN;
		return 0;
	}
	if (old == TCP_LISTEN && new == TCP_SYN_RECV) {
		s->conn = new_conn(slot);
		s->role = ST_ROLE_SERVER;
		return 0;
	}
	/* older than us */
	__u64 cookie = read_cookie(sk);
	struct st_seed *seed = cookie ? seeds.lookup(&cookie) : 0;
	if (seed) {
		story_from_seed(s, cookie, seed);
		seeds.delete(&cookie);
		return 1;
	}
	s->conn = cookie ? cookie : new_conn(slot);
	s->flags = ST_F_LOWER;
	s->cur_lower = 1;
	return 0;
}

/* A story whose socket ended unseen: its last state is left now, as far
 * as we know (user space's reconciliation does the same), and it ends as
 * unknown.  No histogram: that time was not measured. */
static __always_inline void vanished(void *ctx, struct st_story *s, __u64 now, int slot)
{
	if (now >= s->ts)
		s->spent[state_idx(s->state)] += now - s->ts;
	path_push(s, s->state);
	emit_closed(ctx, s, now, 0, ST_REASON_NONE, ST_END_UNKNOWN, slot);
}

static __always_inline int on_set_state(void *ctx, __u64 sk, int old, int new,
					__u16 sport, __u16 dport, __u16 family,
					const __u8 *saddr6, const __u8 *daddr6, int slot)
{
	__u64 now = bpf_ktime_get_ns();
	struct st_story *si = socks.lookup(&sk);
	struct st_story *s = si;
	int zero = 0;

	settle_cancel(ctx, 0, slot);
	int known = 1;		/* how long it was in `old` */
	if (!s) {
		s = scratch_slot(slot);
		if (!s)
			return 0;
		known = story_new(s, sk, old, new, now, slot);
	} else if (old == TCP_CLOSE || (old == TCP_LISTEN && new == TCP_SYN_RECV)) {
		/* A new socket's first transition, and a story at its address:
		 * the socket that story was about ended in a transition no
		 * program ran for, and the kernel gave its memory to this one.
		 * Those transitions are lost (counted); the old story still
		 * ends, as unknown, and this is a new connection. */
		count(ST_CNT_STALE, slot);
		vanished(ctx, s, now, slot);
		known = story_new(s, sk, old, new, now, slot);
	}

	/* The tuple, as it is now: a client's port is chosen after SYN_SENT. */
	s->family = family == ST_AF_INET6 ? 6 : 4;
	s->sport = sport;
	s->dport = dport;
#ifdef ST_RAW_TP
	/* the raw front end read them onto its stack already */
	__builtin_memcpy(s->saddr, saddr6, 16);
	__builtin_memcpy(s->daddr, daddr6, 16);
#else
	/* helper copy: the verifier refuses loads through a moved ctx pointer */
	bpf_probe_read_kernel(s->saddr, 16, saddr6);
	bpf_probe_read_kernel(s->daddr, 16, daddr6);
#endif

	/* The accepted socket's first record, held back (below) until the
	 * tuple is known: it goes out now, with the time it happened. */
	if (si && si->held) {
		si->held = 0;
		emit_state(ctx, s, s->ts, TCP_LISTEN, TCP_SYN_RECV, 0, 0, ST_VIA_KERNEL,
			   ST_REASON_NONE, slot);
	}

	/* Owner: only connect() and listen() run in the owner's context. */
	if (new == TCP_SYN_SENT || new == TCP_LISTEN) {
		s->pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(&s->comm, sizeof(s->comm));
		s->owner_from = new == TCP_LISTEN ? ST_OWNER_LISTEN : ST_OWNER_CONNECT;
	} else if (!s->pid && old == TCP_LISTEN && new == TCP_SYN_RECV) {
		struct st_listener *l = find_listener(s->saddr, sport);
		if (l) {
			s->pid = l->pid;
			s->owner_from = ST_OWNER_LISTENER;
			__builtin_memcpy(s->comm, l->comm, ST_COMM_LEN);
		}
	}

	/* Time in the state left: known when we saw it begin, or from the
	 * seed of a socket older than us (then a lower bound). */
	__u64 in_old = known && now >= s->ts ? now - s->ts : 0;
	__u8 flags = (known ? ST_F_IN_OLD : 0) | (s->cur_lower ? ST_F_LOWER : 0);

	/* A closing socket whose timewait timer was armed just before, on
	 * this CPU, lives on as a timewait socket: TIME_WAIT, or FIN_WAIT2
	 * when the peer has not sent its FIN yet (tcp_fin_timeout). */
	if (new == TCP_CLOSE && (old == TCP_FIN_WAIT1 || old == TCP_FIN_WAIT2 ||
				 old == TCP_CLOSING) && ST_TW_HANDLER) {
		struct st_arm arm;
		if (take_arm(&arm, sport, dport, now)) {
			__u64 timer = arm.timer;
			__u8 sub = read_substate(timer);

			s->deadline = arm.expires;
			s->len_j = arm.expires - arm.now;
			/* the full socket's last chance: our FIN was acknowledged
			 * (FIN_WAIT2, or TIME_WAIT straight away); the peer's came
			 * if the timewait socket starts in TIME_WAIT */
			read_health(s, sk, 1, sub == TCP_TIME_WAIT);
			if (sub == TCP_TIME_WAIT) {
				leave(s, old, TCP_TIME_WAIT, now, slot);
				emit_state(ctx, s, now, old, TCP_TIME_WAIT, in_old, flags,
					   ST_VIA_TIMER, ST_REASON_NONE, slot);
			} else {
				/* still FIN_WAIT2, held by the timewait socket:
				 * no state changed, nothing to say */
				count(ST_CNT_HANDOFF, slot);
			}
			if (tws.update(&timer, s)) {
				count(ST_CNT_TW_FULL, slot);
			} else {
				follow(1);
				if (sub == TCP_FIN_WAIT2) {
					struct st_tuple t = {};
					tuple_of(&t, s);
					fw2_tuples.update(&t, &timer);
				}
			}
			forget_sock(sk);
			return 0;
		}
	}

#ifdef ST_OFF_TP_TOTAL_RETRANS
	/* a connect's SYN retransmissions: all it retransmitted so far */
	if (old == TCP_SYN_SENT)
		s->syn_retrans = read_u32_at(sk + ST_OFF_TP_TOTAL_RETRANS);
#endif
	int err = 0;
	if (new == TCP_CLOSE) {
		err = read_err(sk);
		/* LAST_ACK -> CLOSE is the ACK of our FIN; FIN_WAIT2 had it.
		 * CLOSE_WAIT, LAST_ACK and CLOSING came after the peer's FIN. */
		read_health(s, sk, old == TCP_LAST_ACK || old == TCP_FIN_WAIT2,
			    old == TCP_CLOSE_WAIT || old == TCP_LAST_ACK || old == TCP_CLOSING);
		if (!err && !(s->flags & ST_F_RST_RECV) && closing_with_reset(sk, old))
			s->flags |= ST_F_RST_SENT;
	}
	leave(s, old, new, now, slot);
	if (old == TCP_LISTEN && new == TCP_SYN_RECV && !dport) {
		/* Before Linux 6.15 (commit a3a128f611a9, "inet: consolidate
		 * inet_csk_clone_lock()") a child socket enters SYN_RECV
		 * before the peer's address and port are copied into it: the
		 * tracepoint shows remote 0.0.0.0:0 and, for a wildcard
		 * listener, local 0.0.0.0.  No peer has port 0, so hold the
		 * record until the socket's next transition (SYN_RECV->
		 * ESTABLISHED, in the same softirq), when the tuple is set. */
		s->held = 1;
	} else {
		emit_state(ctx, s, now, old, new, in_old, flags, ST_VIA_KERNEL,
			   ST_REASON_NONE, slot);
	}

	if (new == TCP_CLOSE) {
		emit_closed(ctx, s, now, err, ST_REASON_NONE, -1, slot);
		if (old == TCP_LISTEN) {
			struct st_lkey k = {};
			__builtin_memcpy(k.addr, s->saddr, 16);
			k.port = sport;
			struct st_listener *l = listeners.lookup(&k);
			/* sk 0: a listener older than us, entered from
			 * sock_diag at start (no address known): its owner's */
			if (l && (l->sk == sk || (!l->sk && l->pid == s->pid)))
				listeners.delete(&k);
		}
		if (old == TCP_LAST_ACK) {
			/* our ACK of a local peer's FIN: look for that peer's
			 * FIN_WAIT2 timewait socket, now in TIME_WAIT */
			struct st_tuple t = {};
			__builtin_memcpy(t.laddr, s->daddr, 16);
			__builtin_memcpy(t.raddr, s->saddr, 16);
			t.lport = dport;
			t.rport = sport;
			__u64 *timer = fw2_tuples.lookup(&t);
			if (timer) {
				__u64 tk = *timer;
				struct st_story *tw = tws.lookup(&tk);
				if (tw && tw->state == TCP_FIN_WAIT2 &&
				    read_substate(tk) == TCP_TIME_WAIT)
					tw_promote(ctx, tw, now, ST_VIA_PEER, slot);
			}
		}
		forget_sock(sk);
		return 0;
	}

	if (!si) {
		if (socks.update(&sk, s))
			count(ST_CNT_SOCKS_FULL, slot);
		else
			follow(1);
	}

	if (new == TCP_LISTEN) {
		struct st_lkey k = {};
		struct st_listener l = {};
		__builtin_memcpy(k.addr, s->saddr, 16);
		k.port = sport;
		l.sk = sk;
		l.pid = s->pid;
		__builtin_memcpy(l.comm, s->comm, ST_COMM_LEN);
		listeners.update(&k, &l);
	} else if (new == TCP_SYN_SENT) {
		__u64 id = bpf_get_current_pid_tgid();
		struct st_connect c = {};
		c.ts = now;
		c.sk = sk;
		tuple_of(&c.t, s);
		connecting.update(&id, &c);
	}
	return 0;
}

/* ---- tcp:tcp_receive_reset ------------------------------------------------- */

/* A reset came in: it ends the connection (set_state(CLOSE) follows) and
 * tells a refused connect or a reset connection from the rest. */
static __always_inline int on_receive_reset(__u64 sk)
{
	struct st_story *s = socks.lookup(&sk);
	if (s)
		s->flags |= ST_F_RST_RECV;
	return 0;
}

/* ---- syscalls:sys_exit_accept, sys_exit_accept4 -------------------------- */

#if defined(ST_OFF_TASK_FILES) && defined(ST_OFF_FILES_FDT) && defined(ST_OFF_FDT_FD) && \
    defined(ST_OFF_FDT_MAX) && defined(ST_OFF_FILE_PRIVATE) && defined(ST_OFF_SOCKET_SK)
#define ST_ACCEPT_OWNER 1
/* accept()'s new fd -> its socket: current->files->fdt->fd[fd] is the
 * file, whose private_data is the struct socket, whose sk is the socket the
 * story is kept under. */
static __always_inline __u64 fd_to_sk(long fd)
{
	if (fd < 0)
		return 0;
	__u64 files = read_u64_at(bpf_get_current_task() + ST_OFF_TASK_FILES);
	__u64 fdt = files ? read_u64_at(files + ST_OFF_FILES_FDT) : 0;
	if (!fdt || (__u64)fd >= read_u32_at(fdt + ST_OFF_FDT_MAX))
		return 0;
	__u64 fds = read_u64_at(fdt + ST_OFF_FDT_FD);
	__u64 file = fds ? read_u64_at(fds + (__u64)fd * 8) : 0;
	__u64 sock = file ? read_u64_at(file + ST_OFF_FILE_PRIVATE) : 0;
	return sock ? read_u64_at(sock + ST_OFF_SOCKET_SK) : 0;
}

/* The process that accept()s a connection owns it from then on: a
 * pre-fork server's worker, not the master that called listen().  Until
 * then it is the listener's.  (Another file at that fd, in a race with a
 * close() in another thread, leads to no story of a server: nothing.) */
static __always_inline int on_accept(long fd)
{
	__u64 sk = fd_to_sk(fd);
	struct st_story *s = sk ? socks.lookup(&sk) : 0;

	if (!s || s->role != ST_ROLE_SERVER)
		return 0;
	s->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(&s->comm, sizeof(s->comm));
	s->owner_from = ST_OWNER_ACCEPT;
	return 0;
}
#endif

/* A reset went out on a socket we follow (one sent after its CLOSE, by a
 * close() that aborts, is seen at the CLOSE: closing_with_reset()). */
static __always_inline int on_send_reset(__u64 sk)
{
	if (!sk)
		return 0;		/* a reset for no socket of ours */
	struct st_story *s = socks.lookup(&sk);
	if (s)
		s->flags |= ST_F_RST_SENT;
	return 0;
}

/* ---- timer:* on the timewait timer ---------------------------------------- */

static __always_inline int on_timer_start(void *ctx, __u64 timer, __u64 function,
					  __u64 expires, __u64 now)
{
	int zero = 0;

	if (!ST_TW_HANDLER || function != ST_TW_HANDLER) {
		settle_cancel(ctx, 0, ST_SLOT_TIMER);
		return 0;
	}
	settle_cancel(ctx, timer, ST_SLOT_TIMER);

	struct st_story *tw = tws.lookup(&timer);
	if (tw) {
		/* A re-arm extends the same timewait socket; the FIN that
		 * makes a FIN_WAIT2 one enter TIME_WAIT re-arms it. */
		tw->deadline = expires;
		if (tw->state == TCP_FIN_WAIT2 && read_substate(timer) == TCP_TIME_WAIT)
			tw_promote(ctx, tw, bpf_ktime_get_ns(), ST_VIA_TIMER, ST_SLOT_TIMER);
		return 0;
	}
	/* A new timewait socket: its set_state(CLOSE) follows on this CPU. */
	struct st_arms *arms = pending_arm.lookup(&zero);
	if (arms) {
		struct st_arm *a = &arms->slot[arms->next & (ST_ARMS - 1)];
		a->timer = timer;
		a->expires = expires;
		a->now = now;
		a->ts = bpf_ktime_get_ns();
		arms->next++;
	}
	return 0;
}

/* function: the timer's callback, or 0 when unknown (classic tracepoint) */
static __always_inline int on_timer_cancel(void *ctx, __u64 timer, __u64 function)
{
	int zero = 0;

	settle_cancel(ctx, 0, ST_SLOT_TIMER);
	/* most cancels are of other timers: skip the map lookup */
	if (function && function != ST_TW_HANDLER)
		return 0;
	struct st_story *tw = tws.lookup(&timer);
	if (!tw && function)
		tw = tw_adopt(timer);	/* one older than us? */
	if (!tw)
		return 0;

	/* Every end passes here, and so does the first half of a re-arm that
	 * moves the timer: decide at the next event on this CPU. */
	struct st_cancel *pc = pending_cancel.lookup(&zero);
	if (!pc)
		return 0;
	pc->timer = timer;
	pc->ts = bpf_ktime_get_ns();
	pc->jiffies = bpf_jiffies64();
	pc->substate = read_substate(timer);
	pc->expires = 0;
#ifdef ST_OFF_TIMER_EXPIRES
	bpf_probe_read_kernel(&pc->expires, sizeof(pc->expires),
			      (void *)(timer + ST_OFF_TIMER_EXPIRES));
#endif
	if (pc->jiffies >= tw->deadline) {
		pc->reason = ST_REASON_EXPIRED;
		return 0;
	}
	pc->reason = ST_REASON_KILLED;
	/* Reused by connect(): the same thread just went CLOSE->SYN_SENT
	 * toward the same peer, and that socket is still connecting (the
	 * 6.1 guest, slow under emulation, had a timewait socket killed 3 ms
	 * after its own connect() was through: not a reuse). */
	__u64 id = bpf_get_current_pid_tgid();
	struct st_connect *c = connecting.lookup(&id);
	struct st_story *cs = c ? socks.lookup(&c->sk) : 0;
	if (c && cs && cs->state == TCP_SYN_SENT && pc->ts - c->ts < ST_CONNECT_WINDOW_NS &&
	    c->t.rport == tw->dport &&
	    (c->t.lport == 0 || c->t.lport == tw->sport)) {
		pc->reason = ST_REASON_REUSED;
		connecting.delete(&id);
		return 0;
	}
	/* Reused by a SYN to our listener (the server side held TIME_WAIT). */
	if (find_listener(tw->saddr, tw->sport))
		pc->reason = ST_REASON_REUSED;
	return 0;
}

/* ---- attachment ------------------------------------------------------------ */

#ifdef ST_RAW_TP
/* Raw tracepoints: the kernel's recursion guard is per program, so a timer
 * program that a softirq interrupts no longer hides that softirq's TCP
 * transitions (a classic tracepoint program is skipped whenever any BPF
 * program runs on the CPU), and no trace record is built before we run:
 * the timer hooks fire for every timer on the host.  The arguments are the
 * tracepoint's TP_PROTO; struct fields are read at BTF offsets (ST_OFF_*),
 * the same fields the classic tracepoint copies out. */

static __always_inline __u64 timer_function(__u64 timer)
{
	__u64 f = 0;
	bpf_probe_read_kernel(&f, sizeof(f), (void *)(timer + ST_OFF_TIMER_FUNCTION));
	return f;
}

/* daddr, rcv_saddr, dport and family lie together at the start of struct
 * sock_common: one read gets them (tracer/bpf_backend.py checks the span). */
#define ST_SKC_SPAN	(ST_OFF_SKC_FAMILY + 2 - ST_OFF_SKC_DADDR)
#define ST_SKC(field)	(skc + ST_OFF_SKC_##field - ST_OFF_SKC_DADDR)

/* TP_PROTO(const struct sock *sk, const int oldstate, const int newstate) */
static __always_inline int raw_set_state(struct bpf_raw_tracepoint_args *ctx, int slot)
{
	__u64 sk = ctx->args[0];
	__u8 skc[ST_SKC_SPAN] = {}, saddr[16] = {}, daddr[16] = {};
	__u16 family, sport, dport;
	int old = ctx->args[1], new = ctx->args[2];

	/* old == new (a close() after shutdown()) is no transition */
	if (old == new) {
		count(ST_CNT_SELF, slot);
		return 0;
	}
	/* the filters first, at two reads; what they reject costs nothing more */
	bpf_probe_read_kernel(skc, sizeof(skc), (void *)(sk + ST_OFF_SKC_DADDR));
	__builtin_memcpy(&family, ST_SKC(FAMILY), 2);
	__builtin_memcpy(&dport, ST_SKC(DPORT), 2);
	/* ports in network order, as in struct inet_sock / sock_common */
	dport = __builtin_bswap16(dport);
	sport = __builtin_bswap16(read_u16(sk + ST_OFF_INET_SPORT));
	int out = filtered_out(sk, new, sport, dport, family);
	if (out && new != TCP_LISTEN && old != TCP_LISTEN)
		return 0;
	if (read_u16(sk + ST_OFF_SK_PROTOCOL) != 6 /* IPPROTO_TCP */)
		return 0;
	if (family == ST_AF_INET6) {
		bpf_probe_read_kernel(saddr, 16, (void *)(sk + ST_OFF_SKC_V6_RCV_SADDR));
		bpf_probe_read_kernel(daddr, 16, (void *)(sk + ST_OFF_SKC_V6_DADDR));
	} else {
		/* IPv4 as ::ffff:a.b.c.d, like the tracepoint's saddr_v6 */
		saddr[10] = saddr[11] = daddr[10] = daddr[11] = 0xff;
		__builtin_memcpy(saddr + 12, ST_SKC(RCV_SADDR), 4);
		__builtin_memcpy(daddr + 12, ST_SKC(DADDR), 4);
	}
	if (out) {
		listener_aside(sk, old, new, sport, saddr);
		return 0;
	}
	return on_set_state(ctx, sk, old, new, sport, dport, family, saddr, daddr, slot);
}

/* The kernel skips a program that its own tracepoint interrupts on the
 * same CPU: a softirq changes a TCP state while the program runs for a
 * process-context transition (close(), connect()), or just after, while
 * the kernel still counts it as running, and the softirq's transition is
 * lost.  So inet_sock_set_state has two programs, run in attach order: the
 * main one, which first pushes the transition's identity on a per-CPU
 * stack, and a backup (tracer/bpf_backend.py attaches it second), which
 * pops it when it is near the top, i.e. when the main program ran for this
 * transition, and otherwise asks main_ran() before doing the work itself.
 * TCP states change in process and softirq context only, so one of the two
 * programs is always free: the main one's recursion misses minus
 * ST_CNT_RECOVERED is what neither handled, and user space reports it.
 * That count stays exact as long as the backup never handles a transition
 * the main program handled too; when in doubt it does nothing, and a
 * transition both skipped is counted among those misses. */
struct st_running {
	__u64 sk;
	__u32 states;			/* old << 8 | new */
	__u32 pad;
};
struct st_stack {
	__u32 depth;
	__u32 in_backup;		/* the backup is running on this CPU */
	struct st_running top[4];	/* indexed depth & 3 */
};
BPF_PERCPU_ARRAY(set_state_stack, struct st_stack, 1);

RAW_TRACEPOINT_PROBE(inet_sock_set_state)
{
	int zero = 0;
	struct st_stack *st = set_state_stack.lookup(&zero);

	/* Not while the backup runs: a softirq that interrupts it has its own
	 * backup runs skipped, so its entries would never be popped. */
	if (st && !st->in_backup) {
		struct st_running *r = &st->top[st->depth & 3];
		r->sk = ctx->args[0];
		r->states = (__u32)ctx->args[1] << 8 | (__u32)ctx->args[2];
		st->depth++;
	}
	return raw_set_state(ctx, ST_SLOT_MAIN);
}

/* A transition not near the top of the stack: the main program was skipped
 * for it, or it ran and a softirq then came in while the kernel was
 * starting the backup, before in_backup was set: that softirq's transitions
 * were pushed and never popped (their backup runs were skipped), and enough
 * of them (seen: 14) push this one out of the ring.  What the main program
 * leaves in `socks` tells the two apart without a bound: it forgets a
 * socket that closes and records the state any other transition enters.
 * An untracked socket closing is the one doubt.  Unfiltered, that is a
 * socket older than us: taken as handled, and if the main program was in
 * fact skipped, counted among the misses.  With a port or family filter,
 * the sockets it rejects are untracked too and their closes common: those
 * are handled here, as before this check, and the filter drops them.
 * A full `socks` map (reported as such) also leaves a socket untracked.
 * A self-transition changes nothing: never handled here. */
static __always_inline int main_ran(__u64 sk, int old, int new)
{
	struct st_story *si = socks.lookup(&sk);

	if (old == new)
		return 1;
	if (new == TCP_CLOSE) {
#if defined(ST_FILTER_PORTS) || defined(ST_FILTER_FAMILY)
		return 0;
#else
		return !si;
#endif
	}
	return si && si->state == new;
}

int set_state_backup(struct bpf_raw_tracepoint_args *ctx)
{
	int zero = 0;
	struct st_stack *st = set_state_stack.lookup(&zero);

	if (!st)
		return 0;
	st->in_backup = 1;
	/* Usually the top; below it after such a softirq (the entries above
	 * are dead then, and go with it). */
	__u32 states = (__u32)ctx->args[1] << 8 | (__u32)ctx->args[2];
	int ret = 0, ran = 0;
#pragma unroll
	for (__u32 i = 1; i <= 4; i++) {
		struct st_running *r = &st->top[(st->depth - i) & 3];
		if (!ran && st->depth >= i && r->sk == ctx->args[0] && r->states == states) {
			st->depth -= i;
			ran = 1;
		}
	}
	if (!ran && !main_ran(ctx->args[0], ctx->args[1], ctx->args[2])) {
		count(ST_CNT_RECOVERED, ST_SLOT_BACKUP);
		ret = raw_set_state(ctx, ST_SLOT_BACKUP);
	}
	st->in_backup = 0;
	return ret;
}

/* TP_PROTO(struct timer_list *timer, unsigned long expires, ...) */
RAW_TRACEPOINT_PROBE(timer_start)
{
	__u64 timer = ctx->args[0];

	if (timers_idle())
		return 0;
	return on_timer_start(ctx, timer, timer_function(timer), ctx->args[1],
			      bpf_jiffies64());
}

/* TP_PROTO(struct timer_list *timer) */
RAW_TRACEPOINT_PROBE(timer_cancel)
{
	__u64 timer = ctx->args[0];

	if (timers_idle())
		return 0;
	return on_timer_cancel(ctx, timer, timer_function(timer));
}

RAW_TRACEPOINT_PROBE(timer_expire_entry)
{
	if (!timers_idle())
		settle_cancel(ctx, 0, ST_SLOT_TIMER);
	return 0;
}

/* TP_PROTO(struct sock *sk) */
RAW_TRACEPOINT_PROBE(tcp_receive_reset)
{
	return on_receive_reset(ctx->args[0]);
}

/* TP_PROTO(const struct sock *sk, const struct sk_buff *skb, ...) */
RAW_TRACEPOINT_PROBE(tcp_send_reset)
{
	return on_send_reset(ctx->args[0]);
}

#else /* classic tracepoints: the arguments come decoded in args */

#ifdef ST_TCP_SET_STATE
/* Linux 4.15 has only tcp:tcp_set_state (TCP only, no family field). */
TRACEPOINT_PROBE(tcp, tcp_set_state)
{
	__u16 family = args->saddr_v6[10] == 0xff && args->saddr_v6[11] == 0xff &&
		       !args->saddr_v6[0] ? ST_AF_INET : ST_AF_INET6;
	if (args->oldstate == args->newstate) {
		count(ST_CNT_SELF, ST_SLOT_MAIN);
		return 0;
	}
	if (filtered_out((__u64)args->skaddr, args->newstate, args->sport, args->dport, family)) {
		if (args->newstate == TCP_LISTEN || args->oldstate == TCP_LISTEN)
			listener_aside((__u64)args->skaddr, args->oldstate, args->newstate,
				       args->sport, args->saddr_v6);
		return 0;
	}
	return on_set_state(args, (__u64)args->skaddr, args->oldstate, args->newstate,
			    args->sport, args->dport, family,
			    args->saddr_v6, args->daddr_v6, ST_SLOT_MAIN);
}
#else
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
	if (args->protocol != 6 /* IPPROTO_TCP */)
		return 0;
	if (args->oldstate == args->newstate) {
		count(ST_CNT_SELF, ST_SLOT_MAIN);
		return 0;
	}
	if (filtered_out((__u64)args->skaddr, args->newstate, args->sport, args->dport,
			 args->family)) {
		if (args->newstate == TCP_LISTEN || args->oldstate == TCP_LISTEN)
			listener_aside((__u64)args->skaddr, args->oldstate, args->newstate,
				       args->sport, args->saddr_v6);
		return 0;
	}
	return on_set_state(args, (__u64)args->skaddr, args->oldstate, args->newstate,
			    args->sport, args->dport, args->family,
			    args->saddr_v6, args->daddr_v6, ST_SLOT_MAIN);
}
#endif

TRACEPOINT_PROBE(timer, timer_start)
{
	if (timers_idle())
		return 0;
	return on_timer_start(args, (__u64)args->timer, (__u64)args->function,
			      args->expires, args->now);
}

TRACEPOINT_PROBE(timer, timer_cancel)
{
	if (timers_idle())
		return 0;
	return on_timer_cancel(args, (__u64)args->timer, 0);
}

TRACEPOINT_PROBE(timer, timer_expire_entry)
{
	if (!timers_idle())
		settle_cancel(args, 0, ST_SLOT_TIMER);
	return 0;
}

TRACEPOINT_PROBE(tcp, tcp_receive_reset)
{
	return on_receive_reset((__u64)args->skaddr);
}

/* No tcp:tcp_send_reset here: since 6.10 its format has a field of a type
 * (enum sk_rst_reason) that older kernel headers, which bcc may be given,
 * do not define.  Classic tracepoints see a reset sent by a close() that
 * aborts (closing_with_reset) and not those sent while a socket lives. */
#endif /* ST_RAW_TP */

#ifdef ST_ACCEPT_OWNER
/* Classic tracepoints in both modes: a raw one would be sys_exit, run for
 * every system call on the host. */
TRACEPOINT_PROBE(syscalls, sys_exit_accept4)
{
	return on_accept(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept)
{
	return on_accept(args->ret);
}
#endif
