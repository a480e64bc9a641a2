"""`python -m guestbook [serve|migrate]` (serve is the default)."""
from __future__ import annotations

import http.server
import os
import queue
import sys
from urllib.parse import parse_qs

import psycopg

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id bigserial PRIMARY KEY,
    text text NOT NULL CHECK (length(text) <= 2000 AND position(E'\\n' in text) = 0),
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
MAX_BODY = 16 * 1024


def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        sys.exit("guestbook: DATABASE_URL is not set")
    return url


def migrate() -> None:
    with psycopg.connect(database_url()) as conn:
        conn.execute(SCHEMA)
    print("guestbook: schema up to date", flush=True)


class Pool:
    """A few open connections shared by the request threads (taken and given back, so a
    request never waits for a TLS handshake); a broken one is dropped and the query tried
    once more on a fresh one (the database restarted, or was restored)."""

    def __init__(self, url: str, keep: int = 4) -> None:
        self.url = url
        self.idle: queue.LifoQueue = queue.LifoQueue(maxsize=keep)

    def _take(self) -> psycopg.Connection:
        try:
            conn = self.idle.get_nowait()
            if not conn.closed:
                return conn
        except queue.Empty:
            pass
        return psycopg.connect(self.url, autocommit=True)

    def _give(self, conn: psycopg.Connection) -> None:
        try:
            self.idle.put_nowait(conn)
        except queue.Full:
            conn.close()

    def run(self, query: str, params: tuple = ()) -> list[tuple]:
        for attempt in (1, 2):
            conn = self._take()
            try:
                cur = conn.execute(query, params)
                rows = cur.fetchall() if cur.description else []
            except psycopg.OperationalError:
                conn.close()
                if attempt == 2:
                    raise
                continue
            self._give(conn)
            return rows
        return []


def make_handler(pool: Pool, build: str):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "guestbook"
        sys_version = ""
        timeout = 10  # an idle kept-alive connection ends, so a stop never waits long for it

        def log_message(self, *args) -> None:  # no access log: readers are not recorded
            pass

        def reply(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Guestbook-Build", build)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            try:
                if path == "/healthz":
                    pool.run("SELECT 1")
                    return self.reply(200, "ok\n")
                if path == "/entries":
                    rows = pool.run("SELECT text FROM entries ORDER BY id")
                    return self.reply(200, "".join(f"{r[0]}\n" for r in rows))
            except psycopg.Error:
                return self.reply(503, "database unavailable\n")
            self.reply(404, "not found\n")

        def do_POST(self) -> None:  # noqa: N802
            if self.path.split("?", 1)[0] != "/entries":
                return self.reply(404, "not found\n")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self.reply(413, "too large\n")
            form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
            text = (form.get("text") or [""])[0].strip()
            if not text or "\n" in text or "\r" in text or len(text) > 2000:
                return self.reply(400, "give one line of text in the form field `text`\n")
            try:
                pool.run("INSERT INTO entries (text) VALUES (%s)", (text,))
            except psycopg.Error:
                return self.reply(503, "database unavailable\n")
            self.reply(201, "stored\n")

    return Handler


def serve() -> None:
    port = int(os.environ.get("PORT", "8080"))
    host = os.environ.get("GUESTBOOK_BIND", "0.0.0.0")  # inside its container; the unit publishes on 127.0.0.1
    build = os.environ.get("GUESTBOOK_BUILD", "1")
    server = http.server.ThreadingHTTPServer((host, port), make_handler(Pool(database_url()), build))
    # On SIGTERM (podman stop, a switch to a new release) the requests being served finish:
    # server_close() waits for their threads.
    server.daemon_threads = False
    server.block_on_close = True
    print(f"guestbook: build {build} listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: list[str]) -> None:
    command = argv[1] if len(argv) > 1 else "serve"
    if command == "migrate":
        migrate()
    elif command == "serve":
        serve()
    else:
        sys.exit(f"usage: python -m guestbook [serve|migrate] (not {command!r})")


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    main(sys.argv)
