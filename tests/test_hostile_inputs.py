"""A corpus of hostile and odd inputs, each with the reject reason or error it must get.

Images are served by a real HTTP server on 127.0.0.1 (the recipe opts in with
``allow_loopback``, except in the cases that check the default refuses), go
through the fetch step and then the quality step, as in a run. Names resolve
from a table (``fake_dns``): no test traffic leaves loopback.

Every case also checks that no reject detail quotes the body it was served
(an internal endpoint's reply must never land in rejects.parquet).
"""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datagen.cli import main
from datagen.fetch import FetchConfig, FetchStep
from datagen.filters.quality import QualityConfig, QualityFilterStep
from datagen.core.records import pairs_table
from datagen.sources.coco import read_coco
from datagen.sources.config import CocoSource, ParquetSource, TsvSource
from datagen.sources.errors import InputFileError
from datagen.sources.tables import read_parquet, read_tsv
from datagen.core.steps import RunContext
from servers import LocalServer, Reply

SECRET = b"root:x:0:0:TOP-SECRET-INTERNAL"


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(w=320, h=240, mode="RGB") -> Image.Image:
    a = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(a).convert(mode)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(w: int, h: int, rows: int) -> bytes:
    """A valid-looking RGB PNG whose (complete) zlib stream holds only ``rows`` rows."""
    raw = b"".join(b"\x00" + b"\x00" * w * 3 for _ in range(rows))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b""))


