"""``--metrics ADDR:PORT``: a Prometheus endpoint beside the record stream.

Everything is read when Prometheus scrapes, from what already owns it,
never counted a second time on the hot path:

  socktrace_sockets{state,family}          sockets now (one sock_diag dump,
                                           as ss reads them; this netns)
  socktrace_transitions_total{old,new}     the backend's own tallies (the
                                           kernel's, for eBPF)
  socktrace_connections_closed_total{end}  connections ended, by how
  socktrace_state_duration_seconds{state}  time in each state, histogram:
                                           the backend's log-linear buckets
                                           summed at powers of two of ns,
                                           where none straddles, so counts
                                           are exact (le="2**e ns" counts
                                           durations below 2**e ns; ``_sum``
                                           from bucket middles: within 1/64)
  socktrace_connect_latency_seconds        the same for SYN_SENT
  socktrace_records_lost_total{what}       as the ``lost`` records say
  socktrace_records_total                  records handed to the output
  socktrace_records_unwritten_total        and not written (write failure)
  process_cpu_seconds_total, process_*     the reader's own CPU and memory

A backend whose memory only the reading loop may touch (the proc backend)
is asked through the loop (``serve()``, called every iteration); the eBPF
backend's tallies live in kernel maps and are read in the scrape's thread.
"""

import threading

from . import hist, sockdiag

# powers of two of nanoseconds: 2**10 (~1 us) .. 2**36 (~68.7 s, past the
# TIME_WAIT of 60-62 s); bpf/hist.h's buckets never straddle one
LE_POW2 = tuple(range(10, 37, 2))
_WAIT_S = 5.0


def parse_addr(text):
    """'127.0.0.1:9464', '[::1]:9464', ':9464' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected ADDR:PORT with a port 1-65535, e.g. 127.0.0.1:9464")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def buckets(counts):
    """[(le seconds, cumulative count)] at LE_POW2, and the approximate sum
    in seconds, from one histogram's bucket counts."""
    out, total, cum, k = [], 0.0, 0, 0
    edges = [1 << e for e in LE_POW2]
    for b, n in enumerate(counts):
        if not n:
            continue
        lo, hi = hist.bounds(b)
        while k < len(edges) and edges[k] <= lo:
            out.append((edges[k] / 1e9, cum))
            k += 1
        cum += n
        total += n * hist.value(b) / 1e9
    while k < len(edges):
        out.append((edges[k] / 1e9, cum))
        k += 1
    return out, cum, total


class Metrics:
    def __init__(self, addr, backend, loop_state):
        """*loop_state*: a callable giving the reading loop's own counts
        ({"records": n, "unwritten": n, "lost": {what: n}})."""
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
        from prometheus_client.process_collector import ProcessCollector

        self._families = (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)
        self.backend = backend
        self.loop_state = loop_state
        self._asked = threading.Event()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._answer = None
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.registry.register(self)
        host, port = addr
        self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    # -- the reading loop's side ----------------------------------------------
    def serve(self):
        """Answer a scrape that waits for the loop (cheap when none does)."""
        if self._asked.is_set():
            self._asked.clear()
            try:
                self._answer = self.backend.stats()
            except Exception as e:        # the scrape reports it, the run goes on
                self._answer = e
            self._ready.set()

    def _stats(self):
        if self.backend.threadsafe_dumps:
            return self.backend.stats()
        with self._lock:              # one scrape at a time asks the loop
            self._ready.clear()
            self._asked.set()
            if not self._ready.wait(_WAIT_S):
                raise TimeoutError("the reading loop did not answer within %g s" % _WAIT_S)
            ans = self._answer
        if isinstance(ans, Exception):
            raise ans
        return ans

    # -- the scrape's side (prometheus_client calls collect()) -----------------
    def collect(self):
        Counter, Gauge, Histogram = self._families
        source = self.backend.source
        st = self._stats()

        socks = Gauge("socktrace_sockets", "TCP sockets now, by state and family "
                      "(sock_diag, this network namespace)", labels=["state", "family"])
        counts = {}
        for s in sockdiag.dump():
            key = (s.state_name, "ipv%d" % s.family)
            counts[key] = counts.get(key, 0) + 1
        for (state, fam), n in sorted(counts.items()):
            socks.add_metric([state, fam], n)
        yield socks

        trans = Counter("socktrace_transitions", "TCP state transitions seen",
                        labels=["old", "new", "source"])
        for (old, new), n in sorted(st["transitions"].items()):
            trans.add_metric([old, new, source], n)
        yield trans

        ends = Counter("socktrace_connections_closed", "connections ended, by how "
                       "(the end field of closed records)", labels=["end", "source"])
        for end, n in sorted(st.get("ends", {}).items()):
            ends.add_metric([end, source], n)
        yield ends

        durs = Histogram("socktrace_state_duration_seconds", "time spent in each TCP "
                         "state, by the state left", labels=["state", "source"])
        for state, counts_ in st["durations"].items():
            b, n, total = buckets(counts_)
            durs.add_metric([state, source], [(repr(le), c) for le, c in b] +
                            [("+Inf", n)], total)
        yield durs

        conn = Histogram("socktrace_connect_latency_seconds", "time from connect() to "
                         "ESTABLISHED or failure (time in SYN_SENT)", labels=["source"])
        b, n, total = buckets(st["durations"].get("SYN_SENT", [0] * hist.BUCKETS))
        conn.add_metric([source], [(repr(le), c) for le, c in b] + [("+Inf", n)], total)
        yield conn

        loop = self.loop_state()
        lost = Counter("socktrace_records_lost", "records lost, as the lost records say",
                       labels=["what"])
        for what, n in sorted(loop["lost"].items()):
            lost.add_metric([what], n)
        yield lost
        rec = Counter("socktrace_records", "records received from the backend")
        rec.add_metric([], loop["records"])
        yield rec
        unw = Counter("socktrace_records_unwritten", "records not written after a "
                      "write failure")
        unw.add_metric([], loop["unwritten"])
        yield unw

