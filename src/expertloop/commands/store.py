"""``expertloop store ...``: annotation projects from the command line.

::

    expertloop store init PROJECT --admin ada
    expertloop store user PROJECT bob --as ada [--role annotator] [--expertise cardio,us]
    expertloop store template PROJECT kind --type label --labels normal,abnormal --as ada
    expertloop store collection PROJECT scans --template kind --images 'data/*.tif' --as ada
    expertloop store assign PROJECT scans bob --as ada
    expertloop store report PROJECT scans --as ada [--json]
    expertloop store search PROJECT --as ada [--label X] [--annotator bob] [--tag T]
                                    [--where modality=US] [--agreement disagree]
    expertloop store missing PROJECT scans --as bob
    expertloop store export PROJECT scans --format csv|coco|masks -o OUT --as ada
    expertloop store import PROJECT scans FILE --format csv|coco|masks --as ada
    expertloop store upgrade PROJECT
    expertloop store passwd PROJECT bob [--as ada] [--password-stdin]
    expertloop store token PROJECT --as bob [--name script] [--days 30] [--revoke ID]

``passwd`` without ``--as`` sets a user's own password (whoever can write the
project's database can do that anyway); with ``--as ADMIN`` it sets an initial
password that the user must change at first login.

PROJECT is a project folder, a SQLite file or a database URL
(``postgresql+psycopg://user@host/db``).
"""

from __future__ import annotations

import argparse
import sys

from expertloop.commands._cli import emit


def _open(args, create: bool = False):
    from expertloop.store import Store

    kw = {"files_dir": args.files_dir} if getattr(args, "files_dir", None) else {}
    if create:
        return Store.create(args.project, admin=args.admin, **kw)
    return Store.open(args.project, upgrade=getattr(args, "upgrade", False), **kw)


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _run(fn):
    """Wrap a command: store errors become a message and exit code 2."""

    def wrapped(args: argparse.Namespace) -> int:
        from expertloop.store import StoreError

        try:
            return fn(args)
        except StoreError as exc:
            print(f"expertloop store: error: {exc}", file=sys.stderr)
            return 2

    return wrapped


def cmd_init(args) -> int:
    from expertloop.store import NotFound

    with _open(args, create=True) as st:
        try:
            made = st.user(args.admin).role == "admin"
        except NotFound:
            made = False
        if not made:  # the project existed: Store.create adds the first admin only
            admins = ", ".join(u.name for u in st.users() if u.role == "admin")
            print(f"expertloop store: error: {st.url_safe} already exists with admin(s) {admins}; "
                  f"{args.admin} was not added (an admin can add users with "
                  f"'expertloop store user {args.project} {args.admin} --role admin --as ADMIN')",
                  file=sys.stderr)
            return 2
        print(f"project ready: {st.url_safe} (schema {st.schema_version()}, "
              f"admin {args.admin})")
    return 0


def cmd_upgrade(args) -> int:
    args.upgrade = True
    with _open(args) as st:
        print(f"{st.url_safe}: schema version {st.schema_version()}")
    return 0


def cmd_user(args) -> int:
    with _open(args) as st:
        st.add_user(args.as_user, args.name, args.role, _split(args.expertise))
    print(f"added {args.role} {args.name}")
    return 0


