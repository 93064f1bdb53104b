"""Peak memory of the streaming Visual Genome reader against loading the files whole.

Writes a synthetic VG set in the published layout (``--images`` images with
``--objects`` objects, attributes, relationships and regions each), then, each in
a fresh child process so peak RSS is its own: (1) the baseline ``json.load`` of the
five files (what a naive reader does before any work), (2) ``read_visual_genome``
over them, consuming every batch. Prints both peaks, their ratio and the reader's
rows/s. Usage:

    .venv/bin/python bench/bench_vg.py [--images 20000] [--objects 25]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

NAMES = ["man", "tree", "shirt", "window", "car", "sign", "table", "hat", "grass", "building"]
FILES = ["image_data", "objects", "attributes", "relationships", "region_descriptions"]


def write_set(root: Path, n_images: int, n_objects: int) -> int:
    rng = random.Random(0)
    out = {name: open(root / f"{name}.json", "w") for name in FILES}
    for f in out.values():
        f.write("[")
    oid = 0
    for i in range(1, n_images + 1):
        objs = []
        for _ in range(n_objects):
            oid += 1
            name = rng.choice(NAMES)
            objs.append({"object_id": oid, "x": rng.randint(0, 500), "y": rng.randint(0, 300), "w": rng.randint(5, 200),
                         "h": rng.randint(5, 200), "names": [name], "synsets": [f"{name}.n.01"]})
        sep = "," if i > 1 else ""
        out["image_data"].write(sep + json.dumps({"image_id": i, "url": f"https://x/VG_100K/{i}.jpg", "width": 800,
                                                  "height": 600, "coco_id": None, "flickr_id": None}))
        out["objects"].write(sep + json.dumps({"image_id": i, "objects": objs}))
        out["attributes"].write(sep + json.dumps({"image_id": i, "attributes": [dict(o, attributes=["red", "large"]) for o in objs]}))
        rels = [{"relationship_id": o["object_id"], "predicate": "ON", "subject": objs[k], "object": objs[(k + 1) % len(objs)]}
                for k, o in enumerate(objs)]
        out["relationships"].write(sep + json.dumps({"image_id": i, "relationships": rels}))
        regs = [{"region_id": o["object_id"], "image_id": i, "phrase": f"a {o['names'][0]} on the left", "x": o["x"],
                 "y": o["y"], "width": o["w"], "height": o["h"]} for o in objs]
        out["region_descriptions"].write(sep + json.dumps({"id": i, "regions": regs}))
    for f in out.values():
        f.write("]")
        f.close()
    return sum((root / f"{n}.json").stat().st_size for n in FILES)


CHILD = r"""
import json, resource, sys, time
from pathlib import Path
root, mode = Path(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
rows = 0
if mode == "imports":
    import polars, pyarrow.parquet
    from datagen.sources.visual_genome import read_visual_genome
elif mode == "json_load":
    data = [json.load(open(root / f"{n}.json")) for n in ["image_data", "objects", "attributes", "relationships", "region_descriptions"]]
    rows = len(data[0])
else:
    from datagen.sources.config import VisualGenomeSource
    from datagen.sources.visual_genome import read_visual_genome
    from datagen.core.steps import RunContext
    (root / "run").mkdir(exist_ok=True)
    ctx = RunContext(run_dir=root / "run", recipe_dir=root)
    cfg = VisualGenomeSource(name="vg", kind="visual_genome", images=".", **{k: f"{k}.json" for k in
        ["image_data", "objects", "attributes", "relationships", "region_descriptions"]})
    for out in read_visual_genome(cfg, ctx):
        rows += out.kept.num_rows
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child(root: Path, mode: str) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, str(root), mode], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--objects", type=int, default=25)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        size = write_set(root, args.images, args.objects)
        imports = child(root, "imports")
        base = child(root, "json_load")
        ours = child(root, "stream")
    print(f"VG files: {size / 1e6:.0f} MB, {args.images} images x {args.objects} objects")
    print(f"json.load of the files:  peak {base['peak_mb']:.0f} MB, {base['seconds']:.1f} s (nothing done yet)")
    print(f"read_visual_genome:      peak {ours['peak_mb']:.0f} MB, {ours['seconds']:.1f} s, "
          f"{ours['rows'] / ours['seconds']:.0f} images/s")
    print(f"imports alone (polars, pyarrow, datagen): peak {imports['peak_mb']:.0f} MB")
    grow = ours["peak_mb"] - imports["peak_mb"]
    print(f"reader's growth over its imports: {grow:.0f} MB = {grow / (size / 1e6):.2f} x the files' size "
          f"(json.load: {base['peak_mb'] / (size / 1e6):.2f} x)")


if __name__ == "__main__":
    main()
