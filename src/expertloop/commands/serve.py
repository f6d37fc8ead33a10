"""``expertloop serve PROJECT``: the annotation project as a web service.

::

    expertloop serve PROJECT [--host 127.0.0.1] [--port 8000] [--image-root DIR ...]
                             [--files-dir DIR] [--secure-cookies] [--proxy]
                             [--log-level warning]

Users log in with the passwords set by ``expertloop store passwd`` (or by an
admin in the web admin page). Images are shown only from the ``--image-root``
folders (default: the project folder).

The server itself speaks plain HTTP: passwords, session cookies and images
cross the network in clear unless TLS terminates in front of it. For anything
beyond this machine, keep it on 127.0.0.1 and put an HTTPS reverse proxy on the
same host in front (``--secure-cookies --proxy``); never expose the plain-HTTP
port itself (``--host 0.0.0.0``) to other machines. See ``docs/web.md``.
"""

from __future__ import annotations

import argparse
import sys


def cmd_serve(args) -> int:
    try:
        from expertloop.web.app import WebConfig, serve
    except ImportError as exc:
        print(f"expertloop serve: error: {exc.name} is missing: install the web extra "
              "(pip install 'napari-expertloop[web]')", file=sys.stderr)
        return 2
    from expertloop.store import StoreError

    config = WebConfig(image_roots=args.image_root or (), secure_cookies=args.secure_cookies)
    try:
        serve(args.project, host=args.host, port=args.port, config=config,
              files_dir=args.files_dir, proxy=args.proxy, log_level=args.log_level)
    except StoreError as exc:
        print(f"expertloop serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("serve", help="serve an annotation project to web browsers",
                       description=__doc__,
                       epilog="examples:\n  expertloop serve lab-project\n"
                              "  expertloop serve lab-project --port 8080 --image-root /data/scans\n"
                              "  # for other machines: TLS terminates at a reverse proxy on this\n"
                              "  # host (nginx, Caddy) that forwards to 127.0.0.1:8000\n"
                              "  expertloop serve postgresql+psycopg://me@db/lab "
                              "--secure-cookies --proxy",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("project", help="project folder, SQLite file or database URL")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; "
                        "another address serves plain HTTP to the network: only for a "
                        "TLS proxy on another host of a trusted network)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--image-root", action="append", metavar="DIR",
                   help="folder whose images may be shown (repeatable; default: the "
                        "project folder)")
    p.add_argument("--files-dir", help="folder for mask files (default: project folder)")
    p.add_argument("--secure-cookies", action="store_true",
                   help="mark cookies Secure (set this behind an HTTPS proxy)")
    p.add_argument("--proxy", action="store_true",
                   help="trust X-Forwarded-Proto/For from a reverse proxy on 127.0.0.1 "
                        "(the proxy terminates TLS)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (info logs every request)")
    p.set_defaults(func=cmd_serve)