def _read_password(args) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    import getpass

    first = getpass.getpass(f"new password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit("expertloop store: error: the passwords differ")
    return first


def cmd_passwd(args) -> int:
    from expertloop.store import auth

    password = _read_password(args)
    with _open(args) as st:
        auth.set_password(st, args.as_user, args.name, password)
    kind = "initial password (to be changed at first login)" if args.as_user else "password"
    print(f"set the {kind} of {args.name}")
    return 0


def cmd_token(args) -> int:
    from datetime import timedelta

    from expertloop.store import auth

    with _open(args) as st:
        if args.revoke is not None:
            auth.revoke_token(st, args.as_user, args.revoke)
            print(f"revoked token {args.revoke}")
            return 0
        days = timedelta(days=args.days) if args.days else None
        print(auth.create_token(st, args.as_user, args.user, name=args.name or "",
                                expires_in=days))
    print("keep this token secret: it is shown only once", file=sys.stderr)
    return 0


def cmd_template(args) -> int:
    with _open(args) as st:
        st.add_template(args.as_user, args.name, args.type, _split(args.labels))
    print(f"added template {args.name} ({args.type})")
    return 0


def cmd_collection(args) -> int:
    from expertloop.store.core import expand_images

    images = expand_images(args.images or [])
    with _open(args) as st:
        names = {c.name for c in st.collections(args.as_user)}
        if args.name in names:
            st.add_images(args.as_user, args.name, images)
        else:
            if not args.template:
                print("expertloop store: error: a new collection needs --template",
                      file=sys.stderr)
                return 2
            st.add_collection(args.as_user, args.name, args.template,
                              description=args.description, images=images)
        info = st.collection(args.as_user, args.name)
    print(f"collection {info.name}: {info.n_images} images, template {info.template}")
    return 0


def cmd_assign(args) -> int:
    with _open(args) as st:
        for user in args.users:
            st.assign(args.as_user, args.collection, user)
    print(f"assigned {', '.join(args.users)} to {args.collection}")
    return 0


def cmd_report(args) -> int:
    from expertloop.store import format_report

    with _open(args) as st:
        rep = st.report(args.as_user, args.collection)
    emit(args, rep, [format_report(rep)])
    return 0


def cmd_search(args) -> int:
    where = {}
    for item in args.where or []:
        if "=" not in item:
            print(f"expertloop store: error: --where needs key=value, got {item!r}",
                  file=sys.stderr)
            return 2
        k, v = item.split("=", 1)
        where[k] = v
    with _open(args) as st:
        recs = st.search(args.as_user, collection=args.collection, label=args.label,
                         annotator=args.annotator, tag=args.tag, where=where or None,
                         task=args.task, source=args.source, agreement=args.agreement,
                         limit=args.limit)
    emit(args, [{"collection": r.collection, "uri": r.uri, "annotator": r.annotator, "label": r.label,
                 "source": r.source, "value": r.value, "updated_at": r.updated_at.isoformat()} for r in recs],
         [f"{r.collection}\t{r.uri}\t{r.annotator}\t{r.label}\t{r.source}" for r in recs])
    print(f"{len(recs)} annotation(s)", file=sys.stderr)
    return 0


def cmd_missing(args) -> int:
    with _open(args) as st:
        missing = st.missing_images(args.as_user, args.collection)
    emit(args, [m.uri for m in missing], [m.uri for m in missing])
    print(f"{len(missing)} missing image(s)", file=sys.stderr)
    return 1 if missing else 0


def cmd_export(args) -> int:
    from expertloop.store import exchange

    with _open(args) as st:
        if args.format == "csv":
            n = exchange.export_csv(st, args.as_user, args.collection, args.output)
        elif args.format == "coco":
            n = len(exchange.export_coco(st, args.as_user, args.collection,
                                         args.output)["annotations"])
        else:
            n = len(exchange.export_masks(st, args.as_user, args.collection, args.output))
    print(f"wrote {n} annotation(s) to {args.output}")
    return 0


def cmd_import(args) -> int:
    from expertloop.store import exchange

    with _open(args) as st:
        if args.format == "csv":
            n = exchange.import_csv(st, args.as_user, args.collection, args.file,
                                    add_images=args.add_images)
        elif args.format == "coco":
            n = exchange.import_coco(st, args.as_user, args.collection, args.file,
                                     add_images=args.add_images, on_existing=args.on_existing)
        else:
            n = exchange.import_masks(st, args.as_user, args.collection, args.file)
    print(f"imported {n} annotation(s) into {args.collection}")
    return 0


def add_commands(sub) -> None:
    from expertloop.commands._cli import action, add_json

    p = sub.add_parser("store", help="annotation projects: users, collections, annotations",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ss = p.add_subparsers(dest="store_command", metavar="STORE_COMMAND", required=True)

    def cmd(name, fn, help, examples, admin_as=True, as_required=True):
        c = action(ss, name, help, [f"expertloop store {e}" for e in examples])
        c.add_argument("project", help="project folder, SQLite file or database URL")
        c.add_argument("--files-dir", help="folder for mask files (default: project folder)")
        if admin_as:
            c.add_argument("--as", dest="as_user", required=as_required,
                           help="who you are (a user of the project)")
        c.set_defaults(func=_run(fn))
        return c

    # literals (the same as expertloop.store.models) so that building the parser
    # does not import SQLAlchemy; the service layer validates again
    ROLES, TASK_TYPES = ("admin", "annotator"), ("label", "points", "contour", "mask")

    c = cmd("init", cmd_init, "create a project (and its first admin)",
            ["init lab-project --admin ada", "init postgresql+psycopg://me@db/lab --admin ada"], admin_as=False)
    c.add_argument("--admin", required=True, help="name of the first admin")
    cmd("upgrade", cmd_upgrade, "migrate a project to this version's schema", ["upgrade lab-project"],
        admin_as=False)
    c = cmd("user", cmd_user, "add a user (admins)",
            ["user lab-project bob --as ada", "user lab-project cy --role admin --expertise cardio,us --as ada"])
    c.add_argument("name", help="the new user's name")
    c.add_argument("--role", choices=ROLES, default="annotator", help="admin or annotator (default annotator)")
    c.add_argument("--expertise", help="comma-separated tags")
    c = cmd("passwd", cmd_passwd, "set a password (your own, or an initial one as admin)",
            ["passwd lab-project bob", "passwd lab-project bob --as ada --password-stdin < initial.txt"],
            as_required=False)
    c.add_argument("name", help="whose password")
    c.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    c = cmd("token", cmd_token, "create or revoke an API token for scripts",
            ["token lab-project --as bob --name nightly --days 30", "token lab-project --as bob --revoke 3"])
    c.add_argument("--user", help="for another user (admins)")
    c.add_argument("--name", help="what the token is for")
    c.add_argument("--days", type=float, help="expire after this many days")
    c.add_argument("--revoke", type=int, metavar="ID", help="revoke token ID instead")
    c = cmd("template", cmd_template, "add a task template (admins)",
            ["template lab-project kind --type label --labels normal,abnormal --as ada",
             "template lab-project cells --type points --as ada"])
    c.add_argument("name", help="template name")
    c.add_argument("--type", choices=TASK_TYPES, required=True, help="what an annotation is")
    c.add_argument("--labels", help="comma-separated label set")
    c = cmd("collection", cmd_collection, "add a collection or images to it (admins)",
            ["collection lab-project scans --template kind --images 'data/*.tif' --as ada",
             "collection lab-project scans --images more/*.tif --as ada"])
    c.add_argument("name", help="collection name (an existing one gets the images added)")
    c.add_argument("--template", help="task template of a new collection")
    c.add_argument("--description", default="", help="free text shown to annotators")
    c.add_argument("--images", nargs="*", help="paths, globs or URLs")
    c = cmd("assign", cmd_assign, "assign annotators to a collection (admins)",
            ["assign lab-project scans bob cy --as ada"])
    c.add_argument("collection", help="collection name")
    c.add_argument("users", nargs="+", help="annotators to assign")
    c = cmd("report", cmd_report, "completeness and agreement of a collection (admins)",
            ["report lab-project scans --as ada", "report lab-project scans --as ada --json"])
    c.add_argument("collection", help="collection name")
    add_json(c)
    c = cmd("search", cmd_search, "find annotations",
            ["search lab-project --as ada --label abnormal --annotator bob",
             "search lab-project --as ada --where modality=US --agreement disagree --json"])
    c.add_argument("--collection", help="only this collection")
    c.add_argument("--label", action="append", help="only this label (repeatable: any of them)")
    c.add_argument("--annotator", help="only this annotator's annotations")
    c.add_argument("--tag", help="only images with this tag")
    c.add_argument("--where", action="append", help="image metadata key=value")
    c.add_argument("--task", help="template name or task type")
    c.add_argument("--source", choices=["manual", "model", "accepted-model"],
                   help="who made the annotation: a person, a model, or a model's answer a person accepted")
    c.add_argument("--agreement", choices=["agree", "disagree"],
                   help="only images where the annotators agree / disagree")
    c.add_argument("--limit", type=int, help="at most this many annotations")
    add_json(c)
    c = cmd("missing", cmd_missing, "list images whose file is gone (exit 1 if any)",
            ["missing lab-project scans --as bob", "missing lab-project scans --as bob --json"])
    c.add_argument("collection", help="collection name")
    add_json(c)
    c = cmd("export", cmd_export, "export annotations: csv, coco or masks (TIFF folder)",
            ["export lab-project scans --format csv -o scans.csv --as ada",
             "export lab-project scans --format masks -o masks/ --as ada"])
    c.add_argument("collection", help="collection name")
    c.add_argument("--format", choices=["csv", "coco", "masks"], required=True, help="what to write")
    c.add_argument("-o", "--output", required=True, help="file (csv, coco) or folder (masks) to write")
    c.set_defaults(outputs={"output": lambda a: "folder" if a.format == "masks" else "file"})
    c = cmd("import", cmd_import, "import annotations: csv, coco or masks (TIFF folder)",
            ["import lab-project scans labels.csv --format csv --as ada",
             "import lab-project scans boxes_coco.json --format coco --add-images --as ada"])
    c.add_argument("collection", help="collection name")
    c.add_argument("file", help="CSV or COCO file, or a masks folder (with masks.csv)")
    c.add_argument("--format", choices=["csv", "coco", "masks"], required=True, help="what FILE is")
    c.add_argument("--add-images", action="store_true",
                   help="index images not yet in the collection (admins)")
    c.add_argument("--on-existing", choices=["refuse", "replace", "merge"], default="refuse",
                   help="COCO: when an image already has shapes by the same annotator, refuse "
                        "the import (default), replace the saved shapes or merge them")
