"""The sample app site: a guestbook (docs/apps.md).

    POST /entries   form field `text`: stores one line
    GET  /entries   every stored line, one per line, text/plain
    GET  /healthz   200 once the database answers

Contract of an onionstack app site: listen on $PORT; read DATABASE_URL (libpq URL with
sslmode=verify-full); answer the health path; `python -m guestbook migrate` creates or
upgrades the schema (idempotent, compatible with the previous release). It never logs or
stores the X-Onion-Circuit header. GUESTBOOK_BUILD names the build in a response header
(the lab's upgrade test runs two builds).
"""
__version__ = "1.0"