def exif_rotated() -> bytes:
    img = photo(300, 220)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    return encode(img, "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (240, 240), c) for c in ("red", "green", "blue")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


FULL_JPEG = encode(photo(), "JPEG", quality=90)


class Harness:
    """Serves bodies, runs fetch + quality on one row, reports the outcome and what the rejects said."""

    def __init__(self, tmp_path: Path, srv: LocalServer):
        self.tmp, self.srv = tmp_path, srv
        self.details: list[str] = []

    def serve(self, path: str, body: bytes, **headers) -> str:
        self.srv.route(path, lambda req: Reply(200, body=body, headers={k.replace("_", "-"): v
                                                                       for k, v in headers.items()}))
        return self.srv.url(path)

    def run(self, url: str, quality: dict | None = None, **fetch) -> str:
        cfg = dict(timeout_s=2.0, retries=0, max_side=512, allow_loopback=True)
        cfg.update(fetch)
        ctx = RunContext(run_dir=self.tmp / "run", recipe_dir=self.tmp)
        table = pairs_table([{"key": "k", "source": "t", "url": url, "caption": "a photo of a quiet street"}])
        out = FetchStep(FetchConfig(**cfg), ctx).process(table)
        self.details += out.rejects.column("detail").to_pylist()
        if out.rejects.num_rows:
            return out.rejects.column("reason")[0].as_py()
        self.kept = out.kept.to_pylist()[0]
        q = QualityFilterStep(QualityConfig(**(quality or {"min_side": 200, "max_aspect": 3.0})), ctx).process(out.kept)
        self.details += q.rejects.column("detail").to_pylist()
        return q.rejects.column("reason")[0].as_py() if q.rejects.num_rows else "kept"


def error_of(fn) -> str:
    try:
        fn()
    except InputFileError as e:
        return f"InputFileError: {e}"
    return "no error"


# ----------------------------------------------------------------------------- the cases


def c_truncated(h):
    return h.run(h.serve("/t.jpg", FULL_JPEG[: len(FULL_JPEG) // 2], Content_Type="image/jpeg"))


def c_empty(h):
    return h.run(h.serve("/e.jpg", b"", Content_Type="image/jpeg"))


def c_html(h):
    r = h.run(h.serve("/h.jpg", b"<html><body>" + SECRET + b"</body></html>", Content_Type="text/html"))
    assert "text/html" in h.details[0] and "bytes" in h.details[0]
    return r


def c_cmyk(h):
    r = h.run(h.serve("/c.jpg", encode(photo(mode="CMYK"), "JPEG")))
    assert Image.open(io.BytesIO(h.kept["image"])).mode == "RGB"
    return r


def c_16bit(h):
    img = Image.fromarray(np.full((240, 320), 40000, dtype=np.uint16))
    assert img.mode.startswith("I;16")
    r = h.run(h.serve("/16.png", encode(img, "PNG")))
    assert np.asarray(Image.open(io.BytesIO(h.kept["image"])))[0, 0, 0] == pytest.approx(40000 >> 8, abs=2)
    return r


def c_animated(h):
    r = h.run(h.serve("/a.gif", animated_gif()))
    assert (h.kept["width"], h.kept["height"]) == (240, 240)
    return r


def c_webp(h):
    return h.run(h.serve("/w.webp", encode(photo(), "WEBP")))


def c_rgba(h):
    img = Image.new("RGBA", (300, 300), (255, 0, 0, 0))  # fully transparent red: must come out white
    r = h.run(h.serve("/rgba.png", encode(img, "PNG")))
    assert np.asarray(Image.open(io.BytesIO(h.kept["image"])).convert("RGB")).min() > 240
    return r


def c_exif_rotated(h):
    r = h.run(h.serve("/rot.jpg", exif_rotated()))
    assert (h.kept["width"], h.kept["height"]) == (220, 300) == (h.kept["original_width"], h.kept["original_height"])
    return r


def c_bomb(h):
    return h.run(h.serve("/bomb.png", png_claiming(20000, 20000, 1)))


def c_short_idat(h):
    data = png_claiming(9000, 9000, 8)
    assert len(data) < 400
    return h.run(h.serve("/short.png", data))


def c_jpeg_no_eoi(h):
    assert FULL_JPEG.endswith(b"\xff\xd9")
    return h.run(h.serve("/noeoi.jpg", FULL_JPEG[:-2]))


def c_huge(h):
    return h.run(h.serve("/huge.jpg", FULL_JPEG + b"\0" * 5000), max_bytes=len(FULL_JPEG) + 100)


def c_tiny(h):
    return h.run(h.serve("/tiny.jpg", encode(photo(8, 8), "JPEG")))


def c_very_wide(h):
    return h.run(h.serve("/wide.jpg", encode(photo(3000, 250), "JPEG")))


def c_wide_large_enough(h):
    """2000x700 is stored at 512x179; judged on its original size it passes min_side 200 and aspect 3."""
    r = h.run(h.serve("/pano.jpg", encode(photo(2000, 700), "JPEG")))
    assert (h.kept["width"], h.kept["height"]) == (512, 179)
    assert (h.kept["original_width"], h.kept["original_height"]) == (2000, 700)
    return r


def c_wide_aspect_after_resize(h):
    """900x300 (aspect 3.0) passes; 2000x600 (aspect 3.33) is an aspect_ratio reject, not image_too_small."""
    assert h.run(h.serve("/ok.jpg", encode(photo(900, 300), "JPEG"))) == "kept"
    return h.run(h.serve("/far.jpg", encode(photo(2000, 600), "JPEG")))


def c_ftp(h):
    return h.run("ftp://example.org/x.jpg")


def c_unresolvable(h):
    return h.run(f"http://no-such-host.invalid:{h.srv.port}/x.jpg")


def c_redirect_loop(h):
    h.srv.route("/loop", lambda req: Reply(302, headers={"Location": h.srv.url("/loop")}))
    return h.run(h.srv.url("/loop"))


def c_redirect_to_file(h):
    h.srv.route("/tofile", lambda req: Reply(302, headers={"Location": "file:///etc/passwd"}))
    return h.run(h.srv.url("/tofile"))


def c_file_url(h):
    secret = h.tmp / "passwd"
    secret.write_bytes(SECRET)
    return h.run(secret.as_uri(), allow_loopback=False)


def c_path_traversal(h):
    """A LAION-style row whose URL climbs out of the table's folder; local files are off by default."""
    secret = h.tmp / "passwd"
    secret.write_bytes(SECRET)
    (h.tmp / "a" / "b").mkdir(parents=True)
    pq.write_table(pa.table({"URL": ["../../passwd"], "TEXT": ["a photo of a quiet street"]}),
                   h.tmp / "a" / "b" / "t.parquet")
    ctx = RunContext(run_dir=h.tmp / "run", recipe_dir=h.tmp)
    table = next(read_parquet(ParquetSource(name="l", kind="laion", path="a/b/t.parquet"), ctx)).kept
    assert ctx.resolve(table.column("url")[0].as_py()) == secret  # stored relative to the recipe folder
    out = FetchStep(FetchConfig(), ctx).process(table)
    h.details += out.rejects.column("detail").to_pylist()
    return out.rejects.column("reason")[0].as_py()


def c_loopback_default(h):
    url = h.serve("/img.jpg", FULL_JPEG)
    r = h.run(url, allow_loopback=False)
    assert h.srv.count("/img.jpg") == 0
    return r


def c_localhost_redirect(h):
    """An allowed mirror (by CIDR) that redirects to another loopback service by name."""
    h.serve("/internal.jpg", FULL_JPEG)
    with LocalServer("127.0.0.2") as mirror:
        mirror.route("/", lambda req: Reply(302, headers={"Location": f"http://localhost:{h.srv.port}/internal.jpg"}))
        r = h.run(mirror.url("/x.jpg"), allow_loopback=False, allow_networks=["127.0.0.2/32"])
    assert h.srv.count("/internal.jpg") == 0
    return r


def c_noai(h):
    return h.run(h.serve("/noai.jpg", FULL_JPEG, X_Robots_Tag="noai"))


def c_truncated_parquet(h):
    path = h.tmp / "laion.parquet"
    pq.write_table(pa.table({"URL": ["http://a/1.jpg"] * 50, "TEXT": ["a cat on a mat"] * 50}), path)
    path.write_bytes(path.read_bytes()[:200])
    ctx = RunContext(run_dir=h.tmp / "run", recipe_dir=h.tmp)
    msg = error_of(lambda: list(read_parquet(ParquetSource(name="l", kind="laion", path="laion.parquet"), ctx)))
    assert "laion.parquet" in msg and "download it again" in msg
    return msg.split(":")[0]


def c_parquet_missing_column(h):
    pq.write_table(pa.table({"url": ["http://a/1.jpg"], "caption": ["x y z"]}), h.tmp / "p.parquet")
    ctx = RunContext(run_dir=h.tmp / "run", recipe_dir=h.tmp)
    msg = error_of(lambda: list(read_parquet(ParquetSource(name="l", kind="laion", path="p.parquet"), ctx)))
    assert "p.parquet" in msg and "'URL'" in msg and "columns.url" in msg
    return msg.split(":")[0]


def coco(h, images, captions, instances=None, cats=None) -> CocoSource:
    (h.tmp / "imgs").mkdir(exist_ok=True)
    (h.tmp / "captions.json").write_text(json.dumps({"images": images, "annotations": captions}))
    if instances is not None:
        (h.tmp / "instances.json").write_text(json.dumps({"images": images, "annotations": instances,
                                                          "categories": cats or [{"id": 1, "name": "cat"}]}))
    return CocoSource(name="coco", kind="coco", captions="captions.json", images="imgs",
                      instances="instances.json" if instances is not None else None)


def c_truncated_coco(h):
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in range(40)]
    cfg = coco(h, images, [{"id": 1, "image_id": 0, "caption": "a cat"}])
    text = (h.tmp / "captions.json").read_text()
    (h.tmp / "captions.json").write_text(text[: len(text) // 2])
    ctx = RunContext(run_dir=h.tmp / "run", recipe_dir=h.tmp)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    msg = error_of(lambda: list(read_coco(cfg, ctx)))
    assert "captions.json" in msg and "invalid JSON" in msg and "download it again" in msg
    return msg.split(":")[0]


def c_orphan_annotation(h):
    images = [{"id": 1, "file_name": "1.jpg", "width": 10, "height": 10}]
    caps = [{"id": 10, "image_id": 1, "caption": "a cat"}, {"id": 11, "image_id": 99, "caption": "ghost"},
            {"id": 12, "image_id": 99, "caption": "ghost 2"}]
    inst = [{"id": 20, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 0},
            {"id": 21, "image_id": 98, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 0}]
    ctx = RunContext(run_dir=h.tmp / "run", recipe_dir=h.tmp)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    outs = list(read_coco(coco(h, images, caps, inst), ctx))
    rejects = pa.concat_tables([o.rejects for o in outs])
    assert sum(o.kept.num_rows for o in outs) == 1
    assert rejects.column("key").to_pylist() == ["coco_orphan_98", "coco_orphan_99"]
    assert "2 caption(s) in captions.json for image_id 99" in rejects.column("detail")[1].as_py()
    assert set(rejects.column("reason").to_pylist()) == {"orphan_annotation"}
    return rejects.column("reason")[0].as_py()


def c_tsv_blank_lines(h):
    lines = ["a dog on grass\thttp://x/1.jpg", "", "", "a broken line without a tab", "a cat\thttp://x/2.jpg"]
    (h.tmp / "cc.tsv").write_text("\n".join(lines) + "\n")
    ctx = RunContext(run_dir=h.tmp / "run", recipe_dir=h.tmp)
    outs = list(read_tsv(TsvSource(name="cc", kind="cc3m", path="cc.tsv"), ctx))
    kept = pa.concat_tables([o.kept for o in outs])
    rejects = pa.concat_tables([o.rejects for o in outs])
    assert kept.column("key").to_pylist() == ["cc_000000001", "cc_000000005"]  # the file's own line numbers
    assert rejects.num_rows == 1 and "cc.tsv:4:" in rejects.column("detail")[0].as_py()
    return rejects.column("reason")[0].as_py()


def c_cli_bad_input_exit_2(h, capsys=None):
    pq.write_table(pa.table({"URL": ["http://a/1.jpg"], "TEXT": ["a cat on a mat"]}), h.tmp / "t.parquet")
    (h.tmp / "t.parquet").write_bytes(b"PAR1 not really")
    (h.tmp / "r.yaml").write_text(json.dumps({"name": "bad", "sources": [{"name": "t", "kind": "laion",
                                                                           "path": "t.parquet"}],
                                             "stage2": {"sources": []}}))
    return f"exit {main(['run', str(h.tmp / 'r.yaml'), '--out', str(h.tmp / 'out')])}"


CASES = [
    (c_truncated, "image_truncated"),
    (c_empty, "not_an_image"),
    (c_html, "not_an_image"),
    (c_cmyk, "kept"),
    (c_16bit, "kept"),
    (c_animated, "kept"),
    (c_webp, "kept"),
    (c_rgba, "kept"),
    (c_exif_rotated, "kept"),
    (c_bomb, "too_large"),
    (c_short_idat, "image_truncated"),
    (c_jpeg_no_eoi, "image_truncated"),
    (c_huge, "too_large"),
    (c_tiny, "image_too_small"),
    (c_very_wide, "aspect_ratio"),
    (c_wide_large_enough, "kept"),
    (c_wide_aspect_after_resize, "aspect_ratio"),
    (c_ftp, "unsupported_scheme"),
    (c_unresolvable, "dns_error"),
    (c_redirect_loop, "too_many_redirects"),
    (c_redirect_to_file, "unsupported_scheme"),
    (c_file_url, "local_file_not_allowed"),
    (c_path_traversal, "local_file_not_allowed"),
    (c_loopback_default, "blocked_address"),
    (c_localhost_redirect, "blocked_address"),
    (c_noai, "opted_out"),
    (c_truncated_parquet, "InputFileError"),
    (c_parquet_missing_column, "InputFileError"),
    (c_truncated_coco, "InputFileError"),
    (c_orphan_annotation, "orphan_annotation"),
    (c_tsv_blank_lines, "malformed_row"),
    (c_cli_bad_input_exit_2, "exit 2"),
]


@pytest.mark.parametrize("case,expected", CASES, ids=[c.__name__[2:] for c, _ in CASES])
def test_hostile_input(case, expected, tmp_path, fake_dns, capsys):
    with LocalServer() as srv:
        h = Harness(tmp_path, srv)
        assert case(h) == expected
    for detail in h.details:  # rejects keep length, content type and reason, never the bytes served
        assert "TOP-SECRET" not in (detail or "") and "root:x" not in (detail or "")
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if expected == "exit 2":
        assert "t.parquet" in err and "not a readable parquet file" in err and "download it again" in err
