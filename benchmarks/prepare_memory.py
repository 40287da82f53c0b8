"""Peak memory of `tune data prepare` on hostile inputs, against clean inputs of as many images, in one run.

Each input is prepared by a fresh ``python -m xtune data prepare ...`` process; the figure
is that process's peak resident memory (``ru_maxrss``, from ``os.wait4`` on it). The
hostile inputs (issue "Trust at the edges", part 4), each with the ordinary images:

- ``zip-member``: a train.zip of about 1 MB with a member that inflates to 1 GiB;
- ``zip-member-nested``: the same train.zip inside a dogs-vs-cats.zip;
- ``nested-zip-bomb``: a dogs-vs-cats.zip whose train.zip inflates to 1 GiB (1000:1);
- ``dev-zero``: a class "image" that is a symbolic link to /dev/zero;
- ``fifo``: a named pipe in a class folder;
- ``oversize``: a 1 GiB file (sparse) in a class folder;
- ``decode-bomb``: a 196-megapixel black PNG (24 kB), over Pillow's bomb limit.

And two the issue does not list, measured to show where the bound is: ``decode-near-limit``,
a 169-megapixel 1-bit PNG (20 kB), under Pillow's bomb limit, so decoded and converted to
RGB; ``decode-near-limit-x3``, three of them, which the scan's threads must decode one at
a time (``xtune.data._scan.DECODE_BUDGET``), so the peak stays that of one.

Baselines (same run, same command): the folder, train.zip or dogs-vs-cats.zip with the
same ordinary images and nothing hostile. Goal: every input of the issue under 500 MB.

    python -m benchmarks.prepare_memory [--images 24] [--timeout 300]
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from pathlib import Path

from benchmarks._common import dump, write_result
from benchmarks.pipeline import make_jpegs

GOAL_MB = 500
SPLIT = "4,2,2"  # --split-sizes of the archive inputs: 8 images per class
PER_CLASS = 8


def peak_rss_mb(cmd: list[str], timeout: float) -> dict:
    """Run ``cmd``; its peak RSS (MB), exit code, last output line and seconds (None: killed at ``timeout``)."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
        out.seek(0)
        output = out.read().decode(errors="replace")
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    killed = proc.returncode < 0
    return {"peak_rss_mb": round(usage.ru_maxrss * scale / 1e6, 1), "exit_code": proc.returncode,
            "seconds": None if killed and seconds >= timeout else round(seconds, 2), "output": output}


def _outcome(output: str, name: str) -> str:
    """What the run said about the hostile file: its skip line, or the error."""
    for line in output.splitlines():
        if line.startswith("Error:") or (name and line.startswith(name + " ")):
            return " ".join(line.split())
    return "(no line about it)"


# ---------------------------------------------------------------------------- inputs


def _zip_bomb_member(zf: zipfile.ZipFile, name: str, size: int) -> None:
    """A member of ``size`` zero bytes, deflated by stream (about 1 MB for 1 GiB)."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    block = bytes(1 << 20)
    with zf.open(info, "w", force_zip64=True) as dst:
        for _ in range(size // len(block)):
            dst.write(block)


def _train_zip(path: Path, images: Path, bomb: str | None = None) -> Path:
    """A Kaggle train.zip (train/cat.N.jpg, train/dog.N.jpg) from ``images``; ``bomb`` inflates to 1 GiB."""
    files = {cls: sorted((images / cls).iterdir()) for cls in ("cat", "dog")}
    with zipfile.ZipFile(path, "w") as zf:
        for cls, found in files.items():
            for i, src in enumerate(found[:PER_CLASS]):
                name = f"train/{cls}.{i}.jpg"
                if name == bomb:
                    _zip_bomb_member(zf, name, 1 << 30)
                else:
                    zf.write(src, name)
    return path


def _outer_zip(path: Path, train_zip: Path | None, bomb: bool = False) -> Path:
    """A dogs-vs-cats.zip holding ``train_zip``, or (``bomb``) a train.zip that inflates to 1 GiB."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("sampleSubmission.csv", "id,label\n1,0\n")
        if bomb:
            _zip_bomb_member(zf, "train.zip", 1 << 30)
        else:
            zf.write(train_zip, "train.zip")
    return path


