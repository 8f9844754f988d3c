"""The one exception type the CLI formats: what is wrong, and what to do about it."""

from __future__ import annotations

import errno


class OminixError(Exception):
    """A user-facing error: ``message`` says what is wrong, ``hint`` what to do.

    The CLI prints both lines and exits with ``exit_code`` (2 = bad input, the default;
    1 = a failure while doing the work).
    """

    def __init__(self, message: str, hint: str = "", exit_code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


# errno -> what to do; the codes a user's own paths and disks produce
_OS_HINTS = {
    errno.EACCES: "check the permissions of {path} and of its directories (ls -ld)",
    errno.EPERM: "check the permissions of {path} and of its directories (ls -ld)",
    errno.ENAMETOOLONG: "shorten the path: one name holds at most 255 bytes, a whole path 4096",
    errno.ENOSPC: "free space on that disk or choose a path on a larger one",
    errno.EDQUOT: "free space within your quota or choose a path on another disk",
    errno.ENOTDIR: "a part of {path} is a file, not a directory: choose another path",
    errno.EISDIR: "{path} is a directory: name a file",
    errno.EROFS: "that disk is mounted read-only: choose a path on a writable one",
    errno.ENOENT: "check that {path} exists",
    errno.ELOOP: "{path} is a symlink loop: point it at a real file",
}
_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EIO}  # the disk's fault, not the input's: exit 1


def os_error(exc: OSError, where: str = "", hint: str = "") -> OminixError:
    """``exc`` (a permission, a name, a full disk...) as one line naming the path, and what to do;
    ``where`` says what was going on (``"at step 46"``), ``hint`` is added to the errno's advice."""
    path = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        path = f"{path} -> {exc.filename2}"
    reason = exc.strerror or str(exc) or type(exc).__name__
    message = " ".join(filter(None, [reason, where])) + (f": {path}" if path else "")
    advice = _OS_HINTS.get(exc.errno, "check {path}" if path else "")
    advice = "; ".join(filter(None, [advice.format(path=path or "the path"), hint]))
    return OminixError(message, advice,
                       exit_code=1 if exc.errno in _FAILURES else 2)
