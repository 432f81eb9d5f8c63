"""Files of downloaded datasets: where they are looked for, how they are downloaded (to a
temporary file, verified against the published checksum, renamed into the cache) and which
mirror serves them. The formats that use it: idx.py (MNIST, Fashion-MNIST) and cifar.py."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Mapping, Sequence

from noisysim.errors import NoisysimError

log = logging.getLogger("noisysim.data")

_DEBIAN_DATASETS = Path("/usr/share/datasets")
#: data sets Debian packages into /usr/share/datasets/<name>/ (name -> package)
_DEBIAN_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}
_CHUNK = 1 << 20


def cache_dir(name: str | None = None) -> Path:
    """The download cache: ``$NOISYSIM_CACHE``, else ``$XDG_CACHE_HOME/noisysim``, else
    ``~/.cache/noisysim``; with ``name``, that dataset's sub-folder."""
    env = os.environ.get("NOISYSIM_CACHE")
    if env:
        root = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "noisysim"
    return root / name if name else root


def _search_dirs(name: str, data_dir) -> list[Path]:
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir).expanduser())
    for p in os.environ.get("NOISYSIM_DATA", "").split(os.pathsep):
        if p:
            dirs.append(Path(p).expanduser() / name)
    dirs.append(_DEBIAN_DATASETS / name)
    dirs.append(cache_dir(name))
    return dirs


def download_file(url: str, dest: str | os.PathLike, checksums: Sequence[str],
                  *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically, accepting it only if it matches one of
    ``checksums`` (strings ``"md5:<hex>"`` or ``"sha256:<hex>"``).

    The data go to a temporary file next to ``dest`` which is renamed onto ``dest`` only
    after verification; on any failure the temporary file is removed. Network failures raise
    ``OSError`` (``urllib.error.URLError``); a checksum mismatch raises ``NoisysimError``.
    """
    dest = Path(dest)
    wanted = []
    for c in checksums:
        algo, _, hexd = str(c).partition(":")
        if algo not in ("md5", "sha256") or not hexd:
            raise NoisysimError(f"checksum must look like 'md5:<hex>' or 'sha256:<hex>', got {c!r}")
        wanted.append((algo, hexd.lower()))
    if not wanted:
        raise NoisysimError(f"refusing to download {url} without a checksum to verify")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            req = urllib.request.Request(url, headers={"User-Agent": "noisysim"})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    md5.update(chunk)
                    sha.update(chunk)
        found = {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}
        if not any(found[a] == h for a, h in wanted):
            algo, exp = wanted[0]
            raise NoisysimError(
                f"checksum mismatch for {dest.name} downloaded from {url}: expected {algo} "
                f"{exp}, found {found[algo]}; the download was deleted - retry, use another "
                f"mirror, or place a verified copy in {dest.parent}"
            )
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a cache may be shared
        os.replace(tmp, dest)
        return dest
    finally:
        if tmp.exists():
            tmp.unlink()


def _mirrors(name: str, mirror, defaults: Sequence[str]) -> list[str]:
    if mirror is not None:
        return [_as_url_dir(str(mirror))]
    env = os.environ.get("NOISYSIM_MIRROR")
    if env:
        return [_as_url_dir(env) + urllib.parse.quote(name) + "/"]
    return list(defaults)


def _as_url_dir(base: str) -> str:
    if "://" not in base:  # a plain path: turn it into a file:// URL
        base = Path(base).expanduser().resolve().as_uri()
    return base if base.endswith("/") else base + "/"


def _locate(name: str, files: Mapping[str, Sequence[str]], opts: dict,
            mirrors: Sequence[str], accept: Callable[[Path, str], Path | None] | None = None,
            ) -> dict[str, Path]:
    """Paths of all ``files`` (name -> accepted checksums) of dataset ``name``.

    The first search folder that holds every file wins (``accept(folder, file)`` may return
    an alternative path, e.g. an uncompressed copy); otherwise missing files are downloaded
    into the cache.
    """
    accept = accept or (lambda d, f: d / f if (d / f).is_file() else None)
    dirs = _search_dirs(name, opts.get("data_dir"))
    partial = []
    for d in dirs:
        found = {f: accept(d, f) for f in files}
        if all(found.values()):
            return found
        if any(found.values()):
            partial.append(str(d))
    cache = cache_dir(name)
    found = {f: accept(cache, f) for f in files}
    missing = [f for f, p in found.items() if p is None]
    where = f"$NOISYSIM_DATA/{name}/ or {cache}/"
    if name in _DEBIAN_PACKAGES:  # offline machines: Debian ships it
        where += f" (on Debian: apt-get install {_DEBIAN_PACKAGES[name]})"
    if not opts.get("download", True):
        raise NoisysimError(
            f"{name}: files not found ({', '.join(missing)}); searched "
            f"{', '.join(map(str, dirs))}; download=False, so place the files in {where}"
            + (f" (incomplete: {', '.join(partial)})" if partial else "")
        )
    mirrors = _mirrors(name, opts.get("mirror"), mirrors)
    for f in missing:
        errors = []
        for base in mirrors:
            url = base + urllib.parse.quote(f)
            log.info("downloading %s", url)
            try:
                found[f] = download_file(url, cache / f, files[f])
                break
            except (OSError, ValueError, http.client.HTTPException) as exc:
                if isinstance(exc, NoisysimError):
                    raise
                errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
        else:
            raise NoisysimError(
                f"{name}: cannot find or download {f} ({'; '.join(errors)}); place the files "
                f"{', '.join(files)} in {where} (or set NOISYSIM_MIRROR / mirror=)"
            )
    return found
