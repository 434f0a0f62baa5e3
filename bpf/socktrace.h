/* socktrace.h - the one definition of what the kernel side hands to user space.
 *
 * Included by socktrace.bpf.c and tracer/_fmt.c; tracer/wire.py mirrors the
 * records and tests/test_wire.py compiles this header to check that the two
 * agree (size and every offset), and that every enum below is the one the
 * spec (tracer/spec.py) publishes.  Change them together.
 *
 * Every record starts with a __u32 kind; the ring buffer gives its length.
 */
#ifndef SOCKTRACE_H
#define SOCKTRACE_H

#define ST_COMM_LEN	16
#define ST_PATH_LEN	16	/* states a closed record lists (more: ST_F_PATH_CUT) */
#define ST_NR_STATES	16	/* spent[] and the histograms, by TCP state number */
#define ST_HIST_CONNECT_FAILED	15	/* the histogram of SYN_SENT->CLOSE (connects that
					 * failed); SYN_SENT's own is of those that got
					 * through.  No TCP state has this number. */

/* Per-state histograms of time spent: log-linear, ST_HIST_SUB buckets per
 * power of two (relative error of a bucket's middle < 1/(2*ST_HIST_SUB)). */
#define ST_HIST_SUB_BITS	5
#define ST_HIST_SUB		(1 << ST_HIST_SUB_BITS)
#define ST_HIST_BUCKETS		(64 * ST_HIST_SUB)

/* Own connection ids have this bit set; socket cookies never reach it. */
#define ST_CONN_OWN	(1ULL << 63)

enum st_kind {
	ST_KIND_STATE  = 1,	/* struct st_state: one transition */
	ST_KIND_CLOSED = 2,	/* struct st_closed: a connection's whole story */
};

/* How pid/comm were found.  Transitions in softirq run in whatever task was
 * interrupted, so the owner is remembered from the one transition that runs
 * in the owner's own context and carried along, never taken from current. */
enum st_owner_from {
	ST_OWNER_UNKNOWN  = 0,	/* socket predates the tracer, owner not found */
	ST_OWNER_CONNECT  = 1,	/* task that called connect() (CLOSE->SYN_SENT) */
	ST_OWNER_LISTEN   = 2,	/* task that called listen() (CLOSE->LISTEN) */
	ST_OWNER_LISTENER = 3,	/* accepted socket: its listener's owner */
	ST_OWNER_PROC     = 4,	/* found in /proc (socket older than the tracer) */
	ST_OWNER_ACCEPT   = 5,	/* the task that accept()ed it (syscalls:sys_exit_accept*) */
};

enum st_role {
	ST_ROLE_UNKNOWN  = 0,
	ST_ROLE_CLIENT   = 1,	/* it called connect() */
	ST_ROLE_SERVER   = 2,	/* accepted by a listener */
	ST_ROLE_LISTENER = 3,
};

/* Why a timewait socket ended (TIME_WAIT->CLOSE, or a FIN_WAIT2 held by one). */
enum st_reason {
	ST_REASON_NONE    = 0,
	ST_REASON_EXPIRED = 1,	/* its timer ran out */
	ST_REASON_REUSED  = 2,	/* a new connection took over the 4-tuple */
	ST_REASON_KILLED  = 3,	/* any other early end (RST, netns exit) */
};

/* Transitions the kernel never reports, worked out from the timewait timer. */
enum st_via {
	ST_VIA_KERNEL = 0,	/* straight from sock:inet_sock_set_state */
	ST_VIA_TIMER  = 1,	/* from timer:timer_start/timer_cancel on tw_timer */
	ST_VIA_PEER   = 2,	/* FIN_WAIT2->TIME_WAIT seen as the local peer's LAST_ACK->CLOSE */
};

/* How a connection ended, from what the kernel knew at its close. */
enum st_end {
	ST_END_NORMAL    = 0,	/* both FINs: through TIME_WAIT or LAST_ACK */
	ST_END_REFUSED   = 1,	/* a reset answered the SYN (ECONNREFUSED) */
	ST_END_TIMEOUT   = 2,	/* ETIMEDOUT, or a FIN_WAIT2 that timed out */
	ST_END_CANCELLED = 3,	/* closed by its owner while still connecting */
	ST_END_RESET     = 4,	/* a reset was sent or received */
	ST_END_ERROR     = 5,	/* another socket error (see error) */
	ST_END_ABORTED   = 6,	/* closed before both FINs, no reset or error seen */
	ST_END_UNKNOWN   = 7,	/* not seen: the kernel gave its memory to a new
				 * socket first (user space: or reconciliation
				 * found it gone) */
};

