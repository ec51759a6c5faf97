"""Console logins: a users file of ``name:password-hash`` lines (werkzeug's salted hashes).

``mvctl web passwd NAME`` writes an entry; the file is read at every login, so a
changed password applies at once.  Failed logins are counted per client address
and name; past :data:`MAX_FAILURES` within :data:`FAILURE_WINDOW_S` further tries
are refused until the window passes (a brute-force brake, not an account lock).
"""

from __future__ import annotations

import os
import re
import stat
import threading
import time
from pathlib import Path

from werkzeug.security import check_password_hash, generate_password_hash

NAME_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MAX_FAILURES = 10
FAILURE_WINDOW_S = 300.0
MIN_PASSWORD = 8
#: a hash to compare against when the user does not exist, so timing does not tell
_DUMMY = generate_password_hash("mailvm-no-such-user")


class UsersFile:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._failures: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def _read(self) -> dict[str, str]:
        users: dict[str, str] = {}
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return users
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or ":" not in line:
                continue
            name, _, hashed = line.partition(":")
            if NAME_RE.match(name):
                users[name] = hashed
        return users

    def names(self) -> list[str]:
        return sorted(self._read())

    def set_password(self, name: str, password: str) -> None:
        if not NAME_RE.match(name):
            raise ValueError("a user name is 1-64 characters of letters, digits, . _ @ -")
        if len(password) < MIN_PASSWORD:
            raise ValueError(f"a password has at least {MIN_PASSWORD} characters")
        users = self._read()
        users[name] = generate_password_hash(password)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:  # a rewrite keeps the file's group and mode (mailvm serve reads it through its group)
            st = os.stat(self.path)
            if os.geteuid() == 0:
                os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o640)
        except FileNotFoundError:
            pass
        with os.fdopen(fd, "w") as fh:
            fh.write("# mailvm web console users (mvctl web passwd NAME)\n")
            for n in sorted(users):
                fh.write(f"{n}:{users[n]}\n")
        os.replace(tmp, self.path)

    def throttled(self, client: str, name: str) -> bool:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._failures.get((client, name), []) if now - t < FAILURE_WINDOW_S]
            self._failures[(client, name)] = recent
            return len(recent) >= MAX_FAILURES

    def check(self, client: str, name: str, password: str) -> bool:
        """True for a right name and password that is not throttled; failures are counted."""
        if self.throttled(client, name):
            return False
        hashed = self._read().get(name)
        ok = check_password_hash(hashed or _DUMMY, password) and hashed is not None
        if not ok:
            with self._lock:
                self._failures.setdefault((client, name), []).append(time.monotonic())
        return ok
