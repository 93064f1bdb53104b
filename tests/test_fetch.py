"""Tests of the fetch step against a real HTTP server on 127.0.0.1 and real files.

Images are made with Pillow in the test; geometry checks find the red
rectangle in the stored pixels and compare it with the transformed box, so a
wrong box transform cannot pass.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import socket
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageOps

from datagen.fetch import FetchConfig, FetchStep
from datagen.fetch.http import parse_retry_after
from datagen.fetch.image import transform_bbox
from datagen.core.cache import RequestCache
from datagen.core.records import PAIR_SCHEMA, REJECT_SCHEMA, pairs_table
from datagen.core.steps import RunContext
from servers import LocalServer, Reply

RED_BOX = [8.0, 4.0, 20.0, 12.0]  # x, y, w, h in the raw (stored-on-disk) pixels


def ctx_for(tmp_path: Path) -> RunContext:
    return RunContext(run_dir=tmp_path / "run", recipe_dir=tmp_path)


def cfg(**kw) -> FetchConfig:
    base = dict(timeout_s=2.0, retries=2, backoff_s=0.01, backoff_max_s=0.05, concurrency=8,
                allow_loopback=True, allow_local_files=True)  # the test servers and files are local
    base.update(kw)
    return FetchConfig(**base)


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def jpeg(w: int = 64, h: int = 40, color=(30, 120, 200), **kw) -> bytes:
    return encode(Image.new("RGB", (w, h), color), "JPEG", quality=95, **kw)


def boxed_image(w: int = 64, h: int = 40, box=RED_BOX) -> Image.Image:
    """White image with a solid red rectangle exactly covering ``box``."""
    img = Image.new("RGB", (w, h), (255, 255, 255))
    x, y, bw, bh = (int(v) for v in box)
    img.paste((255, 0, 0), (x, y, x + bw, y + bh))
    return img


def red_bbox(img: Image.Image) -> list[float]:
    """[x, y, w, h] of the red pixels of a (possibly JPEG-blurred) image."""
    a = np.asarray(img.convert("RGB")).astype(int)
    mask = (a[..., 0] > 160) & (a[..., 1] < 110) & (a[..., 2] < 110)
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


def row(key: str, url=None, image=None, objects=None, **extra) -> dict:
    return {"key": key, "source": "test", "url": url, "caption": f"caption of {key}", "image": image,
            "objects": objects, "meta": json.dumps({"n": key}), **extra}


def run_step(tmp_path, rows, config=None, table=None):
    ctx = ctx_for(tmp_path)
    step = FetchStep(config or cfg(), ctx)
    table = table if table is not None else pairs_table(rows)
    try:
        out = step.process(table)
    finally:
        step.close()
    # nothing is ever lost: every input row is kept or rejected, exactly once
    assert out.kept.num_rows + out.rejects.num_rows == table.num_rows
    assert sorted(out.kept.column("key").to_pylist() + out.rejects.column("key").to_pylist()) == sorted(
        table.column("key").to_pylist()
    )
    assert out.rejects.schema == REJECT_SCHEMA
    assert set(out.rejects.column("step").to_pylist()) <= {"fetch"}
    return out, ctx


def reasons(out) -> dict[str, str]:
    return dict(zip(out.rejects.column("key").to_pylist(), out.rejects.column("reason").to_pylist()))


def kept_image(out, i: int = 0) -> Image.Image:
    return Image.open(io.BytesIO(out.kept.column("image")[i].as_py()))


def obj(box, label="thing"):
    return {"label": label, "bbox": list(box), "score": None, "attributes": [], "iscrowd": False}


# --------------------------------------------------------------------------- HTTP


def test_http_200_jpeg_kept_with_metadata_and_columns_preserved(tmp_path):
    body = jpeg(64, 40)
    with LocalServer() as srv:
        srv.route("/img/", lambda req: Reply(200, body=body, headers={"Content-Type": "image/jpeg"}))
        srv.route("/missing/", lambda req: Reply(404, b"nope"))
        rows = [row("a", srv.url("/img/a.jpg")), row("b", srv.url("/missing/b.jpg")), row("c", srv.url("/img/c.jpg"))]
        table = pairs_table(rows).append_column("clip_score", pa.array([0.1, 0.2, 0.3]))
        out, ctx = run_step(tmp_path, None, cfg(), table=table)
        ua = srv.requests[0].headers.get("user-agent", "")
    assert out.kept.column("key").to_pylist() == ["a", "c"]  # order kept
    assert out.kept.column("clip_score").to_pylist() == [0.1, 0.3]  # extra columns kept
    assert out.kept.column("caption").to_pylist() == ["caption of a", "caption of c"]
    assert out.kept.schema.field("image").type == PAIR_SCHEMA.field("image").type
    assert out.kept.schema.field("width").type == pa.int32()
    stored = out.kept.column("image")[0].as_py()
    assert stored == body  # an upright RGB JPEG is stored byte-for-byte
    assert out.kept.column("image_sha256")[0].as_py() == hashlib.sha256(stored).hexdigest()
    assert (out.kept.column("width")[0].as_py(), out.kept.column("height")[0].as_py()) == (64, 40)
    assert ua.startswith("datagen/")
    assert reasons(out) == {"b": "http_404"}
    st = ctx.stats["fetch"]
    assert st["ok"] == 2 and st["rejects"] == {"http_404": 1} and st["bytes_downloaded"] == 2 * len(body)


def test_404_is_not_retried(tmp_path):
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(404, b"nope"))
        out, ctx = run_step(tmp_path, [row("a", srv.url("/x.jpg"))], cfg(retries=3))
        assert srv.count("/x.jpg") == 1
    assert reasons(out) == {"a": "http_404"}
    assert "404" in out.rejects.column("detail")[0].as_py()
    assert out.rejects.column("url")[0].as_py().endswith("/x.jpg")


def test_500_is_retried_then_rejected(tmp_path):
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(500, b"boom"))
        out, ctx = run_step(tmp_path, [row("a", srv.url("/x.jpg"))], cfg(retries=2))
        assert srv.count("/x.jpg") == 3  # first try + 2 retries
    assert reasons(out) == {"a": "http_500"}
    assert "after 3 tries" in out.rejects.column("detail")[0].as_py()
    assert ctx.stats["fetch"]["retries"] == 2


def test_500_then_200_recovers(tmp_path):
    calls = []

    def flaky(req):
        calls.append(1)
        return Reply(503, b"busy") if len(calls) == 1 else Reply(200, body=jpeg())

    with LocalServer() as srv:
        srv.route("/", flaky)
        out, _ = run_step(tmp_path, [row("a", srv.url("/x.jpg"))])
    assert out.kept.num_rows == 1 and len(calls) == 2


def test_slow_response_times_out(tmp_path):
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(200, body=jpeg(), delay_s=1.5))
        out, ctx = run_step(tmp_path, [row("a", srv.url("/slow.jpg"))], cfg(timeout_s=0.3, retries=1))
        assert srv.count("/slow.jpg") == 2  # timeouts are retried
    assert reasons(out) == {"a": "timeout"}


def test_total_deadline_bounds_a_slow_attempt(tmp_path):
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(200, body=jpeg(), delay_s=1.5))
        out, _ = run_step(tmp_path, [row("a", srv.url("/slow.jpg"))], cfg(timeout_s=5, total_timeout_s=0.3, retries=0))
    assert reasons(out) == {"a": "timeout"}


def test_body_that_is_not_an_image(tmp_path):
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(200, body=b"<html>Sorry, this image was removed</html>",
                                         headers={"Content-Type": "image/jpeg"}))
        out, _ = run_step(tmp_path, [row("a", srv.url("/x.jpg"))])
    assert reasons(out) == {"a": "not_an_image"}


def test_body_shorter_than_content_length_is_rejected_and_retried(tmp_path):
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(200, body=jpeg(200, 200), truncate_to=300))
        out, _ = run_step(tmp_path, [row("a", srv.url("/x.jpg"))], cfg(retries=1))
        assert srv.count("/x.jpg") == 2
    assert reasons(out) == {"a": "image_truncated"}


def test_truncated_jpeg_with_honest_length_is_rejected_not_half_decoded(tmp_path):
    whole = encode(Image.effect_noise((128, 128), 60).convert("RGB"), "JPEG", quality=90)
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(200, body=whole[: len(whole) // 2]))
        out, _ = run_step(tmp_path, [row("a", srv.url("/x.jpg"))])
        assert srv.count("/x.jpg") == 1  # a bad file is not a network error: no retry
    assert reasons(out) == {"a": "image_truncated"}


def test_429_with_retry_after_then_200(tmp_path):
    times = []

    def limited(req):
        times.append(time.monotonic())
        if len(times) == 1:
            return Reply(429, b"slow down", headers={"Retry-After": "0.3"})
        return Reply(200, body=jpeg())

    with LocalServer() as srv:
        srv.route("/", limited)
        # backoff would be ~0.01 s: only Retry-After explains a 0.3 s gap
        out, ctx = run_step(tmp_path, [row("a", srv.url("/x.jpg"))], cfg(retries=2))
        assert srv.count("/") == 2
    assert out.kept.num_rows == 1
    assert times[1] - times[0] >= 0.28
    assert ctx.stats["fetch"]["host_pauses"] == 1


def test_retry_after_is_capped(tmp_path):
    times = []

    def limited(req):
        times.append(time.monotonic())
        if len(times) == 1:
            return Reply(429, b"", headers={"Retry-After": "3600"})
        return Reply(200, body=jpeg())

    with LocalServer() as srv:
        srv.route("/", limited)
        out, _ = run_step(tmp_path, [row("a", srv.url("/x.jpg"))], cfg(retry_after_max_s=0.2))
    assert out.kept.num_rows == 1
    assert 0.18 <= times[1] - times[0] < 30


def test_parse_retry_after():
    assert parse_retry_after("5", 60) == 5
    assert parse_retry_after("120", 60) == 60
    assert parse_retry_after(None, 60) is None
    assert parse_retry_after("soon", 60) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 60) == 0  # a date in the past: go now
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= parse_retry_after(future, 60) <= 31


def test_redirect_chain_is_followed(tmp_path):
    body = jpeg()
    with LocalServer() as srv:
        srv.route("/r/1", lambda req: Reply(301, headers={"Location": "/r/2"}))
        srv.route("/r/2", lambda req: Reply(302, headers={"Location": srv.url("/r/3")}))
        srv.route("/r/3", lambda req: Reply(307, headers={"Location": "/final.jpg"}))
        srv.route("/final.jpg", lambda req: Reply(200, body=body))
        srv.route("/loop", lambda req: Reply(302, headers={"Location": "/loop"}))
        out, ctx = run_step(tmp_path, [row("a", srv.url("/r/1")), row("b", srv.url("/loop"))], cfg(max_redirects=4))
        assert srv.count("/loop") == 5  # first request + 4 redirects, then give up; not retried
    assert out.kept.column("key").to_pylist() == ["a"]
    assert out.kept.column("image")[0].as_py() == body
    assert reasons(out) == {"b": "too_many_redirects"}
    assert ctx.stats["fetch"]["redirects"] == 3


def test_global_concurrency_limit_is_held(tmp_path):
    body = jpeg()
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(200, body=body, delay_s=0.08))
        rows = [row(f"k{i}", srv.url(f"/{i}.jpg")) for i in range(12)]
        out, _ = run_step(tmp_path, rows, cfg(concurrency=3, per_host_concurrency=10))
        assert srv.max_in_flight == 3  # held, and actually used
    assert out.kept.num_rows == 12


def test_per_host_concurrency_limit_is_held(tmp_path):
    body = jpeg()
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(200, body=body, delay_s=0.08))
        rows = [row(f"k{i}", srv.url(f"/{i}.jpg")) for i in range(8)]
        out, _ = run_step(tmp_path, rows, cfg(concurrency=10, per_host_concurrency=2))
        assert srv.max_in_flight == 2
    assert out.kept.num_rows == 8


def test_too_large_by_content_length(tmp_path):
    body = jpeg(200, 200)
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(200, body=body))
        out, _ = run_step(tmp_path, [row("a", srv.url("/x.jpg"))], cfg(max_bytes=len(body) - 1))
    assert reasons(out) == {"a": "too_large"}


def test_connection_refused_is_connection_error(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    out, ctx = run_step(tmp_path, [row("a", f"http://127.0.0.1:{port}/x.jpg")], cfg(retries=1))
    assert reasons(out) == {"a": "connection_error"}
    assert ctx.stats["fetch"]["retries"] == 1


def test_unknown_host_is_dns_error(tmp_path, fake_dns):
    out, _ = run_step(tmp_path, [row("a", "http://no-such-host.invalid/x.jpg")], cfg(retries=0))
    assert reasons(out) == {"a": "dns_error"}


def test_bad_urls(tmp_path):
    rows = [row("empty", ""), row("none", None), row("ftp", "ftp://example.org/x.jpg"),
            row("nohost", "http:///x.jpg"), row("remote_file", "file://otherhost/x.jpg")]
    out, _ = run_step(tmp_path, rows)
    assert reasons(out) == {"empty": "empty_url", "none": "empty_url", "ftp": "unsupported_scheme",
                            "nohost": "invalid_url", "remote_file": "unsupported_scheme"}


def test_works_when_called_inside_a_running_event_loop(tmp_path):
    p = tmp_path / "a.jpg"
    p.write_bytes(jpeg())

    async def main():
        return FetchStep(cfg(), ctx_for(tmp_path)).process(pairs_table([row("a", str(p))]))

    assert asyncio.run(main()).kept.num_rows == 1


# ------------------------------------------------------------------ local files


def test_local_path_file_url_and_missing_file(tmp_path):
    body = jpeg()
    p = tmp_path / "dir with space" / "ä b.jpg"
    p.parent.mkdir()
    p.write_bytes(body)
    (tmp_path / "rel.jpg").write_bytes(body)
    rows = [row("path", str(p)), row("url", p.as_uri()), row("missing", str(tmp_path / "nope.jpg")),
            row("missing_url", (tmp_path / "nope2.jpg").as_uri()), row("relative", "rel.jpg"),
            row("dir", str(tmp_path))]
    out, ctx = run_step(tmp_path, rows)
    assert out.kept.column("key").to_pylist() == ["path", "url", "relative"]
    assert all(b == body for b in out.kept.column("image").to_pylist())
    assert reasons(out) == {"missing": "file_not_found", "missing_url": "file_not_found", "dir": "read_error"}
    assert ctx.stats["fetch"]["bytes_downloaded"] == 0


def test_local_file_too_large_and_too_many_pixels(tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(jpeg(300, 300))
    wide = tmp_path / "wide.png"
    wide.write_bytes(encode(Image.new("L", (500, 500)), "PNG"))
    out, _ = run_step(tmp_path, [row("big", str(big)), row("wide", str(wide))],
                      cfg(max_bytes=big.stat().st_size - 1, max_pixels=100_000))
    assert reasons(out) == {"big": "too_large", "wide": "too_large"}


# ---------------------------------------------------------------- image geometry


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied_and_boxes_follow(tmp_path, orientation):
    raw = boxed_image(64, 40)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / "rot.jpg"
    p.write_bytes(encode(raw, "JPEG", quality=98, exif=exif.tobytes()))
    out, _ = run_step(tmp_path, [row("a", str(p), objects=[obj(RED_BOX, "red"), obj([0, 0, 64, 40], "all")])])
    img = kept_image(out)
    reference = ImageOps.exif_transpose(Image.open(p))  # Pillow's own idea of upright
    assert img.size == reference.size == ((40, 64) if orientation >= 5 else (64, 40))
    assert img.getexif().get(0x0112) in (None, 1)  # no reader can rotate it twice
    diff = np.abs(np.asarray(img, dtype=int) - np.asarray(reference.convert("RGB"), dtype=int)).mean()
    assert diff < 3
    objects = out.kept.column("objects")[0].as_py()
    moved = objects[0]["bbox"]
    assert np.allclose(moved, red_bbox(img), atol=1.0), (moved, red_bbox(img))
    assert np.allclose(objects[1]["bbox"], [0, 0, *img.size])
    assert objects[0]["label"] == "red" and objects[0]["iscrowd"] is False
    assert out.kept.column("width")[0].as_py() == img.width


def test_exif_rotation_with_resize_moves_boxes(tmp_path):
    raw = boxed_image(200, 120, box=[20, 10, 60, 40])
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    p.write_bytes(encode(raw, "JPEG", quality=98, exif=exif.tobytes()))
    out, _ = run_step(tmp_path, [row("a", str(p), objects=[obj([20, 10, 60, 40])])], cfg(max_side=50))
    img = kept_image(out)
    assert img.size == (30, 50)
    moved = out.kept.column("objects")[0].as_py()[0]["bbox"]
    assert np.allclose(moved, [17.5, 5.0, 10.0, 15.0])  # computed by hand: scale 1/4, then 90 deg clockwise
    assert np.allclose(moved, red_bbox(img), atol=1.5)


def test_transform_bbox_direct():
    # 10x4 image, box [1,1,2,1]; clockwise rotation (ROTATE_270) of the 10x4 image gives a 4x10 image
    assert transform_bbox([1, 1, 2, 1], 1, 1, Image.Transpose.ROTATE_270, 10, 4) == [2, 1, 1, 2]
    assert transform_bbox([1, 1, 2, 1], 1, 1, Image.Transpose.FLIP_LEFT_RIGHT, 10, 4) == [7, 1, 2, 1]
    assert transform_bbox([1, 1, 2, 1], 0.5, 2, None, 5, 8) == [0.5, 2, 1, 2]


def test_resize_caps_longer_side_and_scales_boxes(tmp_path):
    raw = boxed_image(300, 120, box=[30, 12, 90, 48])
    p = tmp_path / "big.png"
    p.write_bytes(encode(raw, "PNG"))
    j = tmp_path / "big.jpg"
    j.write_bytes(encode(raw, "JPEG", quality=98))
    small = tmp_path / "small.jpg"
    small.write_bytes(jpeg(60, 30))
    rows = [row("png", str(p), objects=[obj([30, 12, 90, 48])]), row("jpg", str(j), objects=[obj([30, 12, 90, 48])]),
            row("small", str(small))]
    out, ctx = run_step(tmp_path, rows, cfg(max_side=100))
    for i in (0, 1):
        img = kept_image(out, i)
        assert img.size == (100, 40) and img.format == "JPEG"
        moved = out.kept.column("objects")[i].as_py()[0]["bbox"]
        assert np.allclose(moved, [10, 4, 30, 16])
        assert np.allclose(moved, red_bbox(img), atol=1.5)
    assert out.kept.column("image")[2].as_py() == small.read_bytes()  # already small: untouched
    assert ctx.stats["fetch"]["reencoded"] == 2


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "1", "P", "P-transparent", "CMYK", "I;16"])
def test_modes_are_converted_to_rgb(tmp_path, mode):
    if mode == "P-transparent":
        src = Image.new("P", (16, 8), 0)
        src.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        src.paste(1, (0, 0, 8, 8))
        src.info["transparency"] = 0
        data, fmt = encode(src, "PNG", transparency=0), "PNG"
    elif mode in ("RGBA", "LA"):
        src = Image.new(mode, (16, 8), (0, 0) if mode == "LA" else (0, 0, 0, 0))  # fully transparent black
        src.paste((255, 0, 0, 255) if mode == "RGBA" else (90, 255), (0, 0, 8, 8))
        data, fmt = encode(src, "PNG"), "PNG"
    elif mode == "CMYK":
        data, fmt = encode(Image.new("CMYK", (16, 8), (0, 255, 255, 0)), "JPEG", quality=95), "JPEG"
    elif mode == "I;16":
        data, fmt = encode(Image.new("I;16", (16, 8), 40000), "PNG"), "PNG"
    else:
        data, fmt = encode(Image.new(mode, (16, 8), 1 if mode == "1" else 128).convert(mode), "PNG"), "PNG"
    p = tmp_path / "x.img"
    p.write_bytes(data)
    out, _ = run_step(tmp_path, [row("a", str(p))])
    img = kept_image(out)
    assert img.mode == "RGB" and img.format == "JPEG" and img.size == (16, 8)
    px = np.asarray(img, dtype=int)
    if mode in ("RGBA", "LA", "P-transparent"):
        assert (px[:, 12] > 240).all()  # transparent half composited on white, not black
    if mode in ("RGBA", "P-transparent"):
        assert px[4, 3, 0] > 200 and px[4, 3, 1] < 60  # opaque half stays red
    if mode == "CMYK":
        assert px[4, 4, 0] > 200 and px[4, 4, 1] < 60  # C=0,M=Y=255 is red
    if mode == "I;16":
        assert abs(px[4, 4, 0] - 40000 // 256) <= 3  # scaled to 8 bits, not clipped at 255


def test_keep_png(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(encode(Image.new("RGBA", (16, 8), (0, 0, 255, 255)), "PNG"))
    out, _ = run_step(tmp_path, [row("a", str(p))], cfg(keep_png=True))
    img = kept_image(out)
    assert img.format == "PNG" and img.mode == "RGB"
    assert np.asarray(img)[0, 0].tolist() == [0, 0, 255]  # lossless


def test_rows_with_bytes_pass_through(tmp_path):
    body = jpeg(48, 24)
    rows = [row("a", None, image=body), row("b", "http://never.invalid/x.jpg", image=body, width=48, height=24,
                                             image_sha256="given")]
    out, ctx = run_step(tmp_path, rows)
    assert out.kept.column("image").to_pylist() == [body, body]
    assert out.kept.column("width").to_pylist() == [48, 48] and out.kept.column("height").to_pylist() == [24, 24]
    assert out.kept.column("image_sha256").to_pylist() == [hashlib.sha256(body).hexdigest(), "given"]
    assert ctx.stats["fetch"]["passthrough"] == 2 and ctx.stats["fetch"]["bytes_downloaded"] == 0

    garbage, _ = run_step(tmp_path, [row("g", None, image=b"not an image")])
    assert reasons(garbage) == {"g": "not_an_image"}


def test_rows_with_bytes_are_resized_when_asked(tmp_path):
    raw = boxed_image(200, 100, box=[20, 10, 40, 20])
    out, _ = run_step(tmp_path, [row("a", None, image=encode(raw, "PNG"), objects=[obj([20, 10, 40, 20])])],
                      cfg(max_side=100))
    img = kept_image(out)
    assert img.size == (100, 50)
    assert np.allclose(out.kept.column("objects")[0].as_py()[0]["bbox"], [10, 5, 20, 10])


def test_bad_bbox_is_rejected_with_reason(tmp_path):
    p = tmp_path / "a.jpg"
    p.write_bytes(jpeg())
    out, _ = run_step(tmp_path, [row("a", str(p), objects=[obj([1, 2, 3])])])
    assert reasons(out) == {"a": "bad_bbox"}
    assert "objects[0].bbox" in out.rejects.column("detail")[0].as_py()


def test_mixed_batch_counts_reconcile(tmp_path):
    body = jpeg()
    good = tmp_path / "g.jpg"
    good.write_bytes(body)
    with LocalServer() as srv:
        srv.route("/ok/", lambda req: Reply(200, body=body))
        srv.route("/gone/", lambda req: Reply(410, b""))
        srv.route("/html/", lambda req: Reply(200, b"<html></html>"))
        rows = []
        for i in range(30):
            kind = ["ok", "gone", "html", "file", "missing", "empty"][i % 6]
            local = {"file": str(good), "missing": str(tmp_path / f"m{i}.jpg"), "empty": ""}
            url = local[kind] if kind in local else srv.url(f"/{kind}/{i}.jpg")
            rows.append(row(f"k{i:02d}", url))
        out, ctx = run_step(tmp_path, rows)
    st = ctx.stats["fetch"]
    assert st["rows_in"] == 30 and st["ok"] == 10
    assert st["rejects"] == {"http_410": 5, "not_an_image": 5, "file_not_found": 5, "empty_url": 5}
    assert out.kept.column("key").to_pylist() == sorted(out.kept.column("key").to_pylist())


def test_missing_key_column_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="lacks column"):
        FetchStep(cfg(), ctx_for(tmp_path)).process(pa.table({"url": ["x"]}))


def test_download_cache_saves_a_rerun_with_another_config(tmp_path):
    body = encode(boxed_image(200, 100, box=[20, 10, 40, 20]), "JPEG", quality=95)
    with LocalServer() as srv:
        srv.route("/ok/", lambda req: Reply(200, body=body))
        srv.route("/gone/", lambda req: Reply(404, b""))
        srv.route("/busy/", lambda req: Reply(503, b""))
        rows = [row("a", srv.url("/ok/a.jpg")), row("b", srv.url("/gone/b.jpg")), row("c", srv.url("/busy/c.jpg"))]
        first, _ = run_step(tmp_path, rows, cfg(cache_downloads=True, retries=0))
        assert srv.count("/") == 3
        second, ctx = run_step(tmp_path, rows, cfg(cache_downloads=True, retries=0, max_side=100))
        assert srv.count("/ok/") == 1 and srv.count("/gone/") == 1  # bytes and the 404 came from the cache
        assert srv.count("/busy/") == 2  # a 503 may pass: it is asked again
    assert first.kept.column("image")[0].as_py() == body
    assert kept_image(second).size == (100, 50)
    assert reasons(second) == {"b": "http_404", "c": "http_503"}
    assert ctx.stats["fetch"]["cache_hits"] == 2
    assert len(RequestCache(tmp_path / "run" / "cache" / "fetch.sqlite")) == 2  # a part file: fetch closed it


def test_host_pause_outlives_the_batch(tmp_path):
    times = []

    def limited(req):
        times.append(time.monotonic())
        if len(times) == 1:
            return Reply(429, b"", headers={"Retry-After": "0.4"})
        return Reply(200, body=jpeg())

    with LocalServer() as srv:
        srv.route("/", limited)
        step = FetchStep(cfg(retries=0), ctx_for(tmp_path))
        first = step.process(pairs_table([row("a", srv.url("/a.jpg"))]))
        second = step.process(pairs_table([row("b", srv.url("/b.jpg"))]))
    assert reasons(first) == {"a": "http_429"} and second.kept.num_rows == 1
    assert times[1] - times[0] >= 0.35  # the next batch waited for the host, as it was told


def test_redirect_to_another_scheme_is_rejected(tmp_path):
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(302, headers={"Location": "ftp://example.org/x.jpg"}))
        out, _ = run_step(tmp_path, [row("a", srv.url("/x.jpg"))])
    assert reasons(out) == {"a": "unsupported_scheme"}


def test_local_files_are_refused_by_default_and_read_when_the_recipe_opts_in(tmp_path):
    """A public URL list must not make the run read this machine's files."""
    path = tmp_path / "x.jpg"
    Image.new("RGB", (20, 20), "red").save(path)
    rows = pairs_table([{"key": "k1", "source": "s", "url": str(path)},
                        {"key": "k2", "source": "s", "url": f"file://{path}"}])
    step = FetchStep(FetchConfig(), ctx_for(tmp_path))
    out = step.process(rows)
    assert out.kept.num_rows == 0
    assert out.rejects.column("reason").to_pylist() == ["local_file_not_allowed"] * 2
    assert step.ctx.stats["fetch"]["policy"]["allow_local_files"] is False  # the manifest records the policy
    assert FetchStep(FetchConfig(allow_local_files=True), ctx_for(tmp_path)).process(rows).kept.num_rows == 2


