/* hist.h - log-linear histogram buckets for durations in nanoseconds.
 *
 * Values below ST_HIST_SUB each get their own bucket (bucket = ns).  Above,
 * each power of two [2^e, 2^(e+1)) is cut into ST_HIST_SUB equal sub-buckets:
 *
 *   e = floor(log2(ns))                       (e >= ST_HIST_SUB_BITS)
 *   bucket = (e - ST_HIST_SUB_BITS + 1) * ST_HIST_SUB
 *          + ((ns >> (e - ST_HIST_SUB_BITS)) & (ST_HIST_SUB - 1))
 *
 * so a bucket is 2^(e - ST_HIST_SUB_BITS) wide and its middle is within
 * 1/(2*ST_HIST_SUB) of any value in it.  The top octave (e = 63) ends at
 * (65 - ST_HIST_SUB_BITS) * ST_HIST_SUB - 1, below ST_HIST_BUCKETS for any
 * ST_HIST_SUB_BITS >= 1: no clamp is needed (checked at compile time below).
 * tracer/hist.py is the same function in Python; tests/test_hist.py compiles
 * this header on the host and checks that the two agree.
 *
 * Use, in a bcc program (cflags -I<bpf dir>), or host C with -I<bpf dir>:
 *   #include "socktrace.h"   (optional: hist.h includes it)
 *   #include "hist.h"
 */
#ifndef SOCKTRACE_HIST_H
#define SOCKTRACE_HIST_H

/* socktrace.h needs __u8..__u64 first.  Unconditional: bcc's headers have
 * already pulled it in (the include guard makes it a no-op there), and bcc
 * does not define __BPF__ in the pass that parses this, so it cannot be the
 * test.  On the host it comes from linux-libc-dev. */
#include <linux/types.h>
#include "socktrace.h"

/* bcc gets it from the kernel's compiler_types.h, glibc from sys/cdefs.h;
 * plain host C may have neither. */
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

_Static_assert((65 - ST_HIST_SUB_BITS) * ST_HIST_SUB <= ST_HIST_BUCKETS,
	       "the top octave's last bucket must be below ST_HIST_BUCKETS");

/* No loops, calls or division, for the verifier: floor(log2) is a binary
 * search over 32/16/8/4/2/1-bit shifts, each step branch-free (the
 * comparison's 0/1 becomes the shift). */
static __always_inline __u32 st_hist_bucket(__u64 ns)
{
	__u64 v = ns;
	__u32 e = 0, s;

	if (ns < ST_HIST_SUB)
		return (__u32)ns;		/* exact buckets */
	s = (v > 0xffffffffULL) << 5; v >>= s; e |= s;
	s = (v > 0xffffULL) << 4;     v >>= s; e |= s;
	s = (v > 0xffULL) << 3;       v >>= s; e |= s;
	s = (v > 0xfULL) << 2;        v >>= s; e |= s;
	s = (v > 0x3ULL) << 1;        v >>= s; e |= s;
	e |= (__u32)(v > 0x1ULL);
	/* here e >= ST_HIST_SUB_BITS, so the shift below is not negative */
	return ((e - ST_HIST_SUB_BITS + 1) << ST_HIST_SUB_BITS) +
	       (__u32)((ns >> (e - ST_HIST_SUB_BITS)) & (ST_HIST_SUB - 1));
}

#endif /* SOCKTRACE_HIST_H */
