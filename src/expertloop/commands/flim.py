"""``expertloop flim ...``: FLIM encoders and image recommendation from the shell.

::

    expertloop flim fit IMG... --markers M... [--spec arch.yaml] [--decoder pixel|unet|none] -o model
    expertloop flim segment model IMG... -o OUTDIR
    expertloop flim recommend IMG... --marker IMG M [--marker IMG M ...] [-k 3] [--json]
    expertloop flim convert-markers IN OUT      # LIDS .txt <-> labels .tif

Markers are LIDS text files (``.txt``) or label images (0 unmarked, 1..K classes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from expertloop.commands._cli import (
    add_package_export,
    add_package_import,
    batch_result,
    emit,
    package_args,
)


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
    fitted = (f"encoder fitted in {report.seconds:.2f} s: filters per layer {report.filters_per_layer}, "
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
    emit(args, {"model": str(path), "seconds": report.seconds, "filters_per_layer": report.filters_per_layer,
                "patches_per_layer": report.patches_per_layer, "decoder": decoder},
         [fitted, f"wrote {path}"])
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from expertloop.commands._batch import exit_code, run_batch_command
    from expertloop.engine.batch import expand_inputs, worker_cache
    from expertloop.engine.batch_tasks import OUTPUTS, _flim_network, flim_segment

    worker_cache(_flim_network, str(args.model), args.device)  # a bad model: one error line first
    files = expand_inputs(args.images)
    if args.tile < 1:
        raise ValueError("--tile must be at least 1")
    params = {"model": str(args.model), "device": args.device, "background_zero": args.background_zero,
              "tile": args.tile}
    report = run_batch_command(args, flim_segment, files, OUTPUTS["flim"], params)
    emit(args, batch_result(report))
    return exit_code(report)


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
    emit(args, {"images": names, "marked": rec.marked, "nearest": rec.nearest, "farthest": rec.farthest,
                "distance": [float(d) for d in rec.distance], "projection": res.projection,
                "points": res.points.tolist()}, [
        "marked:   " + ", ".join(Path(names[i]).name for i in rec.marked),
        "nearest:  " + ", ".join(f"{Path(names[i]).name} ({rec.distance[i]:.3g})" for i in rec.nearest),
        "farthest: " + ", ".join(f"{Path(names[i]).name} ({rec.distance[i]:.3g})" for i in rec.farthest),
    ])
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
    n = int((mk > 0).sum())
    emit(args, {"output": str(args.output), "marked_pixels": n}, [f"wrote {args.output} ({n} marked pixels)"])
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from expertloop.engine.flim import load_network
    from expertloop.engine.flim.bioimageio import export_flim_model

    net = load_network(args.model)
    path = export_flim_model(net, args.output, _read(args.test_image), **package_args(args))
    emit(args, {"package": str(path), "classes": net.classes}, [f"wrote {path}"])
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from expertloop.engine.flim import save_network
    from expertloop.engine.flim.bioimageio import import_flim_model

    net = import_flim_model(args.package)
    path = save_network(args.output, net, extra={"bioimageio_package": str(args.package)})
    emit(args, {"model": str(path), "classes": net.classes}, [f"wrote {path}"])
    return 0


def add_commands(sub) -> None:
    from expertloop.commands._batch import INPUTS_HELP, add_batch_arguments
    from expertloop.commands._cli import action, add_device, add_json, add_seed, group
    from expertloop.engine.config import add_arguments
    from expertloop.engine.flim.params import FlimFit, FlimRecommend

    _, fs = group(sub, "flim", "FLIM: encoders learnt from markers, image recommendation",
                  "FLIM: convolutional encoders computed from a few scribbles (markers) without "
                  "backpropagation, a decoder, and which image to mark next. Markers are LIDS text "
                  "files (.txt) or label images (0 unmarked, 1..K classes).",
                  dest="flim_command", metavar="STEP")

    s = action(fs, "fit", "fit a FLIM encoder (and decoder) from images and markers", [
        "expertloop flim fit a.tif b.tif --markers a.txt b.txt -o nuclei_flim",
        "expertloop flim fit a.tif --markers a_markers.tif --decoder unet -o model",
        "expertloop flim fit a.tif --markers a.txt --spec arch.yaml --decoder none -o encoder --json",
    ], description="Fit a FLIM encoder from images and their markers (one marker file per image), "
                   "then a decoder: 'pixel' (a linear head on the features, instant), 'unet' (the "
                   "paper's small decoder, trained) or none. Writes MODEL.pt and MODEL.json.")
    s.add_argument("images", nargs="+", help="grey 2D or 3D images (TIFF, PNG, NIfTI)")
    s.add_argument("--markers", nargs="+", required=True, help="one marker file per image (.txt LIDS or labels)")
    s.add_argument("--spec", default=None, help="architecture (JSON/YAML file or text); replaces "
                   "--layers, --kernel-size, --filters and --pool-stride")
    add_arguments(s, FlimFit)
    s.add_argument("--decoder", choices=["pixel", "unet", "none"], default=None,
                   help=f"the decoder, or none (encoder only); absent: {FlimFit.decoder}")
    s.add_argument("-o", "--output", required=True, help="model path (writes .pt + .json)")
    add_seed(s)
    add_device(s)
    add_json(s)
    s.set_defaults(func=cmd_fit, outputs={"output": "model"})

    s = action(fs, "segment", "segment images with a saved FLIM network", [
        "expertloop flim segment nuclei_flim.pt new/*.tif -o labels/",
        "expertloop flim segment nuclei_flim.pt img.tif -o labels/ --background-zero --json",
    ], description="Write OUT/<image>_flim_labels.tif (int32 classes) per image.")
    s.add_argument("model", help="a FLIM network saved by 'flim fit' or the widget (.pt)")
    s.add_argument("images", nargs="+", help=INPUTS_HELP)
    s.add_argument("--background-zero", action="store_true", help="write class 1 as 0")
    s.add_argument("--tile", type=int, default=512,
                   help="tile size of the block-wise evaluation (the image is read tile by tile; default 512)")
    add_batch_arguments(s, output_help="output folder (TIFF labels)")
    add_json(s)
    s.set_defaults(func=cmd_segment, outputs={"output": "folder"})

    s = action(fs, "recommend", "recommend the next images to mark (no ground truth)", [
        "expertloop flim recommend pool/*.tif --marker pool/a.tif a.txt -k 3",
        "expertloop flim recommend pool/*.tif --marker pool/a.tif a.txt --projection pca --json > rec.json",
    ], description="Describe every image by FLIM features of its superpixels and list the k unmarked "
                   "images nearest to and the k farthest from the marked ones, with their distances: "
                   "the candidates to mark next.")
    s.add_argument("images", nargs="+", help="the pool of grey images")
    s.add_argument("--marker", nargs=2, action="append", metavar=("IMAGE", "MARKERS"),
                   help="markers of an already marked image (repeatable)")
    s.add_argument("--spec", default=None, help="encoder architecture (JSON/YAML file or text); "
                   "replaces --filters")
    add_arguments(s, FlimRecommend)
    add_json(s)
    add_seed(s)
    s.set_defaults(func=cmd_recommend)

    s = action(fs, "convert-markers", "convert markers between LIDS .txt and a labels image", [
        "expertloop flim convert-markers a.txt a_markers.tif",
        "expertloop flim convert-markers a_markers.tif a.txt",
    ], description="Convert markers between the LIDS text format (.txt) and a labels image "
                   "(TIFF; 0 unmarked, 1..K classes). The output format follows OUTPUT's extension.")
    s.add_argument("input", help="markers: a LIDS .txt file or a labels image")
    s.add_argument("output", help="markers to write: .txt for LIDS, .tif for a labels image")
    add_json(s)
    s.set_defaults(func=cmd_convert, outputs={"output": "file"})

    s = action(fs, "export", "write a FLIM network as a bioimage.io model package (.zip)", [
        "expertloop flim export nuclei_flim.pt -o nuclei_flim.zip --test-image img1.tif",
        'expertloop flim export model.pt -o m.zip --test-image a.tif --name "Nuclei FLIM" --author "A. Lab"',
    ], description="Write a bioimage.io model package (format 0.5) for a 2D FLIM encoder + decoder network: "
                   "TorchScript and state-dict weights, the test image and the plugin's class probabilities "
                   "for it, a cover, a README and the paper. Needs the bioimageio extra "
                   "(pip install 'napari-expertloop[bioimageio]'); docs/flim.md.")
    add_package_export(s, "FLIM network (encoder + decoder)", "expertloop FLIM")
    s.set_defaults(func=cmd_export)

    s = action(fs, "import", "read a bioimage.io FLIM package back as a FLIM network (.pt)", [
        "expertloop flim import nuclei_flim.zip -o nuclei_flim_imported",
        "expertloop flim import unzipped_package/rdf.yaml -o imported --json",
    ], description="Check a bioimage.io package (validated with bioimageio.spec) written by 'flim export' "
                   "and save its network as MODEL.pt + MODEL.json, for the widget and 'flim segment'.")
    add_package_import(s)
    s.set_defaults(func=cmd_import)
