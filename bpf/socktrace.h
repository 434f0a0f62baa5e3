/* socktrace.h - the one definition of what the kernel side hands to user space.
 *
 * Included by socktrace.bpf.c; tracer/wire.py mirrors struct st_event and
 * tests/test_wire.py compiles this header to check that the two agree
 * (size and every offset).  Change both together.
 */
#ifndef SOCKTRACE_H
#define SOCKTRACE_H

#define ST_COMM_LEN 16

/* What a record is.  Only STATE records become output lines; HANDOFF tells
 * the connection table that a closing socket now lives on as a timewait
 * socket still in FIN_WAIT2 (no state changed, so nothing is printed). */
enum st_kind {
	ST_KIND_STATE   = 0,
	ST_KIND_HANDOFF = 1,
};

/* How pid/comm were found.  Transitions in softirq run in whatever task was
 * interrupted, so the owner is remembered from the one transition that runs
 * in the owner's own context and carried along, never taken from current. */
enum st_owner_from {
	ST_OWNER_UNKNOWN  = 0,	/* socket predates the tracer */
	ST_OWNER_CONNECT  = 1,	/* task that called connect() (CLOSE->SYN_SENT) */
	ST_OWNER_LISTEN   = 2,	/* task that called listen() (CLOSE->LISTEN) */
	ST_OWNER_LISTENER = 3,	/* accepted socket: its listener's owner */
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

enum st_flags {
	ST_F_IN_OLD  = 1,	/* in_old_ns is valid (we saw the old state begin) */
	ST_F_DERIVED = 2,	/* worked out from timers or the peer, not one
				 * sock:inet_sock_set_state hit of its own */
};

/* Kernel-side counters (per-CPU array indexes), read by user space. */
enum st_counter {
	ST_CNT_RINGBUF_LOST = 0,	/* transition records that did not fit the ring buffer */
	ST_CNT_SOCKS_FULL   = 1,	/* sockets whose timestamps/owner did not fit */
	ST_CNT_TW_FULL      = 2,	/* timewait sockets that could not be tracked */
	ST_CNT_DERIVED_LOST = 3,	/* ST_F_DERIVED records that did not fit */
	ST_CNT_DERIVED_SENT = 4,	/* ST_F_DERIVED records submitted (not a loss):
					 * lets user space split what it received */
	ST_CNT_RECOVERED    = 5,	/* transitions the kernel skipped the main
					 * program for and the backup one handled
					 * (not a loss: see "attachment") */
	ST_NR_COUNTERS      = 6,
};

struct st_event {
	__u64 ts_ns;		/* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the transition */
	__u64 skaddr;		/* struct sock *: the connection's identity */
	__u64 twaddr;		/* timewait timer holding it after close, else 0 */
	__u64 in_old_ns;	/* time spent in oldstate, valid with ST_F_IN_OLD */
	__u8  saddr[16];	/* local address; IPv4 as ::ffff:a.b.c.d */
	__u8  daddr[16];	/* remote address */
	__u32 pid;		/* owner tgid, 0 when unknown */
	__u16 sport;		/* local port, host order (0 before connect picks one) */
	__u16 dport;		/* remote port, host order */
	__u8  family;		/* 4 or 6 */
	__u8  oldstate;		/* TCP_* numbers, see tracer/states.py */
	__u8  newstate;
	__u8  owner_from;	/* enum st_owner_from */
	__u8  flags;		/* enum st_flags */
	__u8  reason;		/* enum st_reason */
	__u8  via;		/* enum st_via */
	__u8  kind;		/* enum st_kind */
	char  comm[ST_COMM_LEN];	/* owner's comm */
};

#endif /* SOCKTRACE_H */
