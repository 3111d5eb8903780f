"""Where a vendor's CRL comes from: a file the operator keeps current, or a URL the vendor
publishes it at. Read again when the file changes or the URL's copy nears its nextUpdate
(at most every ``URL_REFRESH``); a CRL that cannot be read refuses the enrollment."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from fleet.errors import ManufacturerCertificateError

URL_REFRESH = timedelta(minutes=5)
URL_TIMEOUT_SECONDS = 5.0
MAX_CRL_BYTES = 4 * 1024 * 1024


def parse_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL in DER or PEM; ValueError otherwise."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data.strip())
    return x509.load_der_x509_crl(data)


@dataclass(frozen=True, slots=True)
class _Cached:
    key: object  # the file's (mtime, size), or when the URL was fetched
    crl: x509.CertificateRevocationList


class VendorCrls:
    """The vendors' CRLs, cached per source."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, _Cached] = {}

    def crl(self, *, vendor: str, url: str | None, file: str | None,
            now: datetime) -> x509.CertificateRevocationList:
        source = url or file
        assert source is not None
        with self._lock:
            cached = self._cache.get(source)
        try:
            if file is not None:
                stat = Path(file).stat()
                key: object = (stat.st_mtime_ns, stat.st_size)
                if cached is None or cached.key != key:
                    cached = _Cached(key, parse_crl(_read_file(Path(file))))
            elif cached is None or _stale(cached, now):
                cached = _Cached(now, parse_crl(_fetch(source)))
        except (OSError, ValueError) as exc:
            raise ManufacturerCertificateError(
                f"vendor {vendor}'s CRL cannot be read from {source}: {exc}", vendor=vendor,
                verdict="crl") from None
        with self._lock:
            self._cache[source] = cached
        return cached.crl


def _stale(cached: _Cached, now: datetime) -> bool:
    assert isinstance(cached.key, datetime)
    next_update = cached.crl.next_update_utc
    return now - cached.key >= URL_REFRESH or (next_update is not None and next_update <= now)


def _read_file(path: Path) -> bytes:
    with path.open("rb") as stream:
        data = stream.read(MAX_CRL_BYTES + 1)
    if len(data) > MAX_CRL_BYTES:
        raise ValueError(f"larger than {MAX_CRL_BYTES} bytes")
    return data


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_SECONDS) as response:  # noqa: S310
            data: bytes = response.read(MAX_CRL_BYTES + 1)
    except urllib.error.HTTPError as exc:  # answered, but not with the CRL
        raise OSError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from None
    if len(data) > MAX_CRL_BYTES:
        raise ValueError(f"larger than {MAX_CRL_BYTES} bytes")
    return data
