"""What every panel of the dashboard shares (pure): durations, sizes, milliseconds, bars,
sparklines, and the table and "no data" shapes."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

BAR_CELLS = 10
SPARKS = "▁▂▃▄▅▆▇█"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return f"{n:.1f} GiB"


def bar(fraction: float, cells: int = BAR_CELLS) -> str:
    """A horizontal bar of `cells` characters, `fraction` (0..1) of it filled."""
    filled = round(max(0.0, min(1.0, fraction)) * cells)
    return "█" * filled + "·" * (cells - filled)


def sparkline(values: list[float], top: float = 100.0) -> str:
    """One character per value, from ▁ (0) to █ (`top`)."""
    last = len(SPARKS) - 1
    return "".join(SPARKS[round(max(0.0, min(1.0, v / top)) * last)] for v in values) if top else ""


def table(title: str | None, *columns: str, right: tuple[str, ...] = ()) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, collapse_padding=True)
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left")
    return table


def absent(title: str, why: str) -> Group:
    return Group(Text(title, "bold"), Text(why, "dim"), Text(""))


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.1f} ms"
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.1f} s"


def redis_down(data: dict[str, Any]) -> bool:
    return not data.get("infra", {}).get("redis", {}).get("reachable", True)