enum st_flags {
	ST_F_IN_OLD     = 1,	/* in_old_ns is valid */
	ST_F_LOWER      = 2,	/* the socket predates the tracer: times are lower
				 * bounds (or estimates, with ST_F_ESTIMATE) */
	ST_F_DERIVED    = 4,	/* worked out from timers or the peer, not one
				 * sock:inet_sock_set_state hit of its own */
	ST_F_RST_SENT   = 8,	/* closed: a reset went out (tcp:tcp_send_reset) */
	ST_F_RST_RECV   = 16,	/* closed: a reset came in (tcp:tcp_receive_reset) */
	ST_F_PATH_CUT   = 32,	/* closed: more states than ST_PATH_LEN */
	ST_F_ESTIMATE   = 64,	/* times of a socket older than the tracer are
				 * the kernel's estimate (TIME_WAIT's timer) */
	ST_F_HEALTH     = 128,	/* closed: the health fields were read */
};

/* A __u32 field whose value is not known (written as null): uid, syn_retrans */
#define ST_NONE_U32	0xffffffffu

/* Kernel-side counters (per-CPU array indexes), read by user space. */
enum st_counter {
	ST_CNT_RINGBUF_LOST = 0,	/* state records that did not fit the ring buffer */
	ST_CNT_SOCKS_FULL   = 1,	/* sockets whose story did not fit the map */
	ST_CNT_TW_FULL      = 2,	/* timewait sockets that could not be tracked */
	ST_CNT_DERIVED_LOST = 3,	/* ST_F_DERIVED records that did not fit */
	ST_CNT_CLOSED_LOST  = 4,	/* closed records that did not fit */
	ST_CNT_DERIVED_SENT = 5,	/* ST_F_DERIVED records submitted (not a loss):
					 * lets user space split what it received */
	ST_CNT_RECOVERED    = 6,	/* transitions the kernel skipped the main
					 * program for and the backup one handled
					 * (not a loss: see "attachment") */
	ST_CNT_SELF         = 7,	/* old == new hits: not transitions, dropped */
	ST_CNT_STATE_SENT   = 8,	/* state records submitted (not a loss) */
	ST_CNT_CLOSED_SENT  = 9,	/* closed records submitted (not a loss) */
	ST_CNT_HANDOFF      = 10,	/* X->CLOSE hits where a timewait socket goes
					 * on in FIN_WAIT2: no state changed, no
					 * record (not a loss) */
	ST_CNT_IMPOSSIBLE   = 11,	/* a state that would have ended before it
					 * began (clocks): taken as 0 ns, counted */
	ST_CNT_LOWER        = 12,	/* times in a state that are only lower bounds
					 * (sockets older than the tracer): kept out
					 * of the histograms, counted here */
	/* connections ended, by enum st_end: ST_CNT_END_NORMAL + end */
	ST_CNT_END_NORMAL    = 13,
	ST_CNT_END_REFUSED   = 14,
	ST_CNT_END_TIMEOUT   = 15,
	ST_CNT_END_CANCELLED = 16,
	ST_CNT_END_RESET     = 17,
	ST_CNT_END_ERROR     = 18,
	ST_CNT_END_ABORTED   = 19,
	ST_CNT_END_UNKNOWN   = 20,
	ST_CNT_STALE        = 21,	/* stories of sockets whose end no program saw:
					 * the kernel gave their memory to a new
					 * socket first; their last transitions are
					 * lost, their story ends as ST_END_UNKNOWN */
	ST_NR_COUNTERS      = 22,
};

/* One transition. */
struct st_state {
	__u32 kind;		/* ST_KIND_STATE */
	__u32 pid;		/* owner tgid, 0 when unknown */
	__u64 ts_ns;		/* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the transition */
	__u64 conn;		/* connection id: socket cookie, or ST_CONN_OWN | n */
	__u64 in_old_ns;	/* time spent in oldstate, valid with ST_F_IN_OLD */
	__u8  saddr[16];	/* local address; IPv4 as ::ffff:a.b.c.d */
	__u8  daddr[16];	/* remote address */
	__u16 sport;		/* local port, host order (0 before connect picks one) */
	__u16 dport;		/* remote port, host order */
	__u8  family;		/* 4 or 6 */
	__u8  oldstate;		/* TCP_* numbers, see tracer/states.py */
	__u8  newstate;
	__u8  owner_from;	/* enum st_owner_from */
	__u8  role;		/* enum st_role */
	__u8  flags;		/* enum st_flags */
	__u8  reason;		/* enum st_reason */
	__u8  via;		/* enum st_via */
	char  comm[ST_COMM_LEN];	/* owner's comm */
	/* where the socket lives, on every record (the same in st_closed) */
	__u64 cgroup;		/* its cgroup v2 id as the kernel records it
				 * (sk_cgrp_data: the creator's; an accepted
				 * socket's is its listener's), 0 unknown */
	__u32 netns;		/* its network namespace's inode, 0 unknown */
	__u32 uid;		/* its owner's uid (sk_uid), ST_NONE_U32 unknown */
};

