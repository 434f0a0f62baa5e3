#!/usr/bin/env python3
"""Soak: socktrace under steady connection churn for a long time.

    sudo .venv/bin/python bench/soak.py [--minutes 30] [--rate 500] [--warmup 5]

What it does:

* creates a network namespace (``socktrace-soak-PID``, loopback up) and runs
  all churn inside it, so the TIME_WAIT sockets it leaves (60 s each, about
  rate x 60 at any time) never touch the host's own sockets or other tests;
  the namespace is deleted at the end, on failure too;
* starts the real CLI (``python -m tracer --backend bpf --summary``) with
  NDJSON on stdout into a pipe this harness reads, counting lines per record
  type (and, for ``closed`` records, per role) as a log shipper would;
  socktrace traces every namespace through ``sock:inet_sock_set_state``, so
  by default it gets a kernel port filter naming the soak's listener ports
  and the readiness probe's port: other engineers' storms on the host then
  neither load it nor count in its figures (``--all`` drops the filter);
* waits until a readiness probe (an RST-closed connection in the namespace)
  shows in the output;
* runs ``bench/storm.py`` (client-first close, IPv4, fixed ``--rate``) in the
  namespace, in chunks of at most ``--chunk`` seconds until ``--minutes`` of
  churn are done; every chunk is bounded by count and time;
* samples socktrace's VmRSS, VmHWM and CPU time (utime + stime) from /proc
  every ``--sample`` seconds (default 30);
* after the churn waits until the namespace holds no TIME_WAIT socket any
  more (``ss`` in the namespace, every 5 s, at most ``--tail-max`` s): a
  TIME_WAIT lasts 60-62 s, but one that a late segment hits (a retransmitted
  FIN) starts its 60 s again, so a fixed wait of 70 s is not enough; then
  waits ``--tail`` s more (default 5) for the last records, stops socktrace
  with SIGINT and reads its exit report from stderr;
* fits a least-squares slope (KiB/min) to the RSS samples taken after
  ``--warmup`` minutes, and checks: no ``lost`` record and "lost: none" in
  the exit report; ``closed`` records of the storm's connections ==
  2 x connections (one client and one server story each), exactly.

Writes the result as JSON (``--json``; default
bench/results/soak-YYYY-MM-DD.json) and a summary on stdout.  Exit status 0
when every check holds, 1 when one fails, 2 on a harness failure.
"""
import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
STORM = [PY, os.path.join(HERE, "storm.py")]
SOCKTRACE = [PY, "-m", "tracer"]
T0 = time.monotonic()

PROBE = r"""
import socket, struct, sys, time
lsn = socket.socket()
lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsn.bind(("127.0.0.1", int(sys.argv[1])))
lsn.listen(1)
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s, _ = lsn.accept()
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
c.close()
time.sleep(0.01)
s.close()
lsn.close()
"""


def log(msg):
    print("[soak %7.1fs] %s" % (time.monotonic() - T0, msg), file=sys.stderr, flush=True)


def proc_status(pid):
    """VmRSS and VmHWM (KiB) and CPU seconds (utime + stime) of a live process."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line[:5].lower()] = int(line.split()[1])
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    out["cpu_s"] = round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
    return out


def slope(points):
    """Least-squares slope of [(x, y)], and its standard error; None with < 3 points."""
    n = len(points)
    if n < 3:
        return None, None
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None, None
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    a = my - b * mx
    resid = sum((y - a - b * x) ** 2 for x, y in points)
    se = (resid / (n - 2) / sxx) ** 0.5
    return b, se


class Reader(threading.Thread):
    """Reads socktrace's NDJSON from the pipe and counts it."""

    def __init__(self, stream, storm_ports, probe_port, save=None):
        super().__init__(daemon=True)
        self.save = save
        self.stream = stream
        self.storm_ports = storm_ports
        self.probe_port = probe_port
        self.lock = threading.Lock()
        self.types = {}
        self.closed = {"client": 0, "server": 0, "listener": 0, "other": 0}
        self.closed_end = {}
        self.closed_reason = {}
        self.probe_seen = False
        self.probe_records = 0
        self.lost = []
        self.summary = None
        self.bad_lines = 0
        self.lines = 0
        self.bytes = 0

    def run(self):
        try:
            from orjson import loads
        except ImportError:                       # pragma: no cover
            loads = json.loads
        probe = b"%d" % self.probe_port
        save = open(self.save, "wb") if self.save else None
        for line in self.stream:
            if save is not None:
                save.write(line)
            self.bytes += len(line)
            self.lines += 1
            # the type is the first field: '{"type":"state",...'
            end = line.find(b'"', 9)
            t = line[9:end].decode("ascii", "replace") if line.startswith(b'{"type":"') else None
            with self.lock:
                self.types[t] = self.types.get(t, 0) + 1
            if t == "state":
                if not self.probe_seen and probe in line:
                    rec = loads(line)
                    if self.probe_port in (rec["lport"], rec["rport"]):
                        self.probe_seen = True
                continue
            try:
                rec = loads(line)
            except ValueError:
                self.bad_lines += 1
                continue
            if t == "closed":
                ports = (rec["lport"], rec["rport"])
                with self.lock:
                    if self.probe_port in ports:
                        self.probe_records += 1
                    elif rec["lport"] in self.storm_ports or rec["rport"] in self.storm_ports:
                        role = rec["role"] if rec["role"] in self.closed else "other"
                        self.closed[role] += 1
                        self.closed_end[rec["end"]] = self.closed_end.get(rec["end"], 0) + 1
                        r = str(rec["reason"])
                        self.closed_reason[r] = self.closed_reason.get(r, 0) + 1
            elif t == "lost":
                with self.lock:
                    self.lost.append(rec)
            elif t == "summary":
                self.summary = rec
        if save is not None:
            save.close()

    def snapshot(self):
        with self.lock:
            return {"lines": self.lines, "types": dict(self.types),
                    "closed": dict(self.closed), "lost": sum(r["count"] for r in self.lost)}


