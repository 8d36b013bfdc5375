"""Atomic output (write to a temporary file in the same folder, then rename over the target), strict JSON
(NaN and infinities written as ``null``), temporary folders with the usual permissions, and reading back a
JSON object with an error that names the damaged file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike[str], write: Callable[[Any], None], mode: str = "w") -> Path:
    """Call ``write(fh)`` on a temp file beside ``path``, fsync, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def umask() -> int:
    """The process's umask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def json_text(obj: Any, indent: int | None = None) -> str:
    """``obj`` as strict JSON text: NaN and ±inf become ``null`` (``json.dumps`` would write bare ``NaN``,
    which strict readers reject)."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 1) -> Path:
    """Atomically write ``obj`` as strict JSON (:func:`json_text`)."""
    text = json_text(obj, indent=indent)
    return atomic_write(path, lambda fh: fh.write(text + "\n"))


def make_temp_dir(prefix: str, dir: str | os.PathLike[str]) -> Path:
    """A new empty folder in ``dir`` (``tempfile.mkdtemp``) with the permissions ``mkdir`` gives (0777 minus
    the umask) instead of mkdtemp's 0700, for folders that are renamed into place as outputs."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    os.chmod(path, 0o777 & ~umask())
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def read_json_object(path: str | os.PathLike[str], remedy: str) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when the file is absent; ValueError naming the file and ``remedy``
    when it is unreadable, not UTF-8, not JSON or not an object."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{str(path)!r} is damaged ({exc}); {remedy}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{str(path)!r} does not hold a JSON object; {remedy}")
    return record
