"""``expertloop serve PROJECT``: the annotation project as a web service.

::

    expertloop serve PROJECT [--host 127.0.0.1] [--port 8000] [--image-root DIR ...]
                             [--files-dir DIR] [--secure-cookies] [--proxy]
                             [--log-level warning]

Users log in with the passwords set by ``expertloop store passwd`` (or by an
admin in the web admin page). Images are shown only from the ``--image-root``
folders (default: the project folder). Put it behind a TLS reverse proxy for
anything beyond localhost (``--secure-cookies --proxy``); see ``docs/web.md``.
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
                              "  expertloop serve postgresql+psycopg://me@db/lab --host 0.0.0.0 "
                              "--secure-cookies --proxy",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("project", help="project folder, SQLite file or database URL")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--image-root", action="append", metavar="DIR",
                   help="folder whose images may be shown (repeatable; default: the "
                        "project folder)")
    p.add_argument("--files-dir", help="folder for mask files (default: project folder)")
    p.add_argument("--secure-cookies", action="store_true",
                   help="mark cookies Secure (set this behind an HTTPS proxy)")
    p.add_argument("--proxy", action="store_true",
                   help="trust X-Forwarded-Proto/For from a reverse proxy on 127.0.0.1")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (info logs every request)")
    p.set_defaults(func=cmd_serve)