def netns_run(ns, argv, **kw):
    return subprocess.run(["ip", "netns", "exec", ns] + argv, **kw)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="churn duration (default 30)")
    p.add_argument("--rate", type=float, default=500.0, help="connections/s (default 500)")
    p.add_argument("--warmup", type=float, default=5.0,
                   help="minutes of samples left out of the slope (default 5)")
    p.add_argument("--sample", type=float, default=30.0, help="RSS sample interval, s (default 30)")
    p.add_argument("--chunk", type=float, default=300.0,
                   help="seconds per storm run (default 300, storm.py caps it at 600)")
    p.add_argument("--tail", type=float, default=15.0,
                   help="seconds to wait once the namespace has no TIME_WAIT left: two "
                        "reconciliations, which end a story whose socket went unseen "
                        "(default 15)")
    p.add_argument("--tail-max", type=float, default=300.0,
                   help="at most this long for the namespace's TIME_WAITs to end (default 300)")
    p.add_argument("--save", default=None,
                   help="also write socktrace's NDJSON to this file (large: ~400 bytes a record)")
    p.add_argument("--base-port", type=int, default=24000, help="first listener port (default 24000)")
    p.add_argument("--ports", type=int, default=4, help="listener ports (default 4)")
    p.add_argument("--all", action="store_true",
                   help="no kernel port filter: socktrace traces every connection on the host")
    p.add_argument("--json", default=None,
                   help="result file (default bench/results/soak-YYYY-MM-DD.json)")
    args = p.parse_args()
    if not 0 < args.minutes <= 24 * 60 or not 0 < args.rate <= 20000:
        p.error("--minutes in (0, 1440], --rate in (0, 20000]")
    if not 1 <= args.chunk <= 600:
        p.error("--chunk in [1, 600]")
    if os.geteuid() != 0:
        sys.exit("soak.py: needs root (eBPF and ip netns)")
    out_path = args.json or os.path.join(
        HERE, "results", "soak-%s.json" % datetime.date.today().isoformat())

    storm_ports = set(range(args.base_port, args.base_port + args.ports))
    probe_port = args.base_port + args.ports
    ns = "socktrace-soak-%d" % os.getpid()
    tracer = storm_proc = None
    result = {"config": vars(args).copy(), "netns": ns,
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        git = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        result["commit"] = git.stdout.strip() or None
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--short", "--", "tracer", "bpf"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        result["uncommitted"] = dirty.stdout.split("\n")[:-1]    # what ran besides the commit
    except OSError:
        result["commit"] = None

    def on_term(signum, frame):
        raise SystemExit("soak.py: signal %d" % signum)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    subprocess.run(["ip", "netns", "add", ns], check=True)
    rc = 2
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        argv = SOCKTRACE + ["--backend", "bpf", "--summary"]
        if not args.all:
            argv += ["--port", ",".join(str(x) for x in sorted(storm_ports | {probe_port}))]
        result["socktrace_argv"] = argv[1:]
        err_path = out_path[:-5] + ".stderr" if out_path.endswith(".json") else out_path + ".stderr"
        err_file = open(err_path, "wb")
        tracer = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err_file, cwd=ROOT,
                                  start_new_session=True,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        reader = Reader(tracer.stdout, storm_ports, probe_port, args.save)
        reader.start()
        log("socktrace pid %d: %s" % (tracer.pid, " ".join(argv[1:])))
        deadline = time.monotonic() + 120
        while not reader.probe_seen:
            if tracer.poll() is not None:
                raise SystemExit("socktrace exited at start-up (%d); see %s" % (tracer.returncode, err_path))
            if time.monotonic() > deadline:
                raise SystemExit("socktrace showed no probe connection within 120 s")
            netns_run(ns, [PY, "-c", PROBE, str(probe_port)], check=True, timeout=30)
            time.sleep(0.5)
        log("socktrace ready")

        samples = []
        t_ready = time.monotonic()

        def sample():
            s = proc_status(tracer.pid)
            s["t_s"] = round(time.monotonic() - t_ready, 1)
            s.update(reader.snapshot())
            samples.append(s)
            log("sample t=%.0fs rss=%d KiB hwm=%d KiB cpu=%.1fs lines=%d closed=%s lost=%d" % (
                s["t_s"], s["vmrss"], s["vmhwm"], s["cpu_s"], s["lines"], s["closed"], s["lost"]))

        sample()
        next_sample = t_ready + args.sample
        churn_end = t_ready + args.minutes * 60
        runs = []
        storm_ok = True
        while time.monotonic() < churn_end - 1 and storm_ok:
            secs = min(args.chunk, churn_end - time.monotonic())
            count = int(args.rate * secs) + 1
            cmd = STORM + ["--close", "client", "--family", "4", "--clients", "1",
                           "--rate", repr(args.rate), "--seconds", "%.3f" % secs,
                           "--count", str(count), "--base-port", str(args.base_port),
                           "--ports", str(args.ports), "--concurrency", "1024"]
            t_run = time.monotonic()
            storm_proc = subprocess.Popen(["ip", "netns", "exec", ns] + cmd,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            while storm_proc.poll() is None:
                now = time.monotonic()
                if now >= next_sample:
                    sample()
                    next_sample += args.sample
                if now > t_run + secs + 120:
                    storm_proc.kill()
                    storm_ok = False
                    log("storm overran its time by 120 s: killed")
                time.sleep(0.2)
            so, se = storm_proc.communicate()
            storm_proc = None
            try:
                st = json.loads(so)
            except ValueError:
                log("storm failed: %s" % se.decode(errors="replace")[-500:])
                storm_ok = False
                break
            st = {k: st.get(k) for k in ("connections", "completed", "failed", "seconds", "rate",
                                         "stopped_by", "errors", "unsettled",
                                         "listener_transitions")}
            st["wall_s"] = round(time.monotonic() - t_run, 2)
            runs.append(st)
            log("storm: %s" % st)
        churn_s = time.monotonic() - t_ready
        log("churn done after %.1f s; waiting for the namespace's TIME_WAITs to end" % churn_s)
        t_tail = time.monotonic()
        tail_end, next_check, tw_left = t_tail + args.tail_max, t_tail, None
        while time.monotonic() < tail_end:
            now = time.monotonic()
            if now >= next_sample:
                sample()
                next_sample += args.sample
            if now >= next_check:
                next_check = now + 5
                ss = netns_run(ns, ["ss", "-Htan", "state", "time-wait"], stdout=subprocess.PIPE,
                               text=True, timeout=60)
                tw_left = len(ss.stdout.splitlines())
                if tw_left == 0:
                    break
            time.sleep(0.2)
        result["tail_s"] = round(time.monotonic() - t_tail, 1)
        result["time_wait_left"] = tw_left
        log("TIME_WAIT sockets left in the namespace: %s after %.0f s" % (tw_left, result["tail_s"]))
        time.sleep(args.tail)
        sample()

        tracer.send_signal(signal.SIGINT)
        try:
            tracer.wait(60)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait()
            raise SystemExit("socktrace did not stop within 60 s of SIGINT")
        reader.join(30)
        err_file.close()
        with open(err_path, "rb") as f:
            report = f.read().decode(errors="replace")
        tracer_rc = tracer.returncode
        tracer = None

        # -- figures ------------------------------------------------------------
        conns = sum(r["completed"] or 0 for r in runs)
        failed = sum(r["failed"] or 0 for r in runs)
        storm_s = sum(r["seconds"] or 0 for r in runs)
        warm = [(s["t_s"] / 60, s["vmrss"]) for s in samples if s["t_s"] >= args.warmup * 60]
        b, se = slope(warm)
        b_all, se_all = slope([(s["t_s"] / 60, s["vmrss"]) for s in samples])
        lost = {}
        for r in reader.lost:
            lost[r["what"]] = lost.get(r["what"], 0) + r["count"]
        report_lost_line = [l.strip() for l in report.splitlines() if l.strip().startswith("lost:")]
        closed_storm = reader.closed["client"] + reader.closed["server"]
        checks = {
            "no_lost_records": not reader.lost,
            "report_lost_none": report_lost_line == ["lost: none"],
            "closed_equals_2x_connections": closed_storm == 2 * conns,
            "client_closed_equals_connections": reader.closed["client"] == conns,
            "server_closed_equals_connections": reader.closed["server"] == conns,
            "no_failed_connections": failed == 0,
            "churn_complete": storm_ok and churn_s >= args.minutes * 60 - 2,
            "socktrace_exit_0": tracer_rc == 0,
            "no_bad_lines": reader.bad_lines == 0,
            "no_time_wait_left": tw_left == 0,
        }
        result.update({
            "storm_runs": runs,
            "connections": conns, "failed": failed,
            "churn_wall_s": round(churn_s, 1),
            "storm_s": round(storm_s, 2),
            "rate_achieved": round(conns / storm_s, 1) if storm_s else None,
            "rate_over_wall": round(conns / churn_s, 1) if churn_s else None,
            "records": {"lines": reader.lines, "bytes": reader.bytes, "types": reader.types,
                        "closed_storm": dict(reader.closed), "closed_end": reader.closed_end,
                        "closed_tw_reason": reader.closed_reason,
                        "probe_closed_records": reader.probe_records,
                        "bad_lines": reader.bad_lines},
            "lost": lost, "exit_report_lost": report_lost_line,
            "summary_records": (reader.summary or {}).get("records"),
            "socktrace_rc": tracer_rc,
            "samples": samples,
            "rss_slope_kib_per_min": None if b is None else round(b, 3),
            "rss_slope_stderr": None if se is None else round(se, 3),
            "rss_slope_all_kib_per_min": None if b_all is None else round(b_all, 3),
            "warmup_samples_excluded": len(samples) - len(warm),
            "cpu_s_total": samples[-1]["cpu_s"],
            "checks": checks,
            "ok": all(checks.values()),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        })
        rc = 0 if result["ok"] else 1
    except SystemExit as e:
        result["error"] = str(e)
        log("failed: %s" % e)
        rc = 2
    finally:
        if storm_proc is not None and storm_proc.poll() is None:
            storm_proc.kill()
            storm_proc.wait()
        if tracer is not None and tracer.poll() is None:
            tracer.send_signal(signal.SIGINT)
            try:
                tracer.wait(60)
            except subprocess.TimeoutExpired:
                tracer.kill()
                tracer.wait()
        subprocess.run(["ip", "netns", "del", ns])
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        with open(out_path, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        log("result in %s" % out_path)

    if "samples" in result:
        print("soak: %.1f min churn at %s conn/s target: %d connections (%s conn/s over the storms' "
              "time, %s over wall time), %d failed" % (
                  result["churn_wall_s"] / 60, args.rate, result["connections"],
                  result["rate_achieved"], result["rate_over_wall"], result["failed"]))
        print("RSS after %.0f min warm-up: slope %s KiB/min (stderr %s), whole run %s KiB/min; "
              "first %d KiB, last %d KiB, peak %d KiB; CPU %.1f s" % (
                  args.warmup, result["rss_slope_kib_per_min"], result["rss_slope_stderr"],
                  result["rss_slope_all_kib_per_min"], result["samples"][0]["vmrss"],
                  result["samples"][-1]["vmrss"], max(s["vmhwm"] for s in result["samples"]),
                  result["cpu_s_total"]))
        print("closed records: client %d + server %d = %d for %d connections (x2 = %d); "
              "lost records: %s; exit report: %s" % (
                  result["records"]["closed_storm"]["client"],
                  result["records"]["closed_storm"]["server"],
                  result["records"]["closed_storm"]["client"] + result["records"]["closed_storm"]["server"],
                  result["connections"], 2 * result["connections"], result["lost"] or "none",
                  "; ".join(result["exit_report_lost"]) or "?"))
        print("checks: " + ", ".join("%s %s" % (k, "ok" if v else "FAILED")
                                      for k, v in result["checks"].items()))
    return rc


if __name__ == "__main__":
    sys.exit(main())
