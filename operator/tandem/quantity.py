"""Kubernetes resource quantities as numbers, for usage and capacity arithmetic."""

from __future__ import annotations

import re
from decimal import Decimal

_DECIMAL_SUFFIXES = ("n", "u", "m", "", "k", "M", "G", "T", "P", "E")
"""Powers of 1000 from 1000**-3 (nano) to 1000**6 (exa)."""
_SUFFIXES: dict[str, Decimal] = {
    **{suffix: Decimal(1000) ** power for power, suffix in enumerate(_DECIMAL_SUFFIXES, -3)},
    **{f"{prefix}i": Decimal(1024) ** power for power, prefix in enumerate("KMGTPE", 1)},
}
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(value: str | int | float) -> Decimal:
    """The number a quantity stands for: '500m' -> 0.5, '2Gi' -> 2147483648."""
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = _QUANTITY.match(value.strip())
    if match is None or match.group(2) not in _SUFFIXES:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return Decimal(match.group(1)) * _SUFFIXES[match.group(2)]


def format_cpu(cores: Decimal) -> str:
    """Cores as Kubernetes writes them: whole cores plainly, fractions in millicores."""
    if cores == cores.to_integral_value():
        return str(int(cores))
    return f"{int(cores * 1000)}m"


def format_memory(num_bytes: Decimal) -> str:
    """Bytes in the largest binary unit that divides them, as `kubectl describe node` shows capacity."""
    value = int(num_bytes)
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = int(_SUFFIXES[suffix])
        if value and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)