/* A connection that ended: its whole story, as the kernel kept it. */
struct st_closed {
	__u32 kind;		/* ST_KIND_CLOSED */
	__u32 pid;
	__u64 ts_ns;		/* when it closed (CLOCK_MONOTONIC) */
	__u64 conn;
	__u64 start_ns;		/* when it began (ST_F_LOWER: when first seen) */
	__u64 spent[ST_NR_STATES];	/* ns spent in each state, by number */
	__u8  saddr[16];
	__u8  daddr[16];
	__u16 sport;
	__u16 dport;
	__s32 error;		/* the socket's error at close (an errno), 0 none */
	__u8  family;
	__u8  owner_from;
	__u8  role;
	__u8  flags;
	__u8  end;		/* enum st_end */
	__u8  reason;		/* enum st_reason, of a timewait end */
	__u8  path_len;		/* states in path (at most ST_PATH_LEN) */
	__u8  pad;
	__u8  path[ST_PATH_LEN];	/* the states it went through, in order */
	char  comm[ST_COMM_LEN];
	__u64 cgroup;		/* as in st_state */
	__u32 netns;
	__u32 uid;
	/* health, from struct tcp_sock at its last transition (ST_F_HEALTH) */
	__u64 bytes_acked;	/* bytes sent and acknowledged */
	__u64 bytes_received;
	__u32 segs_out;
	__u32 segs_in;
	__u32 retrans;		/* total_retrans: segments retransmitted */
	__u32 srtt_us;		/* smoothed RTT, us (srtt_us >> 3, as tcp_info) */
	__u32 rttvar_us;	/* its mean deviation, us (mdev_us >> 2) */
	__u32 syn_retrans;	/* connects: SYNs retransmitted (total_retrans when
				 * SYN_SENT ended); ST_NONE_U32: not a connect */
};

/* A connection's story so far, as the kernel keeps it: the value of the
 * `socks` map while its full socket lives and of `tws` once a timewait
 * socket holds it.  User space reads it for socket dumps and to reconcile
 * with the kernel's own socket list. */
struct st_story {
	__u64 conn;
	__u64 start_ns;			/* when it began, or was first seen */
	__u64 ts;			/* when its current state began */
	__u64 spent[ST_NR_STATES];	/* ns per state left so far */
	__u64 deadline;			/* timewait: timer expiry, jiffies */
	__u64 len_j;			/* timewait: timeout of the first arm */
	__u8  saddr[16];
	__u8  daddr[16];
	__u16 sport;
	__u16 dport;
	__u32 pid;
	__u32 uid;			/* as in st_state */
	__u8  family;
	__u8  owner_from;
	__u8  role;
	__u8  flags;			/* st_closed flags: LOWER, RST_RECV, ... */
	__u8  state;			/* current state (timewait: its substate) */
	__u8  cur_lower;		/* ts is a lower bound: older than us */
	__u8  path_len;
	__u8  held;			/* its LISTEN->SYN_RECV record waits for
					 * the peer's address (kernels < 6.15) */
	__u8  path[ST_PATH_LEN];
	char  comm[ST_COMM_LEN];
	__u64 cgroup;			/* as in st_state */
	__u32 netns;
	__u32 syn_retrans;		/* as in st_closed */
	/* health: see st_closed */
	__u64 bytes_acked;
	__u64 bytes_received;
	__u32 segs_out;
	__u32 segs_in;
	__u32 retrans;
	__u32 srtt_us;
	__u32 rttvar_us;
	__u32 pad2;
};
/* A socket older than the tracer, handed to the kernel by user space at
 * start (seeds map, keyed by socket cookie): what sock_diag and /proc know,
 * so that its first transition or its timewait end carries its story. */
struct st_seed {
	__u64 since_ns;		/* in its state since (CLOCK_MONOTONIC), lower bound */
	__u8  saddr[16];
	__u8  daddr[16];
	__u16 sport;
	__u16 dport;
	__u32 pid;
	__u8  family;
	__u8  owner_from;
	__u8  role;
	__u8  flags;		/* ST_F_LOWER, and ST_F_ESTIMATE when since_ns is
				 * the kernel's own figure (TIME_WAIT's timer) */
	__u8  state;		/* its state at start */
	__u8  pad[3];
	char  comm[ST_COMM_LEN];
	__u64 cgroup;		/* sock_diag's INET_DIAG_CGROUP_ID, 0 unknown */
	__u32 uid;		/* sock_diag's idiag_uid, ST_NONE_U32 unknown */
	__u32 netns;		/* the namespace whose dump it came from, for user
				 * space's reconciliation; the programs read the
				 * socket's own */
};

#endif /* SOCKTRACE_H */