# ------------------------------------------------------------------ PNG data that ends early


def _png(w: int, h: int, raw: bytes, interlace: int = 0) -> bytes:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, interlace))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _adam7_raw(w: int, h: int, passes: int) -> bytes:
    """White RGB scanlines (filter byte 0) for the first ``passes`` Adam7 passes."""
    from datagen.fetch.image import _ADAM7

    out = b""
    for x0, y0, dx, dy in _ADAM7[:passes]:
        pw, ph = (w - x0 + dx - 1) // dx, (h - y0 + dy - 1) // dy
        if pw > 0 and ph > 0:
            out += (b"\x00" + b"\xff" * 3 * pw) * ph
    return out


@pytest.mark.parametrize("h", [40, 41])  # even and odd heights end the stream on different rows
def test_interlaced_png_missing_its_last_pass_is_truncated(tmp_path, h):
    full, short = _png(50, h, _adam7_raw(50, h, 7), interlace=1), _png(50, h, _adam7_raw(50, h, 6), interlace=1)
    assert Image.open(io.BytesIO(short)).load() is not None  # Pillow alone decodes it without a word
    (tmp_path / "full.png").write_bytes(full)
    (tmp_path / "short.png").write_bytes(short)
    out, _ = run_step(tmp_path, [row("full", str(tmp_path / "full.png")), row("short", str(tmp_path / "short.png"))])
    assert reasons(out) == {"short": "image_truncated"}
    assert np.asarray(kept_image(out)).min() > 240  # the complete one is all white


