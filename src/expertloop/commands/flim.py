"""``expertloop flim ...``: FLIM encoders and image recommendation from the shell.

::

    expertloop flim fit IMG... --markers M... [--spec arch.yaml] [--decoder pixel|unet|none] -o model
    expertloop flim segment model IMG... -o OUTDIR
    expertloop flim recommend IMG... --marker IMG M [--marker IMG M ...] [-k 3] [--json out.json]
    expertloop flim convert-markers IN OUT      # LIDS .txt <-> labels .tif

Markers are LIDS text files (``.txt``) or label images (0 unmarked, 1..K classes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _read_markers(path: str, shape=None):
    import numpy as np

    from expertloop.io import read_image
    from expertloop.io.flim_markers import read_lids_markers

    p = Path(path)
    mk = read_lids_markers(p) if p.suffix.lower() == ".txt" else np.asarray(read_image(p)[0].data)
    if shape is not None and tuple(mk.shape) != tuple(shape):
        raise ValueError(f"markers {p.name} have shape {mk.shape} but the image has shape {tuple(shape)}")
    return mk


def _read(path: str):
    import numpy as np

    from expertloop.io import read_image

    item = read_image(path)[0]
    if item.meta.get("rgb"):
        raise ValueError(f"{path}: RGB images are not supported by the FLIM commands; convert to grey first")
    return np.asarray(item.data)


def _printer():
    from expertloop.cli import _progress_printer

    return _progress_printer()


def cmd_fit(args: argparse.Namespace) -> int:
    from expertloop.engine.config import build, given_values
    from expertloop.engine.flim import (
        build_network,
        fit_encoder,
        fit_pixel_head,
        parse_spec,
        save_encoder,
        save_network,
        train_decoder,
    )
    from expertloop.engine.flim.params import FlimFit
    from expertloop.engine.jobs import run_job

    if len(args.images) != len(args.markers):
        raise ValueError(f"{len(args.images)} images but {len(args.markers)} marker files (one per image)")
    images = [_read(p) for p in args.images]
    cfg = build(FlimFit, given_values(args, FlimFit))
    spec = parse_spec(args.spec) if args.spec else cfg.spec()
    markers = [_read_markers(m, img.shape[-spec.ndim:]) for m, img in zip(args.markers, images)]
    enc, report = run_job(fit_encoder(images, markers, spec, seed=args.seed, device=args.device),
                          on_progress=_printer())
    print(file=sys.stderr)
    print(f"encoder fitted in {report.seconds:.2f} s: filters per layer {report.filters_per_layer}, "
          f"marker patches {report.patches_per_layer}")
    decoder = args.decoder or cfg.decoder
    if decoder == "none":
        path = save_encoder(args.output, enc)
    else:
        if decoder == "pixel":
            net = run_job(fit_pixel_head(enc, images, markers, seed=args.seed))
        else:
            net = build_network(enc, report.classes, "unet")
            run_job(train_decoder(net, images, markers, steps=cfg.steps, seed=args.seed), on_progress=_printer())
            print(file=sys.stderr)
        path = save_network(args.output, net)
    print(f"wrote {path}")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from expertloop.commands._batch import exit_code, run_batch_command
    from expertloop.engine.batch import expand_inputs, worker_cache
    from expertloop.engine.batch_tasks import OUTPUTS, _flim_network, flim_segment

    worker_cache(_flim_network, str(args.model), args.device)  # a bad model: one error line first
    files = expand_inputs(args.images)
    params = {"model": str(args.model), "device": args.device, "background_zero": args.background_zero}
    return exit_code(run_batch_command(args, flim_segment, files, OUTPUTS["flim"], params))


def cmd_recommend(args: argparse.Namespace) -> int:
    from expertloop.engine.config import build, given_values
    from expertloop.engine.flim import recommend_images
    from expertloop.engine.flim.params import FlimRecommend
    from expertloop.engine.jobs import run_job

    cfg = build(FlimRecommend, given_values(args, FlimRecommend))
    images = [_read(p) for p in args.images]
    names = [str(p) for p in args.images]
    markers = [None] * len(images)
    for img_path, mk_path in args.marker or []:
        matches = [i for i, n in enumerate(names) if n == img_path or Path(n).name == Path(img_path).name]
        if not matches:
            raise ValueError(f"--marker {img_path}: not one of the images given")
        i = matches[0]
        markers[i] = _read_markers(mk_path, images[i].shape)
    res = run_job(recommend_images(images, markers, args.spec or cfg.spec(), k=cfg.k, n_segments=cfg.n_segments,
                                   projection=cfg.projection, seed=args.seed), on_progress=_printer())
    print(file=sys.stderr)
    rec = res.recommendation
    print("marked:   " + ", ".join(Path(names[i]).name for i in rec.marked))
    print("nearest:  " + ", ".join(f"{Path(names[i]).name} ({rec.distance[i]:.3g})" for i in rec.nearest))
    print("farthest: " + ", ".join(f"{Path(names[i]).name} ({rec.distance[i]:.3g})" for i in rec.farthest))
    if args.json:
        data = {"images": names, "marked": rec.marked, "nearest": rec.nearest, "farthest": rec.farthest,
                "distance": [float(d) for d in rec.distance], "projection": res.projection,
                "points": res.points.tolist()}
        Path(args.json).write_text(json.dumps(data, indent=1), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    import numpy as np

    from expertloop.io import write_tiff
    from expertloop.io.flim_markers import write_lids_markers

    mk = _read_markers(args.input)
    if Path(args.output).suffix.lower() == ".txt":
        write_lids_markers(args.output, mk)
    else:
        write_tiff(args.output, mk.astype(np.int32), {"name": Path(args.output).stem})
    print(f"wrote {args.output} ({int((mk > 0).sum())} marked pixels)")
    return 0


def add_commands(sub) -> None:
    from expertloop.commands._batch import INPUTS_HELP, add_batch_arguments
    from expertloop.engine.config import add_arguments
    from expertloop.engine.flim.params import FlimFit, FlimRecommend

    p = sub.add_parser("flim", help="FLIM: encoders learnt from markers, image recommendation")
    fs = p.add_subparsers(dest="flim_command", metavar="STEP", required=True)

    s = fs.add_parser("fit", help="fit a FLIM encoder (and decoder) from images and markers")
    s.add_argument("images", nargs="+")
    s.add_argument("--markers", nargs="+", required=True, help="one marker file per image (.txt LIDS or labels)")
    s.add_argument("--spec", default=None, help="architecture (JSON/YAML file or text); replaces "
                   "--layers, --kernel-size, --filters and --pool-stride")
    add_arguments(s, FlimFit)
    s.add_argument("--decoder", choices=["pixel", "unet", "none"], default=None,
                   help=f"the decoder, or none (encoder only); absent: {FlimFit.decoder}")
    s.add_argument("-o", "--output", required=True, help="model path (writes .pt + .json)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default=None)
    s.set_defaults(func=cmd_fit, outputs={"output": "model"})

    s = fs.add_parser("segment", help="segment images with a saved FLIM network",
                      description="Write OUT/<image>_flim_labels.tif (int32 classes) per image.")
    s.add_argument("model", help="a FLIM network saved by 'flim fit' or the widget (.pt)")
    s.add_argument("images", nargs="+", help=INPUTS_HELP)
    s.add_argument("--background-zero", action="store_true", help="write class 1 as 0")
    add_batch_arguments(s, output_help="output folder (TIFF labels)")
    s.set_defaults(func=cmd_segment, outputs={"output": "folder"})

    s = fs.add_parser("recommend", help="recommend the next images to mark (no ground truth)")
    s.add_argument("images", nargs="+")
    s.add_argument("--marker", nargs=2, action="append", metavar=("IMAGE", "MARKERS"),
                   help="markers of an already marked image (repeatable)")
    s.add_argument("--spec", default=None, help="encoder architecture (JSON/YAML file or text); "
                   "replaces --filters")
    add_arguments(s, FlimRecommend)
    s.add_argument("--json", default=None, help="write distances, lists and 2D points here")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_recommend, outputs={"json": "file"})

    s = fs.add_parser("convert-markers", help="convert markers between LIDS .txt and a labels image")
    s.add_argument("input")
    s.add_argument("output")
    s.set_defaults(func=cmd_convert, outputs={"output": "file"})
