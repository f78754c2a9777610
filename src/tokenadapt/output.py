"""Write an output directory so that it appears whole or not at all, and never at the expense of an input.

with staged_output(Path("out"), inputs=[model_dir], overwrite=False) as tmp:
    ...write into tmp...
# out/ now exists, complete; on any error (Ctrl-C, full disk) tmp is removed and out/ is untouched
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tokenadapt.errors import OutputError


def check_output_path(out: Path, inputs: Sequence[Path], overwrite: bool) -> Path:
    """Resolve OUT and refuse the locations that would lose or damage something; returns the resolved path."""
    out = out.expanduser().resolve()
    for given in inputs:
        source = given.expanduser().resolve()
        if out == source or out in source.parents:
            raise OutputError(
                f"The output directory {out} is, or contains, an input ({source}).",
                "Choose an OUT outside every input: tokenadapt never writes over what it reads.",
            )
        if source in out.parents:
            raise OutputError(
                f"The output directory {out} lies inside the input directory {source}.",
                "Choose an OUT outside the input directory.",
            )
    if out.exists() and not overwrite:
        raise OutputError(f"The output {out} already exists.", "Choose a new OUT, or pass --overwrite to replace it.")
    if out.exists() and not out.is_dir():
        raise OutputError(f"The output {out} exists and is not a directory.", "Choose another OUT.")
    parent = out.parent
    if not parent.exists():
        raise OutputError(
            f"The parent directory of OUT ({parent}) does not exist.", "Create it first, or fix the path."
        )
    if not os.access(parent, os.W_OK):
        raise OutputError(f"Cannot write in {parent}.", "Choose an OUT in a directory you can write to.")
    return out


@contextmanager
def staged_output(out: Path, inputs: Sequence[Path] = (), overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside OUT; move it to OUT only when the block completes."""
    out = check_output_path(out, inputs, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".replaced", dir=out.parent))
            os.replace(out, aside / out.name)
            os.replace(tmp, out)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise OutputError(
                f"The disk holding {out.parent} is full.",
                "Free some space or choose OUT on another disk; nothing was written.",
            ) from error
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
