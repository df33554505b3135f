"""``reefmap bundle create | inspect | validate | convert``: model bundles (an artifact + STAC MLM metadata)."""

from __future__ import annotations

import json


def cmd_create(a) -> int:
    from reefmap.model.bundling import create_bundle

    m = create_bundle(a.artifact, a.spec, a.out)
    print(f"wrote bundle {m.path}: {m.name} ({m.artifact_type}), {len(m.bands)} bands, {len(m.classes)} classes; "
          f"measured receptive radius {m.receptive_radius} px, halo {m.halo} px (size multiple {m.size_multiple})")
    return 0


def cmd_inspect(a) -> int:
    from reefmap.model.bundle import format_inspect, inspect_bundle

    info = inspect_bundle(a.bundle)
    print(json.dumps(info, indent=2) if a.json else format_inspect(info))
    return 0


def cmd_validate(a) -> int:
    from reefmap.model.bundling import format_validation, validate_bundle

    v = validate_bundle(a.bundle, device=a.device)
    print(json.dumps(v, indent=2) if a.json else format_validation(v))
    return 0


def cmd_convert(a) -> int:
    from reefmap.model.bundling import convert_bundle

    m = convert_bundle(a.old, a.new)
    print(f"wrote bundle {m.path} ({m.name}, STAC MLM); measured receptive radius {m.receptive_radius} px, halo {m.halo} px")
    return 0


def add_commands(sub) -> None:
    b = sub.add_parser("bundle", help="model bundles: create, inspect, validate, convert")
    bsub = b.add_subparsers(dest="bundle_cmd", required=True)
    c = bsub.add_parser("create", help="bundle a model artifact (.pt2, TorchScript, or a state_dict) with its spec")
    c.add_argument("artifact", help="torch.export .pt2, TorchScript file, or torch.save state_dict of a built-in architecture")
    c.add_argument("--spec", required=True, help="YAML: name, bands (with scaling), classes (value, name, color), reef_classes, ...")
    c.add_argument("--out", required=True, help="the new bundle directory")
    c.set_defaults(fn=cmd_create)
    i = bsub.add_parser("inspect", help="what a bundle holds (no torch)")
    i.add_argument("bundle")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_inspect)
    v = bsub.add_parser("validate", help="load a bundle, check checksum, output channels and seam-freeness")
    v.add_argument("bundle")
    v.add_argument("--device", help="cpu or cuda (default: the GPU when present)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(fn=cmd_validate)
    k = bsub.add_parser("convert", help="write a reefmap-bundle/1 directory as a STAC MLM bundle")
    k.add_argument("old")
    k.add_argument("new")
    k.set_defaults(fn=cmd_convert)
