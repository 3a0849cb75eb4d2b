"""The wheel must install on Databricks Runtime 15.4 LTS ML without changing a runtime package.

The job installs ``dist/lookalike-*.whl`` as a cluster library. pip then keeps every runtime
package whose version satisfies all requirements on it, and upgrades or downgrades the rest. This
test builds the wheel and reads its base ``Requires-Dist``. Requirements only under an extra, such
as ``local``, are ignored. It then walks the requirement graph against
``conf/runtime/dbr-15.4-lts-ml.txt``:

* A requirement on a runtime package must be satisfied by the runtime's version. The walk does not
  recurse into runtime packages, because pip leaves them alone.
* A requirement on any other package means pip installs that package anew. The walk recurses into
  its requirements, using the metadata of the version installed in this venv. pip on the cluster
  may pick another version, and every message that depends on this assumption says so.

Offline: no network, and only the wheel build (a few seconds).
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable
from email.parser import HeaderParser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_LIST = ROOT / "conf" / "runtime" / "dbr-15.4-lts-ml.txt"
KEY_PACKAGES = ("tensorflow", "protobuf", "numpy", "mlflow-skinny", "pyarrow", "horovod")
# Copied to build the wheel outside the working tree, so no build/ or *.egg-info is left in it.
_BUILD_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
    "mlruns", "spark-warehouse", "metastore_db")

NEW = "not in the runtime: installed anew; requirements read from this venv's version"


def load_runtime(path: Path = RUNTIME_LIST) -> dict[str, Version]:
    """``{normalised name: version}`` from a ``name==version`` list (``#`` starts a comment)."""
    runtime: dict[str, Version] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            raise ValueError(f"{path}:{number}: expected name==version, got {raw!r}")
        runtime[canonicalize_name(req.name)] = Version(specs[0].version)
    return runtime


def build_wheel(source: Path, out: Path) -> Path:
    """Build the project at ``source`` (copied under ``out``) into a wheel in ``out``; its path."""
    tree = out / "src-copy"
    shutil.copytree(source, tree, ignore=_BUILD_IGNORE)
    wheels = out / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "-w", str(wheels), str(tree)],
        check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("*.whl")
    return wheel


def wheel_metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return HeaderParser().parsestr(archive.read(name).decode())


def active(requirements: Iterable[str], extras: Iterable[str] = ()) -> list[Requirement]:
    """The requirements whose markers hold for this Python with no extra or one of ``extras``."""
    chosen = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
            chosen.append(req)
    return chosen


def base_requirements(wheel: Path) -> list[Requirement]:
    """The wheel's ``Requires-Dist`` that apply without any extra."""
    return active(wheel_metadata(wheel).get_all("Requires-Dist") or [])


Lookup = Callable[[str], importlib.metadata.Distribution]


def find_conflicts(requirements: Iterable[Requirement], runtime: dict[str, Version],
                   parent: str = "lookalike",
                   distribution: Lookup = importlib.metadata.distribution) -> list[str]:
    """Every way that installing ``requirements`` would change a runtime package, as messages.

    ``distribution(name)`` gives the metadata used for packages the runtime lacks.
    """
    problems: list[str] = []
    seen: set[tuple[str, frozenset[str]]] = set()
    missing: set[str] = set()

    def visit(reqs: Iterable[Requirement], chain: list[str]) -> None:
        via = " <- ".join(chain)
        for req in reqs:
            name = canonicalize_name(req.name)
            extras = frozenset(canonicalize_name(e) for e in req.extras)
            if name in runtime:
                have = runtime[name]
                if not req.specifier.contains(have, prereleases=True):
                    problems.append(f"{name}=={have} does not satisfy {req} (required by {via})")
                if not extras:
                    continue  # pip leaves a satisfied runtime package alone: no recursion
            try:
                dist = distribution(name)
            except importlib.metadata.PackageNotFoundError:
                if name not in missing:
                    missing.add(name)
                    what = "its extras" if name in runtime else "it (not in the runtime)"
                    problems.append(
                        f"{req} (required by {via}) would install {what}, but {name} is not "
                        "installed in this venv, so what it requires cannot be checked: "
                        "install it here")
                continue
            version = Version(dist.version)
            if name not in runtime and not req.specifier.contains(version, prereleases=True):
                # Checked for every requirement on the package, not only the first one walked.
                problems.append(
                    f"{req} (required by {via}) would install {name} (not in the runtime), but "
                    f"this venv has {name}=={version}, which does not satisfy it, so this check "
                    "read the wrong version's requirements: install a matching version here")
            if (name, extras) in seen:
                continue
            seen.add((name, extras))
            requires = dist.requires or []
            if name in runtime:
                # Only what the extras add; assumes the runtime's version matches this venv's.
                plain = {str(r) for r in active(requires)}
                reqs_next = [r for r in active(requires, extras) if str(r) not in plain]
                extra_names = ",".join(sorted(extras))
                label = f"{name}[{extra_names}] (extras read from this venv's {version})"
            else:
                reqs_next = active(requires, extras)
                label = f"{name}=={version}*"
            visit(reqs_next, [label, *chain])

    visit(requirements, [parent])
    return problems


def report(problems: list[str]) -> str:
    return (f"{len(problems)} change(s) to Databricks Runtime 15.4 LTS ML packages "
            f"({RUNTIME_LIST.relative_to(ROOT)}):\n  " + "\n  ".join(problems)
            + f"\n(* = {NEW}; pip on the cluster may pick another version)")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(ROOT, tmp_path_factory.mktemp("runtime-compat"))


@pytest.fixture(scope="session")
def runtime() -> dict[str, Version]:
    return load_runtime()


def test_wheel_leaves_runtime_packages_alone(wheel, runtime):
    requirements = base_requirements(wheel)
    assert requirements, f"{wheel.name} declares no base requirements: is Requires-Dist read right?"
    meta = wheel_metadata(wheel)
    parent = f"{meta['Name']}=={meta['Version']}"
    problems = find_conflicts(requirements, runtime, parent=parent)
    assert not problems, report(problems)


def test_runtime_list_has_key_packages(runtime):
    missing = [name for name in KEY_PACKAGES if name not in runtime]
    assert not missing, f"{RUNTIME_LIST.name} lacks {missing}: has the list rotted?"
    assert len(runtime) > 300, f"{RUNTIME_LIST.name} has only {len(runtime)} packages"
    assert runtime["tensorflow"].major == 2 and runtime["protobuf"].major == 4


def test_checker_reports_conflicts(runtime):
    fake = [Requirement("protobuf>=5"), Requirement("numpy>=2"), Requirement("pyarrow>=14")]
    problems = find_conflicts(fake, runtime, parent="fake")
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"protobuf=={runtime['protobuf']} does not satisfy protobuf>=5 "
                                  "(required by fake)")
    assert problems[1].startswith(f"numpy=={runtime['numpy']} does not satisfy numpy>=2")
    # A package the runtime lacks is walked into: its requirements are checked too.
    def fake_distribution(name):
        if name != "newpkg":
            raise importlib.metadata.PackageNotFoundError(name)
        return _FakeDist("1.0", ["protobuf>=5", "numpy", "notinstalled"])

    problems = find_conflicts([Requirement("newpkg")], runtime, distribution=fake_distribution)
    assert any("protobuf>=5 (required by newpkg==1.0* <- lookalike)" in p
               for p in problems), problems
    assert any("notinstalled" in p and "not installed in this venv" in p
               for p in problems), problems
    assert len(problems) == 2, problems


class _FakeDist:
    def __init__(self, version: str, requires: list[str]):
        self.version, self.requires = version, requires
