#!/usr/bin/env python3
"""What any restore of a data set through a controller pays besides Lifeboat's per-byte work
(`lifeboat-agent cpu-check`), measured the plainest way, for the restore's ceiling in
`scripts/bench`. Each prints one JSON object; only CPU (user + system) counts toward the ceiling.

`write SRC DST`: creating and writing SRC's files under DST. The directories and files are made
with SRC's names, sizes, modes and modification times, their bytes written from one buffer in
memory (nothing is read: `cp -a`'s CPU also counts reading the source), files over
`--direct-above` bytes past the page cache (`O_DIRECT`, 1 MiB aligned writes, as the agent
writes a file larger than a restore unit: `agent/src/restore/direct.rs`), the others through it;
then a `sync`. Prints files, bytes, wall_s, cpu_s.

`transport --ca CA --cert CERT --key KEY --client-cert CERT --client-key KEY DIR...`: moving the
stored packs over mutually-authenticated TLS. A server process reads every file under the
directories (1 MiB reads) and sends it over TLS 1.3 with a client certificate required; a client
process on loopback receives it into one buffer and drops it. No gRPC framing, no catalog, no
per-blob work: only what a controller-mediated restore cannot avoid (the controller reads the
packs and encrypts them for TLS, the agent's kernel receives them and the agent decrypts them).
OpenSSL (Python's `ssl`) negotiates the same AES-256-GCM suite as the controller and agent
(rustls with aws-lc-rs). Prints bytes, wall_s, server_cpu_s, client_cpu_s, cipher. Readiness is
the port the server prints after binding port 0; nothing sleeps.
"""

import argparse
import errno
import fcntl
import json
import mmap
import os
import resource
import socket
import ssl
import subprocess
import sys
import time

BUF = 1 << 20


def cpu_s():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def files_under(dirs):
    for d in dirs:
        for root, _, names in os.walk(d):
            for n in sorted(names):
                yield os.path.join(root, n)


def set_direct(fd, on):
    """Turns O_DIRECT on or off for `fd`; whether it is on (a filesystem may refuse it)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError:
        return False
    return on

def write_tree(src, dst, direct_above):
    """Makes SRC's tree under DST from one buffer (see the module doc); returns its JSON."""
    plan = []  # (relative path, size or None for a directory, mode, mtime_ns), parents first
    for root, dirs, names in os.walk(src):
        dirs.sort()
        for n in [None] + sorted(names):
            path = root if n is None else os.path.join(root, n)
            st = os.lstat(path)
            if n is None or os.path.isfile(path) and not os.path.islink(path):
                plan.append((os.path.relpath(path, src), None if n is None else st.st_size,
                             st.st_mode & 0o7777, st.st_mtime_ns))
    buf = mmap.mmap(-1, BUF)  # page-aligned, as O_DIRECT asks
    buf.write(os.urandom(BUF))
    view = memoryview(buf)
    os.sync()
    c0, t0 = cpu_s(), time.monotonic()
    files = total = 0
    dirs = []
    for rel, size, mode, mtime in plan:
        path = os.path.join(dst, rel)
        if size is None:
            os.makedirs(path, exist_ok=True)
            dirs.append((path, mode, mtime))
            continue
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        # As the agent does: O_DIRECT where the filesystem takes it, else through the page cache.
        direct = size > direct_above and set_direct(fd, True)
        try:
            left = size
            while left:
                n = min(left, BUF)
                # A direct write's length is a multiple of 4096: the tail is padded, then cut.
                want = -(-n // 4096) * 4096 if direct else n
                try:
                    if os.write(fd, view[:want]) != want:
                        raise OSError(errno.EIO, f"short write to {path}")
                except OSError as e:
                    if not direct or e.errno != errno.EINVAL:
                        raise
                    direct = set_direct(fd, False)
                    continue
                left -= n
            if size > direct_above:
                os.ftruncate(fd, size)
            os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)
        files += 1
        total += size
    for path, mode, mtime in reversed(dirs):
        os.chmod(path, mode)
        os.utime(path, ns=(mtime, mtime))
    os.sync()
    return {"files": files, "bytes": total, "wall_s": time.monotonic() - t0, "cpu_s": cpu_s() - c0}


def serve(a):
    """The controller's side: accept one client (certificate required), send every file, close."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(a.cert, a.key)
    ctx.load_verify_locations(a.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        print(s.getsockname()[1], flush=True)
        conn, _ = s.accept()
    c0 = cpu_s()
    sent = 0
    buf = bytearray(BUF)
    view = memoryview(buf)
    with ctx.wrap_socket(conn, server_side=True) as t:
        for path in files_under(a.dirs):
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    t.sendall(view[:n])
                    sent += n
    print(json.dumps({"bytes": sent, "cpu_s": cpu_s() - c0}), flush=True)


def receive(a):
    """The agent's side: start the server, connect with the client certificate, read to the end."""
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "transport", "--serve"] + sys.argv[2:],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if not line.strip().isdigit():
            sys.exit("restore_floor: the server did not start (its error is above)")
        port = int(line)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(a.ca)
        ctx.check_hostname = False  # the bench's server certificate names the controller, not 127.0.0.1
        ctx.load_cert_chain(a.client_cert, a.client_key)
        c0, t0 = cpu_s(), time.monotonic()
        got = 0
        buf = bytearray(BUF)
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port))) as t:
            cipher = t.cipher()[0]
            while True:
                try:
                    n = t.recv_into(buf)
                except ssl.SSLEOFError:  # the server closed without close_notify: the end
                    break
                if not n:
                    break
                got += n
        wall, client_cpu = time.monotonic() - t0, cpu_s() - c0
        report = server.stdout.readline()
    except BaseException:
        server.kill()  # it may wait for a client that failed before connecting or sending
        raise
    finally:
        server.wait()
    if server.returncode != 0 or not report:
        sys.exit(f"restore_floor: the server failed (exit {server.returncode}; its error is above)")
    srv = json.loads(report)
    if srv["bytes"] != got:
        sys.exit(f"restore_floor: the server sent {srv['bytes']} bytes, the client received {got}")
    print(json.dumps({"bytes": got, "wall_s": wall, "server_cpu_s": srv["cpu_s"],
                      "client_cpu_s": client_cpu, "cipher": cipher}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    w = sub.add_parser("write", help="create and write a tree's files (see above)")
    w.add_argument("--direct-above", type=int, default=4 << 20,
                   help="files larger than this are written with O_DIRECT (the agent's restore unit: 4 MiB)")
    w.add_argument("src")
    w.add_argument("dst")
    t = sub.add_parser("transport", help="send files over mTLS on loopback (see above)")
    t.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    t.add_argument("--ca", required=True, help="CA certificate both sides trust")
    t.add_argument("--cert", required=True, help="the server's certificate")
    t.add_argument("--key", required=True, help="the server's key")
    t.add_argument("--client-cert", required=True, help="the client's certificate")
    t.add_argument("--client-key", required=True, help="the client's key")
    t.add_argument("dirs", nargs="+", help="directories whose files are sent")
    a = ap.parse_args()
    if a.what == "write":
        print(json.dumps(write_tree(a.src, a.dst, a.direct_above)))
    elif a.serve:
        serve(a)
    else:
        receive(a)


if __name__ == "__main__":
    main()
