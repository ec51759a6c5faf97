"""Does ./.venv belong to this tree? Exit 0 if so, 1 (with the reason) if it must be made again.

``make setup`` runs it before trusting an existing venv: a tree copied elsewhere (``cp -a`` to
/opt) keeps a venv whose scripts start the old tree's interpreter and whose editable install of
mailvm imports the old tree's code; a venv whose base interpreter is gone cannot start at all.
Standard library only: it runs with the system's python3, before the venv is known to work.
"""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = "import mailvm, os; print(os.path.realpath(mailvm.__file__))"
#: setup.sh makes the venv with Debian's interpreter
SYSTEM_PYTHON_HOME = "/usr/bin"


def _cfg_value(path: str, key: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                name, sep, value = line.partition("=")
                if sep and name.strip() == key:
                    return value.strip()
    except OSError:
        return None
    return None


def problem(tree: str) -> str | None:
    """Why ``tree``/.venv cannot be used as it is (None: it can)."""
    tree = os.path.realpath(tree)
    venv = os.path.join(tree, ".venv")
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        return f"{python} is missing or points to an interpreter that is gone"
    try:
        with open(os.path.join(venv, "bin", "pip"), "rb") as fh:
            shebang = fh.readline(4096).decode("utf-8", "replace")
    except OSError:
        shebang = ""
    if shebang.startswith("#!"):
        target = shebang[2:].strip().split()[0] if shebang[2:].strip() else ""
        if target and os.path.realpath(os.path.dirname(target)) != os.path.realpath(os.path.join(venv, "bin")):
            return f"its scripts start {target}, another tree's interpreter (the tree was copied or moved)"
    home = _cfg_value(os.path.join(venv, "pyvenv.cfg"), "home")
    if home is not None and os.path.realpath(home) != os.path.realpath(SYSTEM_PYTHON_HOME):
        return (f"it was made with the Python in {home}, not Debian's {SYSTEM_PYTHON_HOME}/python3 "
                "(the scan workers' user must be able to read the interpreter)")
    try:
        r = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=60, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} does not run: {exc}"
    if r.returncode != 0:
        if "No module named 'mailvm'" in r.stderr:
            return None  # not installed yet: setup installs it next
        return f"{python} fails: {r.stderr.strip()[-300:]}"
    where = os.path.dirname(os.path.dirname(r.stdout.strip()))
    if where != tree:
        return f"it imports mailvm from {where}, not from this tree"
    return None


def main() -> int:
    why = problem(sys.argv[1] if len(sys.argv) > 1 else ".")
    if why:
        print(f"venv_check: .venv must be made again: {why}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
