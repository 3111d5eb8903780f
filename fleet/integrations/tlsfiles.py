"""The PEM files one side of a broker's mutual-TLS connection presents and trusts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cacertfile: Path
    """The fleet CA chain it trusts."""
    certfile: Path
    keyfile: Path

    @classmethod
    def named(cls, directory: Path, name: str) -> TlsFiles:
        """``ca.pem``, ``NAME.pem`` and ``NAME.key`` in *directory*."""
        return cls(cacertfile=directory / "ca.pem", certfile=directory / f"{name}.pem",
                   keyfile=directory / f"{name}.key")
