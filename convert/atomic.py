"""Outputs that appear only when complete: write under a temporary name beside the target, then rename."""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edge.errors import ConversionError


@contextmanager
def atomic_output(final: Path):
    """Yield a temp path beside `final`; rename it to `final` only if the block succeeds."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(0o644)  # mkstemp makes 0600 files; bundles are meant to be shared read-only
        tmp_path.replace(final)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise ConversionError(f"{final.parent}: disk full while writing {final.name}") from e
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
