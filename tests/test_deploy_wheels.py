"""deploy/check_wheels.py: installing on a 64-bit Pi needs no compiler.

The first test asks PyPI for real (the only test here that leaves loopback, as pip does
in CI's own install): every pinned dependency and everything it pulls in must resolve to
manylinux aarch64 wheels for Python 3.11 (Bookworm) and 3.13 (Trixie). The others feed
the script a local package index, offline, to show that it names what is missing.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "deploy/check_wheels.py"
sys.path.insert(0, str(REPO / "deploy"))

import check_wheels  # noqa: E402


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def run_check(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=600, check=False)


def test_every_pinned_dependency_has_aarch64_wheels_for_bookworm_and_trixie() -> None:
    t0 = time.monotonic()
    result = run_check("--python", "3.11", "--python", "3.13")
    elapsed = time.monotonic() - t0
    print(f"aarch64 wheel check for 3.11 and 3.13 took {elapsed:.1f} s")
    assert result.returncode == 0, result.stdout + result.stderr
    with (REPO / "pyproject.toml").open("rb") as f:
        pins = tomllib.load(f)["project"]["dependencies"]
    pure = {_canonical(n) for n in check_wheels.read_list(REPO / "deploy/pure-sdists.txt")}
    sections = re.split(r"(?m)^Python (3\.\d+) aarch64: ", result.stdout)[1:]
    assert [v for v in sections[::2]] == ["3.11", "3.13"]
    for version, body in zip(sections[::2], sections[1::2], strict=True):
        assert body.startswith("all wheels found"), body
        found = {}
        for line in body.splitlines()[1:]:
            fields = line.split()
            if len(fields) == 3 and not line.strip().endswith(")"):
                found[_canonical(fields[0])] = (fields[1], fields[2])
        for pin in pins:
            name, version_pin = re.match(r"([^\[=]+)(?:\[.*\])?==(\S+)", pin).groups()  # type: ignore[union-attr]
            if _canonical(name) in pure:
                assert f"{pin}: sdist only, pure Python" in body
                continue
            assert found.get(_canonical(name), ("?",))[0] == version_pin, (version, pin)
        # every binary wheel is for aarch64; the rest are pure Python ("any")
        for name, (_, tag) in found.items():
            assert tag == "any" or "aarch64" in tag, (version, name, tag)


def _fake_wheel(index: Path, filename: str) -> None:
    """A minimal valid wheel (metadata only) under its tagged file name."""
    name, version, *_, tag = filename[:-4].split("-")
    info = f"{name}-{version}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         f"Tag: {'-'.join(filename[:-4].split('-')[2:])}\n",
        f"{info}/RECORD": "",
    }
    with zipfile.ZipFile(index / filename, "w") as whl:
        for path, text in files.items():
            whl.writestr(path, text)


def test_check_names_a_dependency_without_an_aarch64_wheel(tmp_path: Path) -> None:
    index = tmp_path / "index"
    index.mkdir()
    _fake_wheel(index, "x86only-1.0-cp311-cp311-manylinux2014_x86_64.whl")
    _fake_wheel(index, "portable-2.0-py3-none-any.whl")
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("portable==2.0\nx86only==1.0\n")
    none = tmp_path / "pure-sdists.txt"
    none.write_text("")
    result = run_check("--python", "3.11", "-r", reqs, "--pure-sdists", none,
                       "--", "--no-index", "--find-links", index)
    assert result.returncode == 1
    assert "Python 3.11 aarch64: MISSING wheels" in result.stdout
    assert "no aarch64 wheel: x86only==1.0" in result.stdout
    assert "portable" not in result.stdout.split("MISSING")[1]


def test_check_passes_when_the_only_wheels_are_aarch64_or_pure(tmp_path: Path) -> None:
    index = tmp_path / "index"
    index.mkdir()
    _fake_wheel(index, "native-1.0-cp311-cp311-manylinux_2_28_aarch64.whl")
    _fake_wheel(index, "portable-2.0-py3-none-any.whl")
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("native==1.0\nportable==2.0\n")
    none = tmp_path / "pure-sdists.txt"
    none.write_text("")
    result = run_check("--python", "3.11", "-r", reqs, "--pure-sdists", none,
                       "--", "--no-index", "--find-links", index)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"native\s+1\.0\s+manylinux_2_28_aarch64", result.stdout)


def _sdist(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_source_only_package_counts_as_pure_only_without_compiled_code(tmp_path: Path) -> None:
    pkg_info = ("Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nRequires-Dist: grpcio\n"
                "Requires-Dist: pytest; extra == \"test\"\n\n")
    pure = _sdist(tmp_path / "pure.tar.gz", {"demo-1.0/PKG-INFO": pkg_info,
                                             "demo-1.0/demo/__init__.py": ""})
    native = _sdist(tmp_path / "native.tar.gz", {"demo-1.0/PKG-INFO": pkg_info,
                                                 "demo-1.0/src/speedups.c": "int x;"})
    assert check_wheels.sdist_facts(pure) == (["grpcio"], [])
    assert check_wheels.sdist_facts(native) == (["grpcio"], ["demo-1.0/src/speedups.c"])
