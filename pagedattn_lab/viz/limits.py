"""How much a teaching picture draws: one patch per thread, cell or tile. Past a few
thousand the picture is unreadable and matplotlib takes minutes (a billion threads never
returned), so the sizes are refused by name before the figure is made."""
from __future__ import annotations

from ..validate import check_int

MAX_CELLS = 4096   # patches one picture draws
MAX_BLOCK = 1024   # threads of a CUDA block


def check_cells(cells: int, name: str, what: str) -> None:
    """Refuse, naming `name`, a picture of more than MAX_CELLS `what`."""
    if cells > MAX_CELLS:
        raise ValueError(f"{name}: the picture would draw {cells} {what}, more than the "
                         f"{MAX_CELLS} it can show; pass smaller sizes")


def check_threads(threads_per_block, name: str = "threads_per_block") -> int:
    """A CUDA block's thread count: 1..1024."""
    return check_int(threads_per_block, name, minimum=1, maximum=MAX_BLOCK)