def test_png_with_a_black_last_row_is_checked_and_kept(tmp_path):
    """A real black bottom row triggers the exact count, which finds every byte there."""
    img = Image.new("RGB", (30, 20), "white")
    img.paste((0, 0, 0), (0, 19, 30, 20))
    (tmp_path / "a.png").write_bytes(encode(img, "PNG"))
    short = _png(30, 20, (b"\x00" + b"\xff" * 90) * 12)  # 12 of 20 rows, complete zlib stream
    (tmp_path / "b.png").write_bytes(short)
    out, _ = run_step(tmp_path, [row("a", str(tmp_path / "a.png")), row("b", str(tmp_path / "b.png"))])
    assert out.kept.column("key").to_pylist() == ["a"]
    assert reasons(out) == {"b": "image_truncated"}
    assert "holds 1092 of the 1820 bytes" in out.rejects.column("detail")[0].as_py()


@pytest.mark.parametrize("threads", [1, 0])
def test_bodies_waiting_for_the_decode_threads_are_bounded(tmp_path, monkeypatch, threads):
    """The network outruns a slow decode: rows downloaded and not yet decoded stay within the download
    slots plus DECODE_BACKLOG rows per decode thread, instead of the whole batch's bodies piling up. With
    no decode thread (the loop's thread decodes each body as it arrives), within the download slots."""
    from datagen.fetch import step as step_mod
    from datagen.fetch.http import Downloader

    body, decode = jpeg(), step_mod.process_image
    downloaded = decoded = most = 0
    get = Downloader.get

    async def counting_get(self, url):
        nonlocal downloaded, most
        got = await get(self, url)
        downloaded += 1
        most = max(most, downloaded - decoded)
        return got

    def slow_decode(*args):  # slow enough that the slots fill up on a busy machine too (60 x 20 ms in all)
        nonlocal decoded
        time.sleep(0.02)
        try:
            return decode(*args)
        finally:
            decoded += 1

    monkeypatch.setattr(Downloader, "get", counting_get)
    monkeypatch.setattr(step_mod, "process_image", slow_decode)
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(200, body=body))
        rows = [row(f"k{i}", srv.url(f"/{i}.jpg")) for i in range(60)]
        out, _ = run_step(tmp_path, rows, cfg(concurrency=4, per_host_concurrency=4, workers=threads))
    assert out.kept.num_rows == 60
    assert (4 if threads else 1) <= most <= 4 + step_mod.DECODE_BACKLOG * threads
