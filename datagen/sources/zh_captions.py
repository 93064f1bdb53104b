"""Chinese captions written for COCO images (COCO-CN style), joined onto COCO rows by image id.

COCO-CN and Flickr8k-CN publish one caption per line, ``<image>#<n><TAB><caption>``
(a space may stand for the tab), where ``<image>`` is the image's file name or its
stem (``COCO_val2014_000000000042``, ``000000000042.jpg``) or the bare id. COCO file
names end in the image id, so the join key is the number at the end of the stem.
The file is read line by line; only the captions are kept in memory (COCO-CN has
about 27k lines). The captions join the row's ``captions`` after the English ones,
where template synthesis uses them for Chinese descriptions (``planner.neutral``).
"""

from __future__ import annotations

import re
from pathlib import Path

_REF = re.compile(r"(\d+)(?:\.[A-Za-z]+)?$")


def read_zh_captions(path: Path) -> dict[int, list[str]]:
    """image id -> captions in file order; a clear error naming the line for anything unreadable."""
    out: dict[int, list[str]] = {}
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split("\t", 1) if "\t" in line else line.split(None, 1)
            if len(parts) != 2 or not parts[1].strip():
                raise ValueError(f"{path}:{n}: expected '<image>#<n><TAB><caption>', got {line[:120]!r}")
            ref = parts[0].split("#", 1)[0]
            m = _REF.search(ref)
            if not m:
                raise ValueError(f"{path}:{n}: cannot read an image id from {parts[0]!r} (expected a COCO file name or id)")
            cap = " ".join(parts[1].split())
            caps = out.setdefault(int(m.group(1)), [])
            if cap not in caps:
                caps.append(cap)
    return out
