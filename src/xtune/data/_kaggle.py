"""Downloading Kaggle's dogs-vs-cats competition data.

The ``kaggle`` package authenticates when it is imported (and prints help or exits
when it cannot), so it is imported here only, inside the one function that downloads.
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

from xtune.data._store import disk_full, remove
from xtune.errors import DataError

COMPETITION = "dogs-vs-cats"
ARCHIVE_NAME = "dogs-vs-cats.zip"
RULES_URL = "https://www.kaggle.com/c/dogs-vs-cats/rules"
DATA_URL = "https://www.kaggle.com/c/dogs-vs-cats/data"
TOKEN_HELP = ("create an API token at https://www.kaggle.com/settings (API, Create New Token) and save it as "
              "~/.kaggle/kaggle.json, or set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN)")
OFFLINE_HELP = f"or download {ARCHIVE_NAME} from {DATA_URL} and pass it with --archive PATH"


def download_competition(downloads: Path, progress: Callable[[str], None] | None = None) -> Path:
    """The competition archive in ``downloads``, downloaded unless a complete one is there.

    The download goes into ``dogs-vs-cats.zip.part/`` (where the kaggle client can
    resume it) and is renamed to ``dogs-vs-cats.zip`` only once it is a complete zip.

    Raises:
        DataError: No credentials, rules not accepted, no network, a damaged download.
    """
    final = downloads / ARCHIVE_NAME
    if final.is_file() and zipfile.is_zipfile(final):
        return final
    part = downloads / (ARCHIVE_NAME + ".part")
    api = _authenticated_api()
    if progress:
        progress(f"downloading {COMPETITION} from Kaggle (about 800 MB) into {part}")
    try:
        part.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(io.StringIO()):
            api.competition_download_files(COMPETITION, path=str(part), quiet=True)
    except SystemExit:
        raise DataError(f"no Kaggle credentials found: {TOKEN_HELP}") from None
    except Exception as error:
        raise _download_error(error) from None
    got = part / ARCHIVE_NAME
    if not got.is_file():
        zips = sorted(part.glob("*.zip"))
        got = zips[0] if zips else got
    if not (got.is_file() and zipfile.is_zipfile(got)):
        raise DataError(f"the download of {COMPETITION} is incomplete or damaged ({part}); run the same command "
                        f"again, {OFFLINE_HELP}")
    os.replace(got, final)
    remove(part)
    return final


def _authenticated_api():
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ImportError:
        raise DataError(f"the kaggle package is not installed (pip install kaggle), {OFFLINE_HELP}") from None
    except SystemExit:
        raise DataError(f"no Kaggle credentials found: {TOKEN_HELP}") from None
    except Exception as error:
        raise _download_error(error) from None
    return api


def _download_error(error: BaseException) -> DataError:
    """One line that says what to do about a failed Kaggle call."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status == 401:
        return DataError(f"Kaggle refused the credentials (401 Unauthorized): {TOKEN_HELP}")
    if status == 403:
        return DataError(f"Kaggle refused the download (403 Forbidden): accept the competition's rules at "
                         f"{RULES_URL} with the account of your API token, then run the same command again")
    if status == 404:
        return DataError(f"Kaggle has no competition {COMPETITION!r} for this account (404), {OFFLINE_HELP}")
    if isinstance(error, OSError) and disk_full(error):
        return DataError(f"disk full while downloading {COMPETITION}; free some space and run the same command again")
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & {"ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout", "ProxyError", "SSLError",
                "NewConnectionError", "MaxRetryError", "socket.gaierror", "gaierror", "TimeoutError"}:
        return DataError(f"cannot reach Kaggle ({type(error).__name__}): check the network connection, {OFFLINE_HELP}")
    detail = " ".join(str(error).split())[:120]
    code = f" (HTTP {status})" if status else ""
    return DataError(f"downloading {COMPETITION} from Kaggle failed{code}: {type(error).__name__}: {detail}; "
                     f"{OFFLINE_HELP}")
