#!/usr/bin/env python
"""Derives fastroar/datasets/data/imagenet10.json, the ImageNet-10 class mapping shipped with fastroar.

ImageNet-10 in Shah, Jain & Netrapalli (NeurIPS 2021) is the robustness library's ``mixed_10``
restricted ImageNet (github harshays/inputgradients builds it with
``robustness.tools.imagenet_helpers``): ``common_superclass_wnid('mixed_10')`` lists ten WordNet
superclasses, and ``ImageNetHierarchy.get_subclasses(wnids, balanced=True)`` keeps, per superclass,
the ImageNet classes below it in the hierarchy built from ImageNet's ``wordnet.is_a.txt``
(each node keeps one parent: the last listed), cut to the smallest superclass's count (boat: 6) by
keeping the lowest class indices. Labels follow the order of the mixed_10 list.

The class indices below are the result of that selection (read off the robustness helpers and the
ImageNet metadata; the helpers' own comments give the per-superclass counts, e.g. feline 8: the
domestic cats 281-285 hang under "domestic animal" in that tree, so feline starts at cougar, 286).
This script turns them into wnids using the 1000 ImageNet-1k wnids in class-index order, e.g. from
the ``timm`` wheel (not a fastroar dependency)::

    pip download timm --no-deps -d /tmp/timm
    cd /tmp/timm && unzip -o timm-*.whl 'timm/data/_info/*'
    python tools/derive_imagenet10.py --synsets /tmp/timm/timm/data/_info/imagenet_synsets.txt \\
        --lemmas /tmp/timm/timm/data/_info/imagenet_synset_to_lemma.txt

ImageNet class index = position of the wnid in the sorted list of the 1000 wnids (the order of
``imagenet_class_index.json`` and of torchvision's ImageFolder over ILSVRC train/); the script checks
that the file is sorted.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "fastroar" / "datasets" / "data" / "imagenet10.json"

# (label name, superclass wnid, the 6 ImageNet-1k class indices robustness' balanced selection keeps)
SUPERCLASSES = [
    ("dog", "n02084071", list(range(151, 157))),
    ("bird", "n01503061", list(range(7, 13))),
    ("insect", "n02159955", list(range(300, 306))),
    ("monkey", "n02484322", list(range(370, 376))),
    ("car", "n02958343", [407, 436, 468, 511, 609, 627]),
    ("feline", "n02120997", list(range(286, 292))),
    ("truck", "n04490091", [555, 569, 675, 717, 734, 864]),
    ("fruit", "n13134947", [948, 984, 987, 988, 989, 990]),
    ("fungus", "n12992868", list(range(991, 997))),
    ("boat", "n02858304", [472, 554, 576, 625, 814, 914]),
]


def derive(synsets: list[str], lemmas: dict[str, str] | None = None) -> dict:
    """The mapping as a JSON-able dict, from the 1000 wnids in class-index order."""
    if len(synsets) != 1000 or len(set(synsets)) != 1000:
        raise SystemExit(f"expected 1000 distinct ImageNet-1k wnids, got {len(synsets)}")
    if synsets != sorted(synsets):
        raise SystemExit("the wnid list is not sorted: class index = position in the sorted list")
    seen: set[int] = set()
    superclasses = []
    for label, (name, wnid, indices) in enumerate(SUPERCLASSES):
        if len(indices) != 6 or seen & set(indices):
            raise SystemExit(f"{name}: expected 6 indices disjoint from the other superclasses'")
        seen |= set(indices)
        members = []
        for i in indices:
            member = {"wnid": synsets[i], "imagenet_index": i}
            if lemmas:
                member["name"] = lemmas[synsets[i]].split(",")[0].strip()
            members.append(member)
        superclasses.append({"label": label, "name": name, "wnid": wnid, "members": members})
    return {
        "name": "imagenet10",
        "description": "ImageNet-10 of Shah, Jain & Netrapalli (NeurIPS 2021): the robustness library's "
                       "mixed_10 restricted ImageNet, balanced (6 ImageNet-1k classes per superclass).",
        "source": {
            "superclasses": "robustness.tools.imagenet_helpers.common_superclass_wnid('mixed_10'), in its order",
            "members": "ImageNetHierarchy.get_subclasses(balanced=True): per superclass the 6 descendant "
                       "ImageNet classes with the lowest class index (6 = boat's count, the smallest)",
            "wnids": "ImageNet-1k class index -> wnid from the sorted list of the 1000 ILSVRC-2012 wnids",
            "derived_by": "tools/derive_imagenet10.py",
        },
        "superclasses": superclasses,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--synsets", required=True, help="1000 ImageNet-1k wnids, one a line, in class-index order")
    ap.add_argument("--lemmas", help="optional 'wnid<TAB>names' file for human-readable member names")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    synsets = [line.strip() for line in Path(args.synsets).read_text().splitlines() if line.strip()]
    lemmas = None
    if args.lemmas:
        lemmas = dict(line.split("\t", 1) for line in Path(args.lemmas).read_text().splitlines() if "\t" in line)
    mapping = derive(synsets, lemmas)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(mapping, indent=2) + "\n")
    print(f"wrote {out}: {len(mapping['superclasses'])} superclasses, "
          f"{sum(len(s['members']) for s in mapping['superclasses'])} ImageNet classes")


if __name__ == "__main__":
    main()
