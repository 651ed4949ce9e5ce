"""Atomic writes: a file is either absent or whole, never half-written."""
import contextlib
import errno
import glob
import json
import os
import tempfile
from pathlib import Path

from pipeline.errors import PipelineError

# Libraries that write files themselves (torch's zip writer, safetensors, libsndfile) report a full
# disk in their own exception types, so a failed write is also judged by the space left.
_FULL_BYTES = 64 * 1024


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it is renamed onto `path`. A write that
    fails for want of space becomes a PipelineError naming `path`; the previous file is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp" + path.suffix,
                                   dir=path.parent)
    except OSError as e:
        if _is_disk_full(e, path.parent):
            raise _disk_full(path, e) from e
        raise
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        full = isinstance(e, Exception) and _is_disk_full(e, path.parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if full:
            raise _disk_full(path, e) from e
        raise


def _remove_orphans(path):
    """Delete temporaries of `path` whose writer is gone (a killed run cannot clean up after
    itself). The writer's pid is in the name; a live writer's file is left alone."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp{glob.escape(path.suffix)}"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _alive(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return True


def _is_disk_full(err, directory):
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _FULL_BYTES


def _disk_full(path, err):
    return PipelineError(f"{path}: no space left on the device while writing it ({type(err).__name__}); "
                         f"nothing was replaced: free some space and rerun", exit_code=1)


def write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def read_json(path, kind=dict):
    """A JSON file the project wrote earlier (a run folder's config, a cache): any damage, such as a
    truncated or hand-edited file, is a PipelineError naming the file instead of a traceback."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PipelineError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(obj, kind):
        raise PipelineError(f"{path}: expected a JSON {kind.__name__}, found {type(obj).__name__}")
    return obj


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path, rows):
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def save_png(fig, path):
    """A matplotlib figure as a PNG, written atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
