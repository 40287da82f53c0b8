"""Tiny generated images, folders and Kaggle-layout archives (nothing touches the network)."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

COLORS = {"cat": (200, 40, 40), "dog": (40, 40, 200), "bird": (40, 200, 40)}


def image_bytes(fmt: str = "JPEG", mode: str = "RGB", size: int = 16, seed: int = 0, color=(128, 128, 128)) -> bytes:
    """One small image, encoded: noise around ``color``, in any Pillow mode."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.clip(np.array(color, dtype=np.int16) + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(base, "RGB")
    if mode == "I;16":
        img = Image.fromarray(base[..., 0].astype(np.uint16) * 257)
    elif mode == "RGBA":
        img = img.convert("RGBA")
        img.putpixel((0, 0), (0, 0, 0, 0))  # one transparent pixel
    elif mode != "RGB":
        img = img.convert(mode)
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_classes_folder(root: Path, classes=("cat", "dog"), per_class: int = 12, size: int = 16) -> Path:
    """FOLDER/<class>/<images>: PNGs and JPEGs, a class color each."""
    for c, cls in enumerate(classes):
        for i in range(per_class):
            fmt, ext = ("PNG", "png") if i % 2 else ("JPEG", "jpg")
            write(root / cls / f"{cls}_{i:03d}.{ext}", image_bytes(fmt, size=size, seed=100 * c + i,
                                                                  color=COLORS.get(cls, (128, 128, 128))))
    return root


def make_split_folder(root: Path, classes=("cat", "dog"), per_split=(6, 3, 3), size: int = 16) -> Path:
    """FOLDER/{train,validation,test}/<class>/<images>."""
    for split, n in zip(("train", "validation", "test"), per_split):
        for c, cls in enumerate(classes):
            for i in range(n):
                # A seed of its own per image, the same in every process (hash() of a str is not).
                write(root / split / cls / f"{split}_{cls}_{i}.png",
                      image_bytes("PNG", size=size, seed=zlib.crc32(f"{split}/{c}/{i}".encode()),
                                  color=COLORS.get(cls, (9, 9, 9))))
    return root


def good_jpeg(seed: int = 0, size: int = 32) -> bytes:
    return image_bytes("JPEG", size=size, seed=seed)


# name in a class folder -> (bytes, the reason it is skipped, or the original it is converted from)
def bad_files() -> dict[str, tuple[bytes, str]]:
    jpeg = good_jpeg(seed=7, size=48)
    rng = np.random.default_rng(3)
    return {
        "notes.jpg": (b"these are my notes, not a picture\n", "skip:not an image"),
        "empty.jpg": (b"", "skip:zero-byte file"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "skip:truncated JPEG"),
        "corrupt.png": (_corrupt_png(), "skip:corrupt PNG"),
        "garbage.jpg": (b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 600, dtype=np.uint8).tobytes(),
                        "skip:truncated JPEG"),
        ".hidden.jpg": (good_jpeg(seed=8), "skip:hidden file"),
        "gray.jpg": (image_bytes("JPEG", "L", seed=9), "convert:JPEG L"),
        "rgba.png": (image_bytes("PNG", "RGBA", seed=10), "convert:PNG RGBA"),
        "palette.png": (image_bytes("PNG", "P", seed=11), "convert:PNG P"),
        "cmyk.jpg": (image_bytes("JPEG", "CMYK", seed=12), "convert:JPEG CMYK"),
        "sixteen.png": (image_bytes("PNG", "I;16", seed=13), "convert:PNG I;16 16-bit"),
    }


def _corrupt_png() -> bytes:
    """A PNG whose image data was damaged (its checksum no longer matches)."""
    data = bytearray(image_bytes("PNG", size=24, seed=5))
    at = data.index(b"IDAT") + 20
    data[at:at + 16] = bytes(16)
    return bytes(data)


def make_bad_folder(root: Path, per_class: int = 8) -> Path:
    """Class folders with good images, one bad file of each kind in ``cat``, and an empty class."""
    make_classes_folder(root, per_class=per_class)
    for name, (data, _) in bad_files().items():
        write(root / "cat" / name, data)
    (root / "empty").mkdir()
    return root


def kaggle_zip(path: Path, per_class: int, nested: bool = True, extra: dict | None = None,
               inner_extra: dict | None = None) -> Path:
    """A Kaggle-layout dogs-vs-cats.zip (train.zip inside: train/cat.N.jpg, train/dog.N.jpg), or a train.zip."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        for cls in ("cat", "dog"):
            for i in range(per_class):
                zf.writestr(f"train/{cls}.{i}.jpg", image_bytes(seed=i + (0 if cls == "cat" else 500),
                                                                color=COLORS[cls]))
        for name, data in (inner_extra or {}).items():
            zf.writestr(name, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not nested:
        path.write_bytes(inner.getvalue())
        return path
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("sampleSubmission.csv", "id,label\n1,0\n")
        test1 = io.BytesIO()
        with zipfile.ZipFile(test1, "w") as t:
            t.writestr("test1/1.jpg", good_jpeg())
        zf.writestr("test1.zip", test1.getvalue())
        zf.writestr("train.zip", inner.getvalue())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def bomb_png(side: int = 14000) -> bytes:
    """A complete, valid, black 1-bit PNG of ``side`` x ``side`` pixels.

    By default 196 megapixels, over Pillow's decompression-bomb limit: 24 kB of file.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (side + 7) // 8)  # filter byte "none", then the bits
    packer = zlib.compressobj(9)
    block = row * 1000
    idat = b"".join(packer.compress(block) for _ in range(side // 1000))
    idat += packer.compress(row * (side % 1000)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def set_declared_size(path: Path, member: str, size: int) -> None:
    """Make a zip member declare ``size`` bytes (local header and central directory), whatever it holds."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        local = zf.getinfo(member).header_offset
    struct.pack_into("<I", data, local + 22, size)
    at = data.find(b"PK\x01\x02")
    while at != -1:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46:at + 46 + name_len] == member.encode():
            struct.pack_into("<I", data, at + 24, size)
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))
