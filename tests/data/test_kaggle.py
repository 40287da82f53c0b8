"""kaggle:dogs-vs-cats: the book's split from an archive, unsafe archives, and Kaggle's errors.

Only the network boundary is mocked (the API's download call); credentials are made
absent by running in a subprocess with an empty home directory.
"""

import os
import subprocess
import sys
import zipfile

import pytest

from xtune.data import DataError, prepare_data

from .images import image_bytes, kaggle_zip

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


def _indices(prepared, split, cls):
    return sorted(int(p.name.split(".")[1]) for p in (prepared.root / split / cls).iterdir())


def test_archive_gives_the_books_split_scaled_down(tmp_path, data_dir):
    archive = kaggle_zip(tmp_path / "dogs-vs-cats.zip", per_class=24,
                         inner_extra={"train/cat.3.jpg.bak": b"stray"})
    prepared = prepare_data("kaggle:dogs-vs-cats", data_dir=data_dir, archive=archive, kaggle_split=(10, 5, 5))
    assert prepared.source == "kaggle:dogs-vs-cats"
    assert prepared.class_names == ("cat", "dog")
    for cls in ("cat", "dog"):
        assert _indices(prepared, "train", cls) == list(range(10))
        assert _indices(prepared, "validation", cls) == list(range(10, 15))
        assert _indices(prepared, "test", cls) == list(range(15, 20))
    assert prepared.settings["split_sizes"] == [10, 5, 5]
    assert prepared.root.name == "dogs-vs-cats-10-5-5"
    # The same path, given the inner train.zip directly.
    inner = kaggle_zip(tmp_path / "train.zip", per_class=24, nested=False)
    again = prepare_data("kaggle:dogs-vs-cats", data_dir=data_dir, archive=inner, kaggle_split=(10, 5, 5),
                         overwrite=True)
    assert again.fingerprint == prepared.fingerprint
    assert not list(tmp_path.glob("xtune-data/prepared/.*"))  # no temporary folder left (train.zip copy included)


def test_a_bad_image_in_the_archive_is_skipped_and_reported(tmp_path, data_dir):
    jpeg = image_bytes(size=40)
    inner = kaggle_zip(tmp_path / "train.zip", per_class=8, nested=False)
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(inner) as src, zipfile.ZipFile(damaged, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, jpeg[: len(jpeg) // 2] if info.filename == "train/dog.6.jpg" else data)
    prepared = prepare_data("kaggle:dogs-vs-cats", data_dir=data_dir, archive=damaged, kaggle_split=(4, 2, 2))
    assert [(s.path, s.reason) for s in prepared.skipped] == [("train/dog.6.jpg", "truncated JPEG")]
    assert prepared.counts["test"] == {"cat": 2, "dog": 1}


@pytest.mark.parametrize("where", ["outer", "inner"])
@pytest.mark.parametrize("member", ["../evil.jpg", "train/../../evil.jpg", "/tmp/evil.jpg"])
def test_an_archive_with_an_escaping_member_is_refused_with_nothing_written(tmp_path, data_dir, where, member):
    extra = {member: image_bytes()}
    archive = kaggle_zip(tmp_path / "in" / "dogs-vs-cats.zip", per_class=8,
                         **({"extra": extra} if where == "outer" else {"inner_extra": extra}))
    with pytest.raises(DataError, match=r"refusing .*would be written outside the target folder"):
        prepare_data("kaggle:dogs-vs-cats", data_dir=data_dir, archive=archive, kaggle_split=(4, 2, 2))
    assert list((data_dir / "prepared").iterdir()) == []
    assert not list(tmp_path.rglob("evil.jpg"))


def test_an_archive_with_a_symlink_member_is_refused(tmp_path, data_dir):
    archive = kaggle_zip(tmp_path / "dogs-vs-cats.zip", per_class=8)
    with zipfile.ZipFile(archive, "a") as zf:
        info = zipfile.ZipInfo("train/link.jpg")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="is a symbolic link"):
        prepare_data("kaggle:dogs-vs-cats", data_dir=data_dir, archive=archive, kaggle_split=(4, 2, 2))


@pytest.mark.parametrize("make,match", [
    (lambda p: p.write_bytes(b"not a zip"), "is not a readable zip archive"),
    (lambda p: kaggle_zip(p, per_class=5), "has 5 cat images; the split asked for needs 8 per class"),
    (lambda p: zipfile.ZipFile(p, "w").writestr("readme.txt", "hi"), "neither Kaggle's dogs-vs-cats.zip nor"),
])
def test_a_wrong_archive_is_one_clear_error(tmp_path, data_dir, make, match):
    path = tmp_path / "dogs-vs-cats.zip"
    make(path)
    with pytest.raises(DataError, match=match):
        prepare_data("kaggle:dogs-vs-cats", data_dir=data_dir, archive=path, kaggle_split=(4, 2, 2))
    assert list((data_dir / "prepared").iterdir()) == []


def _no_credentials_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    home = tmp_path / "home"
    home.mkdir()
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), KAGGLE_CONFIG_DIR=str(home / ".kaggle"),
               PYTHONPATH=os.pathsep.join(filter(None, [os.path.abspath(SRC), env.get("PYTHONPATH")])))
    return env


