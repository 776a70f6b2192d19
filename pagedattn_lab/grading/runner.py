"""Execute one submitted notebook in its own folder and kernel; used by `pagedattn_lab.grade`.

    python -m pagedattn_lab.grading.runner NOTEBOOK WORKDIR RESULTS STATUS --timeout S

NOTEBOOK is a copy already placed in WORKDIR. A first cell, added here, writes the
kernel's pid to STATUS.kernel-pid (so the grader can kill a kernel left spinning) and
installs the sandbox (writes only inside WORKDIR, plus RESULTS). Every check the notebook
calls appends its result to RESULTS (the checks read the path from $PAGEDATTN_LAB_RESULTS).
When the run ends, STATUS gets a JSON summary: whether it finished, every cell that raised.
The grader runs this in a separate process group and kills the group at its deadline, so
an endless loop or a dying kernel cannot take the grader down.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

SANDBOX_CELL = ("import os as _os\n"
                "with open({pidfile!r}, 'w') as _f:\n"
                "    _f.write(str(_os.getpid()))\n"
                "from pagedattn_lab.grading.sandbox import install as _install\n"
                "_install({workdir!r}, allow_files=[{results!r}])\n"
                "del _os, _f, _install")


def cell_errors(nb, offset: int = 1) -> list[dict]:
    """[{cell, ename, evalue}] for every code cell whose outputs hold an error."""
    errors = []
    for index, cell in enumerate(nb.cells[offset:]):
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                errors.append({"cell": index, "ename": output.get("ename", ""),
                               "evalue": str(output.get("evalue", ""))[:300]})
    return errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("notebook")
    parser.add_argument("workdir")
    parser.add_argument("results")
    parser.add_argument("status")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args(argv)

    import nbformat  # noqa: PLC0415 - keep `--help` fast
    from nbclient import NotebookClient  # noqa: PLC0415
    from nbclient.exceptions import CellTimeoutError, DeadKernelError  # noqa: PLC0415

    status = {"finished": False, "error": None, "cell_errors": [], "seconds": 0.0}
    start = time.monotonic()

    def write_status() -> None:
        status["seconds"] = round(time.monotonic() - start, 1)
        with open(args.status, "w", encoding="utf-8") as fh:
            json.dump(status, fh)

    try:
        nb = nbformat.read(args.notebook, as_version=4)
    except Exception as exc:  # not a notebook at all
        status["error"] = f"could not read the notebook: {type(exc).__name__}: {exc}"
        write_status()
        return 0
    nb.cells.insert(0, nbformat.v4.new_code_cell(SANDBOX_CELL.format(
        workdir=args.workdir, results=args.results, pidfile=args.status + ".kernel-pid")))
    write_status()  # so a killed run still leaves a status behind
    client = NotebookClient(nb, timeout=int(args.timeout), allow_errors=True,
                            kernel_name="python3", startup_timeout=60,
                            resources={"metadata": {"path": args.workdir}})
    try:
        client.execute()
        status["finished"] = True
    except CellTimeoutError:
        status["error"] = f"a cell ran longer than {args.timeout:g} s"
    except DeadKernelError as exc:
        status["error"] = f"the notebook's kernel died ({exc})"
    except Exception as exc:  # noqa: BLE001 - anything else is the submission's problem
        status["error"] = f"{type(exc).__name__}: {exc}"[:300]
    status["cell_errors"] = cell_errors(nb)
    write_status()
    return 0


if __name__ == "__main__":
    sys.exit(main())
