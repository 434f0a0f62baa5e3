"""Make a known set of TCP sockets and copy /proc/net/tcp{,6} to OUT/net/.

Run as root in a fresh network namespace (see README.md):

    unshare -n sh -c 'ip link set lo up && sleep 2 && python3 capture_sample.py OUT'

OUT/capture.json gets the inodes seen with fstat() at capture time.
"""
import json, os, socket, sys, time

out = sys.argv[1]
info = {}
keep = []

def ino(s):
    return os.fstat(s.fileno()).st_ino

def listener(fam, addr, port, v6only=None, backlog=16):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    s.bind((addr, port)); s.listen(backlog); keep.append(s)
    return s

def connect(fam, src, sport, dst, dport):
    c = socket.socket(fam, socket.SOCK_STREAM)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind((src, sport)); c.connect((dst, dport)); keep.append(c)
    return c

L4 = listener(socket.AF_INET, "127.0.0.1", 47001)
L6 = listener(socket.AF_INET6, "::1", 47002)
LD = listener(socket.AF_INET6, "::", 47003, v6only=0)
info["listen4"] = ino(L4); info["listen6"] = ino(L6); info["listen_dual"] = ino(LD)

# ESTABLISHED v4, with 100 unread bytes at the server
c = connect(socket.AF_INET, "127.0.0.1", 47101, "127.0.0.1", 47001)
a, _ = L4.accept(); keep.append(a)
c.sendall(b"x" * 100)
info["est4_client"] = ino(c); info["est4_server"] = ino(a)

# ESTABLISHED v6
c = connect(socket.AF_INET6, "::1", 47102, "::1", 47002)
a, _ = L6.accept(); keep.append(a)
info["est6_client"] = ino(c); info["est6_server"] = ino(a)

# IPv4 client to the dual-stack listener: server side is IPv4-mapped in tcp6
c = connect(socket.AF_INET, "127.0.0.1", 47106, "127.0.0.1", 47003)
a, _ = LD.accept(); keep.append(a)
info["mapped_client"] = ino(c); info["mapped_server"] = ino(a)

# CLOSE_WAIT (server) / FIN_WAIT2 (client, half-closed, still owned)
c = connect(socket.AF_INET, "127.0.0.1", 47103, "127.0.0.1", 47001)
a, _ = L4.accept(); keep.append(a)
c.shutdown(socket.SHUT_WR)
info["closewait_server"] = ino(a); info["finwait2_client"] = ino(c)

# CLOSE_WAIT (server) / orphaned FIN_WAIT2 (client closed: inode 0)
c = connect(socket.AF_INET, "127.0.0.1", 47105, "127.0.0.1", 47001)
a, _ = L4.accept(); keep.append(a)
keep.remove(c); c.close()
info["closewait2_server"] = ino(a)

# TIME_WAIT: client closes first, then the server
c = connect(socket.AF_INET, "127.0.0.1", 47104, "127.0.0.1", 47001)
a, _ = L4.accept()
keep.remove(c); c.close(); time.sleep(0.1); a.close()

# TIME_WAIT over IPv6
c = connect(socket.AF_INET6, "::1", 47107, "::1", 47002)
a, _ = L6.accept()
keep.remove(c); c.close(); time.sleep(0.1); a.close()

# Not yet accepted: ESTABLISHED in the accept queue, no inode
c = connect(socket.AF_INET, "127.0.0.1", 47108, "127.0.0.1", 47001)
info["unaccepted_client"] = ino(c)

# SYN_SENT: a listener whose accept queue is full drops new SYNs
LF = listener(socket.AF_INET, "127.0.0.1", 47010, backlog=0)
connect(socket.AF_INET, "127.0.0.1", 47110, "127.0.0.1", 47010)
time.sleep(0.1)
c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
c.setblocking(False); c.bind(("127.0.0.1", 47109))
try:
    c.connect(("127.0.0.1", 47010))
except BlockingIOError:
    pass
keep.append(c); info["synsent"] = ino(c)

# A listener owned by uid 65534
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.setgid(65534); os.setuid(65534)
    s = listener(socket.AF_INET, "127.0.0.1", 47009)
    os.write(w, str(ino(s)).encode()); time.sleep(5); os._exit(0)
info["listen_nobody"] = int(os.read(r, 64))

time.sleep(0.3)
os.makedirs(os.path.join(out, "net"), exist_ok=True)
for name in ("tcp", "tcp6"):
    with open("/proc/net/" + name, "rb") as src, open(os.path.join(out, "net", name), "wb") as dst:
        dst.write(src.read())
info["clk_tck"] = os.sysconf("SC_CLK_TCK"); info["uname"] = os.uname().release
json.dump(info, open(os.path.join(out, "capture.json"), "w"), indent=1)
os.kill(pid, 9)