def _png(side: int) -> bytes:
    """A valid black 1-bit PNG of ``side`` x ``side`` pixels, compressed by stream."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row * min(1000, side - y)) for y in range(0, side, 1000)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _with(clean: Path, dst: Path, add) -> Path:
    shutil.copytree(clean, dst, symlinks=True)
    add(dst / "cat")
    return dst


def _write(folder: Path, names: list[str], data: bytes) -> None:
    for name in names:
        (folder / name).write_bytes(data)


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def build_inputs(root: Path, images: int) -> tuple[dict, dict]:
    """(baselines, cases): name -> (args of `tune data prepare`, the hostile file's path in the output, baseline)."""
    clean = root / "clean-folder"
    make_jpegs(clean, images)
    base = {
        "clean-folder": [str(clean)],
        "clean-train-zip": ["kaggle:dogs-vs-cats", "--archive", str(_train_zip(root / "train.zip", clean)),
                            "--split-sizes", SPLIT],
    }
    base["clean-dogs-vs-cats-zip"] = ["kaggle:dogs-vs-cats", "--archive",
                                      str(_outer_zip(root / "dogs-vs-cats.zip", root / "train.zip")),
                                      "--split-sizes", SPLIT]
    near = _png(13000)
    member = "train/cat.0.jpg"
    bomb_zip = _train_zip(root / "bomb-train.zip", clean, bomb=member)
    kaggle = ["kaggle:dogs-vs-cats", "--archive"]
    cases = {
        "zip-member": (kaggle + [str(bomb_zip), "--split-sizes", SPLIT], member, "clean-train-zip"),
        "zip-member-nested": (kaggle + [str(_outer_zip(root / "nested.zip", bomb_zip)), "--split-sizes", SPLIT],
                              member, "clean-dogs-vs-cats-zip"),
        "nested-zip-bomb": (kaggle + [str(_outer_zip(root / "nested-bomb.zip", None, bomb=True)),
                                      "--split-sizes", SPLIT], "", "clean-dogs-vs-cats-zip"),
        "dev-zero": ([str(_with(clean, root / "dev-zero", lambda cat: os.symlink("/dev/zero", cat / "zero.jpg")))],
                     "cat/zero.jpg", "clean-folder"),
        "fifo": ([str(_with(clean, root / "fifo", lambda cat: os.mkfifo(cat / "pipe.jpg")))], "cat/pipe.jpg",
                 "clean-folder"),
        "oversize": ([str(_with(clean, root / "oversize", lambda cat: _sparse(cat / "huge.jpg", 1 << 30)))],
                     "cat/huge.jpg", "clean-folder"),
        "decode-bomb": ([str(_with(clean, root / "decode-bomb", lambda cat: _write(cat, ["bomb.png"], _png(14000))))],
                        "cat/bomb.png", "clean-folder"),
        "decode-near-limit": ([str(_with(clean, root / "near-limit", lambda cat: _write(cat, ["big.png"], near)))],
                              "cat/big.png", "clean-folder"),
        "decode-near-limit-x3": ([str(_with(clean, root / "near-limit-x3",
                                            lambda cat: _write(cat, ["big1.png", "big2.png", "big3.png"], near)))],
                                 "cat/big1.png", "clean-folder"),
    }
    return base, cases


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="ordinary images in each folder input")
    parser.add_argument("--timeout", type=float, default=300, help="seconds before a run counts as a hang")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="xtune-prepare-memory-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        baselines, cases = build_inputs(root, args.images)
        build_s = time.perf_counter() - started

        def prepare(name: str, prepare_args: list[str]) -> dict:
            data_dir = root / "data" / name  # a fresh data directory: every run prepares
            cmd = [sys.executable, "-m", "xtune", "data", "prepare", *prepare_args, "--data-dir", str(data_dir)]
            return peak_rss_mb(cmd, args.timeout)

        base = {name: prepare(name, a) for name, a in baselines.items()}
        results = []
        for name, (prepare_args, hostile, baseline) in cases.items():
            run = prepare(name, prepare_args)
            b = base[baseline]
            results.append({
                "input": name, "peak_rss_mb": run["peak_rss_mb"], "baseline": baseline,
                "baseline_peak_rss_mb": b["peak_rss_mb"], "ratio": round(run["peak_rss_mb"] / b["peak_rss_mb"], 3),
                "exit_code": run["exit_code"], "seconds": run["seconds"], "baseline_seconds": b["seconds"],
                "outcome": _outcome(run["output"], hostile), "in_issue": not name.startswith("decode-near-limit"),
            })
            print(f"{name}: {run['peak_rss_mb']:.0f} MB (baseline {b['peak_rss_mb']:.0f} MB), "
                  f"exit {run['exit_code']}: {results[-1]['outcome']}", flush=True)
    issue = [r for r in results if r["in_issue"]]
    worst = max(issue, key=lambda r: r["peak_rss_mb"])
    result = {
        "images": args.images,
        "archive_images_per_class": PER_CLASS,
        "goal_mb": GOAL_MB,
        "build_inputs_s": round(build_s, 1),
        "baselines": {name: {k: v for k, v in r.items() if k != "output"} for name, r in base.items()},
        "results": results,
        "worst": worst["input"],
        "all_under_goal": all(r["peak_rss_mb"] < GOAL_MB and r["seconds"] is not None for r in issue),
    }
    write_result("prepare_memory", result)
    dump(result)
    return result


if __name__ == "__main__":
    main()
