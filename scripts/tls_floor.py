#!/usr/bin/env python3
"""The plainest mutually-authenticated TLS transport of a controller's packs, for the restore's
ceiling in `scripts/bench`.

A restore through a controller cannot avoid three things per byte, whatever its protocol: the
controller reads the packs from its store, encrypts them for TLS and hands them to the kernel;
the agent's kernel receives them and the agent decrypts them. This script does only that:
a server process reads every file under the given directories (1 MiB reads) and sends it over
TLS 1.3 with a client certificate required; a client process on loopback receives it into one
buffer and drops it. No gRPC framing, no catalog, no per-blob work: the CPU it spends (both
processes, user + system) is the transport's part of a floor under any restore, as `cp -a` is
for creating and writing the files. OpenSSL (Python's `ssl`) negotiates the same AES-256-GCM
suite the controller and agent do (rustls with aws-lc-rs), whose assembly comes from the same
lineage.

    tls_floor.py --ca CA --cert CERT --key KEY --client-cert CERT --client-key KEY DIR...

prints one JSON object: bytes, wall_s, server_cpu_s, client_cpu_s, cipher. Readiness is the
port the server prints after binding port 0; nothing sleeps.
"""

import argparse
import json
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
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"] + sys.argv[1:],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if not line.strip().isdigit():
            sys.exit("tls_floor: the server did not start (its error is above)")
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
        srv = json.loads(server.stdout.readline())
    finally:
        server.wait()
    if server.returncode != 0 or srv["bytes"] != got:
        sys.exit(f"tls_floor: the server sent {srv['bytes']} bytes, the client received {got}")
    print(json.dumps({"bytes": got, "wall_s": wall, "server_cpu_s": srv["cpu_s"],
                      "client_cpu_s": client_cpu, "cipher": cipher}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ca", required=True, help="CA certificate both sides trust")
    ap.add_argument("--cert", required=True, help="the server's certificate")
    ap.add_argument("--key", required=True, help="the server's key")
    ap.add_argument("--client-cert", required=True, help="the client's certificate")
    ap.add_argument("--client-key", required=True, help="the client's key")
    ap.add_argument("dirs", nargs="+", help="directories whose files are sent")
    a = ap.parse_args()
    serve(a) if a.serve else receive(a)


if __name__ == "__main__":
    main()
