"""A tiny Visual Genome data set in the published v1.2/v1.4 layouts (each file a JSON list keyed by image_id)."""

import json
from pathlib import Path

from PIL import Image


def write_vg(root: Path, with_images: bool = False) -> Path:
    images = [
        {"image_id": 1, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg", "width": 800, "height": 600,
         "coco_id": None, "flickr_id": None},
        {"image_id": 2, "url": "https://cs.stanford.edu/people/rak248/VG_100K/2.jpg", "width": 400, "height": 300,
         "coco_id": 139, "flickr_id": 12},
        {"image_id": 3, "url": "https://cs.stanford.edu/people/rak248/VG_100K/3.jpg", "width": 640, "height": 480,
         "coco_id": None, "flickr_id": None},
    ]
    man = {"object_id": 10, "x": 100, "y": 50, "w": 200, "h": 400, "names": ["man"], "synsets": ["man.n.01"]}
    horse = {"object_id": 11, "x": 80, "y": 200, "w": 500, "h": 350, "names": ["horse"], "synsets": ["horse.n.01"]}
    hat = {"object_id": 12, "x": 150, "y": 40, "w": 60, "h": 40, "names": ["hat"], "synsets": ["hat.n.01"]}
    objects = [
        {"image_id": 1, "image_url": images[0]["url"], "objects": [man, horse, hat,
         {"object_id": 13, "x": 0, "y": 0, "w": 0, "h": 10, "names": ["sliver"], "synsets": []}]},
        {"image_id": 2, "objects": [
            {"object_id": 20, "x": 10, "y": 10, "w": 50, "h": 80, "names": ["umbrella"], "synsets": ["umbrella.n.01"]},
            {"object_id": 21, "x": 200, "y": 10, "w": 60, "h": 80, "names": ["Umbrella"], "synsets": ["umbrella.n.01"]},
        ]},
    ]
    attributes = [
        {"image_id": 1, "attributes": [dict(man, attributes=["smiling", " Tall "]), dict(hat, attributes=["black"])]},
        {"image_id": 2, "attributes": [
            {"object_id": 20, "x": 10, "y": 10, "w": 50, "h": 80, "names": ["umbrella"], "synsets": ["umbrella.n.01"],
             "attributes": ["red"]},
            {"object_id": 21, "x": 200, "y": 10, "w": 60, "h": 80, "names": ["umbrella"], "synsets": ["umbrella.n.01"],
             "attributes": ["blue", "open"]},
        ]},
    ]
    relationships = [
        {"image_id": 1, "relationships": [
            {"relationship_id": 100, "predicate": "RIDING", "synsets": ["ride.v.01"],
             "subject": {"object_id": 10, "x": 100, "y": 50, "w": 200, "h": 400, "name": "man", "synsets": ["man.n.01"]},
             "object": {"object_id": 11, "x": 80, "y": 200, "w": 500, "h": 350, "name": "horse", "synsets": ["horse.n.01"]}},
            {"relationship_id": 101, "predicate": "wearing", "synsets": ["wear.v.01"],
             "subject": {"object_id": 10, "x": 100, "y": 50, "w": 200, "h": 400, "name": "man", "synsets": ["man.n.01"]},
             "object": {"object_id": 12, "x": 150, "y": 40, "w": 60, "h": 40, "name": "hat", "synsets": ["hat.n.01"]}},
            # an object that exists only in relationships.json
            {"relationship_id": 102, "predicate": "on", "synsets": [],
             "subject": {"object_id": 11, "x": 80, "y": 200, "w": 500, "h": 350, "name": "horse", "synsets": ["horse.n.01"]},
             "object": {"object_id": 14, "x": 0, "y": 500, "w": 800, "h": 100, "name": "grass", "synsets": ["grass.n.01"]}},
        ]},
        {"image_id": 3, "relationships": []},
    ]
    regions = [
        {"id": 1, "regions": [
            {"region_id": 1000, "width": 300, "height": 450, "image_id": 1, "phrase": "man riding a brown horse", "x": 90, "y": 45},
            {"region_id": 1001, "width": 60, "height": 40, "image_id": 1, "phrase": "black hat on his head ", "x": 150, "y": 40},
        ]},
        {"id": 2, "regions": [{"region_id": 2000, "width": 250, "height": 100, "image_id": 2, "phrase": "two umbrellas", "x": 10, "y": 10}]},
    ]
    root.mkdir(parents=True, exist_ok=True)
    for name, data in (("image_data", images), ("objects", objects), ("attributes", attributes),
                       ("relationships", relationships), ("region_descriptions", regions)):
        (root / f"{name}.json").write_text(json.dumps(data))
    (root / "VG_100K").mkdir(exist_ok=True)
    (root / "VG_100K_2").mkdir(exist_ok=True)
    if with_images:
        for img in images:
            sub = img["url"].rsplit("/", 2)[-2]
            Image.new("RGB", (img["width"], img["height"]), (120, 120, 120)).save(root / sub / f"{img['image_id']}.jpg")
    return root
