#!/usr/bin/env python3
"""Prove that installing the gateway on a 64-bit Raspberry Pi needs no compiler.

Every pinned dependency in ``pyproject.toml``, and everything they pull in, must have a
wheel for manylinux aarch64 on the Python versions the Pi images ship: 3.11 (Raspberry Pi
OS / Debian 12 Bookworm) and 3.13 (Debian 13 Trixie). The only exceptions are the
packages listed in ``deploy/pure-sdists.txt``: published as source archives only, they
must contain no compiled code, and their own dependencies must have wheels.

    deploy/check_wheels.py                      both Python versions
    deploy/check_wheels.py --python 3.11        one
    deploy/check_wheels.py -r FILE -- PIPARGS   other requirements, extra pip arguments

Exit 0: every wheel found (a table is printed). Exit 1: the packages without a usable
wheel are named. Nothing is installed: files go to a temporary folder. Environment
markers are evaluated for this machine, not the Pi: a dependency pulled in only by an
aarch64 marker would be missed (none of ours are).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from email.parser import HeaderParser
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent
# Bookworm has glibc 2.36 (Trixie newer): any manylinux tag up to 2.36 runs on both
PLATFORMS = ["manylinux2014_aarch64"] + [
    f"manylinux_2_{minor}_aarch64" for minor in (17, 24, 26, 27, 28, 31, 34, 35, 36)
]
COMPILED_SUFFIXES = (".c", ".cc", ".cpp", ".cxx", ".h", ".hpp", ".pyx", ".pxd", ".rs", ".f90")
_MISSING = re.compile(r"No matching distribution found for (\S+)")


def _name(requirement: str) -> str:
    """The canonical project name of a requirement string (``Foo_Bar[x]==1`` → ``foo-bar``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def pinned_requirements(pyproject: Path) -> list[str]:
    """The ``[project] dependencies`` of a pyproject.toml."""
    with pyproject.open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def read_list(path: Path) -> list[str]:
    """Non-comment, non-blank lines of a list file."""
    if not path.exists():
        return []
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def pip(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run this interpreter's pip quietly."""
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                           "--no-input", *args], capture_output=True, text=True, check=False)


def sdist_facts(archive: Path) -> tuple[list[str], list[str]]:
    """An sdist's (Requires-Dist without extras, compiled-language source files in it)."""
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        compiled = [n for n in names if n.endswith(COMPILED_SUFFIXES)]
        pkg_info = min((n for n in names if n.endswith("/PKG-INFO")), key=len)
        member = tar.extractfile(pkg_info)
        assert member is not None
        headers = HeaderParser().parsestr(member.read().decode("utf-8", "replace"))
    requires = [r for r in headers.get_all("Requires-Dist") or [] if "extra ==" not in r]
    return requires, compiled


def inspect_sdist(requirement: str, dest: Path, extra: list[str]) -> tuple[list[str], list[str]]:
    """Download an sdist; return (its Requires-Dist, compiled source files found in it)."""
    result = pip(["download", "--no-deps", "--no-binary=:all:",
                  "-d", str(dest), requirement, *extra])
    archives = sorted(dest.glob("*.tar.gz"))
    if result.returncode != 0 or not archives:
        raise RuntimeError(f"cannot download the sdist of {requirement}: {result.stderr.strip()}")
    return sdist_facts(archives[-1])


def resolve_pure(requirements: list[str], pure: set[str], work: Path,
                 extra: list[str]) -> tuple[bool, list[str], list[str]]:
    """Replace pure-Python sdists by their own dependencies; return (ok, wanted, report)."""
    lines: list[str] = []
    wanted: list[str] = []
    ok = True
    for req in requirements:
        if _name(req) not in pure:
            wanted.append(req)
            continue
        requires, compiled = inspect_sdist(req, work / f"sdist-{_name(req)}", extra)
        if compiled:
            ok = False
            lines.append(f"  {req}: sdist only and NOT pure Python ({', '.join(compiled[:3])})")
        else:
            lines.append(f"  {req}: sdist only, pure Python (built without a compiler)")
        wanted += requires
    return ok, wanted, lines


def check(version: str, wanted: list[str], work: Path,
          extra: list[str]) -> tuple[bool, list[str]]:
    """Download aarch64 wheels for one Python version; return (ok, report lines)."""
    dest = work / f"py{version}"
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    result = pip(["download", "--quiet", "--only-binary=:all:", *platforms,
                  "--implementation", "cp", "--python-version", version,
                  "-d", str(dest), *wanted, *extra])
    if result.returncode != 0:
        missing = _MISSING.findall(result.stderr)
        return False, [f"  no aarch64 wheel: {m}" for m in missing] or [
            "  " + line for line in result.stderr.strip().splitlines()]
    lines = []
    for wheel in sorted(dest.glob("*.whl")):
        parts = wheel.stem.split("-")
        lines.append(f"  {parts[0]:<28} {parts[1]:<14} {parts[-1]}")
    return True, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", dest="versions", metavar="X.Y",
                        help="target Python version (repeatable; default 3.11 and 3.13)")
    parser.add_argument("-r", "--requirements", type=Path,
                        help="requirements file (default: pyproject.toml's dependencies)")
    parser.add_argument("--pure-sdists", type=Path, default=SRC / "deploy/pure-sdists.txt",
                        help="packages allowed as pure-Python source archives")
    parser.add_argument("pip_args", nargs="*", help="after --: extra pip arguments")
    args = parser.parse_args(argv)
    requirements = (read_list(args.requirements) if args.requirements
                    else pinned_requirements(SRC / "pyproject.toml"))
    pure = {_name(n) for n in read_list(args.pure_sdists)}
    versions = args.versions or ["3.11", "3.13"]
    status = 0
    with tempfile.TemporaryDirectory(prefix="check-wheels-") as tmp:
        t0 = time.monotonic()
        pure_ok, wanted, pure_lines = resolve_pure(requirements, pure, Path(tmp), args.pip_args)
        status |= 0 if pure_ok else 1
        # the versions download side by side: the time goes into waiting for the index
        with ThreadPoolExecutor(max_workers=len(versions)) as pool:
            results = list(pool.map(lambda v: check(v, wanted, Path(tmp), args.pip_args),
                                    versions))
        for version, (ok, lines) in zip(versions, results, strict=True):
            print(f"Python {version} aarch64: {'all wheels found' if ok else 'MISSING wheels'}")
            print("\n".join(pure_lines + lines))
            status |= 0 if ok else 1
        print(f"checked in {time.monotonic() - t0:.1f} s")
    return status

if __name__ == "__main__":
    sys.exit(main())