def test_missing_credentials_say_where_the_token_goes(tmp_path, data_dir):
    out = subprocess.run([sys.executable, "-m", "xtune", "data", "prepare", "kaggle:dogs-vs-cats",
                          "--data-dir", str(data_dir)], capture_output=True, text=True, env=_no_credentials_env(tmp_path),
                         timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "no Kaggle credentials found" in lines[0] and "~/.kaggle/kaggle.json" in lines[0]
    assert "KAGGLE_USERNAME" in lines[0] and "Traceback" not in out.stderr
    assert out.stdout == ""
    assert list((data_dir / "prepared").iterdir()) == []
    assert not (data_dir / "downloads" / "dogs-vs-cats.zip").exists()


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if it opens a network connection (the kaggle client checks tokens over HTTPS).

    Connections are refused and recorded; the test fails at teardown even if the code
    under test caught the refusal and carried on.
    """
    import socket

    attempts = []

    def refuse(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise ConnectionRefusedError(f"this test may not reach the network ({address})")
        return real_connect(self, address, *args)

    def resolve(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror(f"this test may not resolve {host}")

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    yield attempts
    assert attempts == [], f"the test tried to reach the network: {attempts}"


@pytest.fixture
def kaggle_api(monkeypatch, tmp_path, no_network):
    """The real KaggleApi with (fake) legacy credentials, isolated like the subprocess test above.

    kaggle 2.x tries an access token first (KAGGLE_API_TOKEN, ~/.kaggle/access_token) and
    checks it over HTTPS, then OAuth credentials in ~/.kaggle: with the machine's own
    home and KAGGLE_* variables, a developer's token would send these tests to Kaggle.
    So every KAGGLE_* variable goes, HOME is an empty folder, and only the fake
    username and key remain. The download call is ours to replace.
    """
    for name in [k for k in os.environ if k.startswith("KAGGLE_")]:
        monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef")
    from kaggle.api.kaggle_api_extended import KaggleApi

    # Where it looks for kaggle.json is fixed when kaggle is first imported (maybe by an earlier test).
    monkeypatch.setattr(KaggleApi, "config_dir", str(home / ".kaggle"))
    monkeypatch.setattr(KaggleApi, "config", str(home / ".kaggle" / "kaggle.json"))
    return KaggleApi


def _http_error(status):
    import requests

    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} Client Error", response=response)


@pytest.mark.parametrize("error,match", [
    (lambda: _http_error(403), "accept the competition's rules at https://www.kaggle.com/c/dogs-vs-cats/rules"),
    (lambda: _http_error(401), "refused the credentials .* ~/.kaggle/kaggle.json"),
    (lambda: __import__("requests").ConnectionError("Name or service not known"),
     "cannot reach Kaggle .* --archive PATH"),
])
def test_kaggle_refusals_become_one_line_saying_what_to_do(kaggle_api, monkeypatch, data_dir, error, match):
    def download(self, competition, path=None, **kwargs):
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "dogs-vs-cats.zip"), "wb") as f:
            f.write(b"PK\x03\x04 half")  # what an interrupted download leaves
        raise error()

    monkeypatch.setattr(kaggle_api, "competition_download_files", download)
    with pytest.raises(DataError, match=match) as raised:
        prepare_data("kaggle:dogs-vs-cats", data_dir=data_dir)
    assert "\n" not in str(raised.value)
    assert not (data_dir / "downloads" / "dogs-vs-cats.zip").exists()  # the partial file is not taken
    assert list((data_dir / "prepared").iterdir()) == []


def test_a_completed_download_is_renamed_into_place_and_used(kaggle_api, monkeypatch, data_dir, tmp_path):
    calls = []

    def download(self, competition, path=None, **kwargs):
        calls.append(competition)
        kaggle_zip(tmp_path / "served.zip", per_class=8)
        os.makedirs(path, exist_ok=True)
        os.replace(tmp_path / "served.zip", os.path.join(path, "dogs-vs-cats.zip"))

    monkeypatch.setattr(kaggle_api, "competition_download_files", download)
    prepared = prepare_data("kaggle:dogs-vs-cats", data_dir=data_dir, kaggle_split=(4, 2, 2))
    assert calls == ["dogs-vs-cats"] and prepared.sizes == {"train": 8, "validation": 4, "test": 4}
    assert sorted(p.name for p in (data_dir / "downloads").iterdir()) == ["dogs-vs-cats.zip"]
    prepare_data("kaggle:dogs-vs-cats", data_dir=data_dir, kaggle_split=(3, 2, 2))  # new split: no new download
    assert calls == ["dogs-vs-cats"]


def test_a_download_that_is_not_a_complete_zip_is_not_used(kaggle_api, monkeypatch, data_dir):
    def download(self, competition, path=None, **kwargs):
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "dogs-vs-cats.zip"), "wb") as f:
            f.write(b"PK\x03\x04 cut short")

    monkeypatch.setattr(kaggle_api, "competition_download_files", download)
    with pytest.raises(DataError, match="incomplete or damaged"):
        prepare_data("kaggle:dogs-vs-cats", data_dir=data_dir)
    assert not (data_dir / "downloads" / "dogs-vs-cats.zip").exists()


def test_a_damaged_download_is_removed_so_the_next_run_downloads_again(kaggle_api, monkeypatch, data_dir):
    def download(self, competition, path=None, **kwargs):
        os.makedirs(path, exist_ok=True)
        with zipfile.ZipFile(os.path.join(path, "dogs-vs-cats.zip"), "w") as zf:
            zf.writestr("readme.txt", "not the competition data")

    monkeypatch.setattr(kaggle_api, "competition_download_files", download)
    with pytest.raises(DataError, match="the download was removed: run the same command"):
        prepare_data("kaggle:dogs-vs-cats", data_dir=data_dir)
    assert not (data_dir / "downloads" / "dogs-vs-cats.zip").exists()
