# Client side of `cargo xtask bench l7` that needs TLS (xtask itself does not link OpenSSL, so
# that it builds before `cargo xtask setup` has installed libssl-dev). Run by xtask inside the
# client namespace as `python3 -c <this file> MODE ...`; prints one JSON object per result.
#
#   handshakes HOST PORT SECONDS THREADS  full TLS handshakes, then close, for SECONDS
#   resume HOST PORT                      does the server resume a session offered back to it?
#   idle HOST PORT COUNT THREADS TLS      COUNT keep-alive connections, one GET each, held open
#                                         until stdin closes (TLS: 0 plain HTTP, 1 HTTPS)
import json
import socket
import ssl
import sys
import threading
import time

# tls_cipher_policy_1_2 allows TLS 1.2 only; one fixed suite keeps the work per handshake the
# same whichever side's preference a server applies.
CIPHER = "ECDHE-RSA-AES128-GCM-SHA256"
REQUEST = b"GET / HTTP/1.1\r\nHost: bench.example\r\n\r\n"


def context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHER)
    return ctx


def handshakes(host, port, seconds, threads):
    # Full handshakes only: no session is ever passed to wrap_socket, so the ClientHello carries
    # an empty session ID and an empty ticket extension, and every connection is checked with
    # session_reused (SSL_session_reused) afterwards; a resumed one would be counted apart.
    ctx = context()
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    totals = {"handshakes": 0, "resumed": 0, "errors": 0, "first_error": None, "negotiated": None}

    def worker():
        full = resumed = errors = 0
        first_error = negotiated = None
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, port), timeout=5) as raw:
                    with ctx.wrap_socket(raw) as tls:
                        if tls.session_reused:
                            resumed += 1
                        else:
                            full += 1
                        negotiated = negotiated or f"{tls.version()} {tls.cipher()[0]}"
            except (OSError, ssl.SSLError) as e:
                errors += 1
                first_error = first_error or repr(e)
        with lock:
            totals["handshakes"] += full
            totals["resumed"] += resumed
            totals["errors"] += errors
            totals["first_error"] = totals["first_error"] or first_error
            totals["negotiated"] = totals["negotiated"] or negotiated

    started = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    totals["seconds"] = time.monotonic() - started
    print(json.dumps(totals), flush=True)


def resume(host, port):
    ctx = context()
    with socket.create_connection((host, port), timeout=5) as raw:
        with ctx.wrap_socket(raw) as tls:
            # TLS 1.2 sessions exist once the handshake is done; reading the reply first lets a
            # server send its ticket whenever it does.
            tls.sendall(REQUEST)
            read_response(tls)
            session = tls.session
    with socket.create_connection((host, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, session=session) as tls:
            print(json.dumps({"resumed": tls.session_reused}), flush=True)


def read_response(conn):
    """Reads one response with a Content-Length body (what every server here sends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise OSError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(f"unexpected response: {head[:80]!r}")
    while len(body) < length:
        chunk = conn.recv(4096)
        if not chunk:
            raise OSError("connection closed in the body")
        body += chunk


def idle(host, port, count, threads, tls):
    ctx = context() if tls else None
    held = []
    lock = threading.Lock()
    failures = []

    def opener(n):
        mine = []
        try:
            for _ in range(n):
                conn = socket.create_connection((host, port), timeout=10)
                if ctx is not None:
                    conn = ctx.wrap_socket(conn)
                conn.sendall(REQUEST)
                read_response(conn)
                mine.append(conn)
        except (OSError, ssl.SSLError) as e:
            failures.append(repr(e))
        with lock:
            held.extend(mine)

    shares = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
    pool = [threading.Thread(target=opener, args=(n,)) for n in shares]
    started = time.monotonic()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    print(json.dumps({"open": len(held), "seconds": time.monotonic() - started,
                      "first_error": failures[0] if failures else None}), flush=True)
    # Held until xtask has read the proxy's memory and closes our stdin.
    sys.stdin.read()
    for conn in held:
        conn.close()


def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "handshakes":
        handshakes(host, port, float(sys.argv[4]), int(sys.argv[5]))
    elif mode == "resume":
        resume(host, port)
    elif mode == "idle":
        idle(host, port, int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1")
    else:
        sys.exit(f"unknown mode {mode}")


main()
