"""Writing a file atomically: a temporary name in the same folder, then a rename."""

import os
import tempfile


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write(path, write_to, suffix=""):
  """Calls ``write_to(f)`` on a new binary file beside ``path``, then renames it to ``path``.

  If ``write_to`` raises, the temporary file is removed and ``path`` is left as it was.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
  try:
    with os.fdopen(fd, "wb") as f:
      write_to(f)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def write_text(path, text):
  """Writes the string ``text`` (UTF-8) to ``path`` atomically."""
  write(path, lambda f: f.write(text.encode()))
