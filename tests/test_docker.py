"""docker/Dockerfile and docker/README.md, checked without a Docker engine.

The Dockerfile is read with `dockerfile-parse` (the parser of the OpenShift/atomic-reactor builds). It must be
well formed (known instructions, each with arguments, ARGs then a FROM first, no line continuation left open),
copy only files that exist and that .dockerignore lets into the build context, and be based on the official Ray
GPU image of the very Ray version that pyproject.toml allows and the dev environment (and so CI) runs, with
torch wheels for the image's CUDA. The README's commands must name files that exist, run the image they build,
give the head the token the host CLI uses, and submit jobs whose specs validate and write to the mounted data
folder.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import io
import re
import shlex
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from dockerfile_parse.util import WordSplitter
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
README = ROOT / "docker" / "README.md"
DOCKERIGNORE = ROOT / ".dockerignore"

INSTRUCTIONS = {
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
}


def instructions(parser: DockerfileParser) -> list[dict]:
    """The parser's instructions without comments, each with the build ARGs visible at it ("args", substituted)."""
    return [
        dict(ins, args=ctx.args)
        for ins, ctx in zip(parser.structure, parser.context_structure)
        if ins["instruction"] != "COMMENT"
    ]


def problems(parser: DockerfileParser) -> list[str]:
    """What Docker would reject and the parser lets through (it is lenient by design)."""
    out = []
    code = [ln for ln in parser.lines if ln.strip() and not ln.lstrip().startswith("#")]
    if code and code[-1].rstrip().endswith("\\"):
        out.append("the last instruction ends in a line continuation at the end of the file")
    found = instructions(parser)
    for ins in found:
        line, cmd = ins["startline"] + 1, ins["instruction"]
        if cmd not in INSTRUCTIONS:
            out.append(f"line {line}: unknown instruction {cmd!r}")
        elif not ins["value"].strip():
            out.append(f"line {line}: {cmd} without arguments")
    first = next((ins for ins in found if ins["instruction"] != "ARG"), None)
    if not any(ins["instruction"] == "FROM" for ins in found):
        out.append("no FROM instruction")
    elif first["instruction"] != "FROM":
        where = f"line {first['startline'] + 1}: {first['instruction']}"
        out.append(f"{where} before the first FROM (only ARG may come first)")
    return out


def expanded(ins: dict) -> str:
    """An instruction's arguments as the shell gets them: build ARGs substituted, quotes consumed."""
    return WordSplitter(ins["value"], args=ins["args"]).dequote()


def copy_sources(ins: dict) -> list[str]:
    words = [w for w in WordSplitter(ins["value"], args=ins["args"]).split() if not w.startswith("--")]
    assert len(words) >= 2, f"line {ins['startline'] + 1}: {ins['instruction']} needs a source and a destination"
    return words[:-1]


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders decides."""
    parts = Path(path.rstrip("/")).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip().strip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(Path(c).name, pat[3:]) for c in candidates)
        else:
            hit = any(fnmatch.fnmatch(c, pat) and c.count("/") == pat.count("/") for c in candidates)
        if hit:
            excluded = not negate
    return excluded


def parse(text: str) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(text.encode()))


# ---------------------------------------------------------------- the files under test


@pytest.fixture(scope="module")
def parser() -> DockerfileParser:
    return DockerfileParser(str(DOCKERFILE), cache_content=True)


@pytest.fixture(scope="module")
def steps(parser) -> list[dict]:
    return instructions(parser)


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def args(parser) -> dict[str, str]:
    """The ARGs of the (one) build stage with their defaults; a redeclared global ARG takes the global default."""
    return dict(parser.args)


@pytest.fixture(scope="module")
def base_image(parser) -> re.Match:
    image = parser.baseimage  # the FROM image with the global ARGs substituted
    m = re.fullmatch(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3)(?P<minor>\d+)-(?P<platform>cu\d+|gpu)", image)
    assert m, f"FROM {image}: expected the official Ray GPU image, rayproject/ray:<x.y.z>-py3XX-<cuXXX|gpu>"
    return m


def requirement(pyproject: dict, name: str) -> Requirement:
    reqs = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    found = [r for r in reqs if r.name == name]
    assert found, f"pyproject.toml does not depend on {name}"
    return found[0]


def public(version: str) -> Version:
    """2.14.1+cu128 -> 2.14.1: the local label names the build, not the release."""
    return Version(Version(version).public)


def runs(steps) -> list[str]:
    return [expanded(s) for s in steps if s["instruction"] == "RUN"]


# ---------------------------------------------------------------- the checks can fail


@pytest.mark.parametrize(
    "text, message",
    [
        ("FROM ubuntu\nRUN true\nFORM x\n", "line 3: unknown instruction 'FORM'"),
        ("RUN true\nFROM ubuntu\n", "RUN before the first FROM"),
        ("ARG X=1\n", "no FROM"),
        ("FROM ubuntu\nRUN echo a \\\n", "line continuation at the end"),
        ("FROM ubuntu\nWORKDIR\n", "WORKDIR without arguments"),
        ("FROM ubuntu\nRUN echo a \\\n    && ech b\nCOPYY a b\n", "line 4: unknown instruction 'COPYY'"),
    ],
)
def test_broken_dockerfiles_are_rejected(text, message):
    assert any(message in p for p in problems(parse(text))), problems(parse(text))


def test_continuations_are_joined_comments_dropped_and_args_substituted():
    text = '# c\nARG V=1\nFROM img:${V}\nARG V\nARG W=2\nRUN a $V \\\n  # inside\n  && b \\\n  && "${W}"\n'
    parser = parse(text)
    steps = instructions(parser)
    assert [(s["startline"] + 1, s["instruction"]) for s in steps] == [
        (2, "ARG"),
        (3, "FROM"),
        (4, "ARG"),
        (5, "ARG"),
        (6, "RUN"),
    ]
    assert expanded(steps[-1]).split() == ["a", "1", "&&", "b", "&&", "2"] and not problems(parser)
    assert parser.baseimage == "img:1"
    assert dockerignore_excludes(".venv/bin/python", ["*", "!jobs/"])
    assert not dockerignore_excludes("jobs/paper/x.yaml", ["*", "!jobs/"])
    assert dockerignore_excludes("jobs/__pycache__/x.pyc", ["*", "!jobs/", "**/__pycache__"])


# ---------------------------------------------------------------- the Dockerfile


def test_dockerfile_is_well_formed(parser, steps):
    assert not problems(parser)
    assert steps[0]["instruction"] in ("ARG", "FROM")
    assert not parser.is_multistage and sum(s["instruction"] == "FROM" for s in steps) == 1, "one stage: keep it simple"
    assert any(s["instruction"] == "RUN" for s in steps)


def test_copy_sources_exist_and_reach_the_build_context(steps):
    patterns = []
    if DOCKERIGNORE.exists():
        patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    copies = [s for s in steps if s["instruction"] in ("COPY", "ADD") and "--from" not in s["value"]]
    assert copies, "the project is never copied into the image"
    for ins in copies:
        line = ins["startline"] + 1
        for src in copy_sources(ins):
            assert (ROOT / src).exists(), f"line {line}: {ins['instruction']} {src}: no such file in the repository"
            assert not dockerignore_excludes(src, patterns), f"line {line}: {src} is excluded by .dockerignore"
    copied = {s.rstrip("/") for ins in copies for s in copy_sources(ins)}
    assert {"pyproject.toml", "landscape_ray", "jobs"} <= copied, "the image needs the package and its specs"


def test_base_image_ray_version_matches_pyproject_and_dev_env(steps, base_image, args, pyproject):
    assert "RAY_VERSION" in args, "the Ray version must be an ARG RAY_VERSION=x.y.z"
    first_from = next(s for s in steps if s["instruction"] == "FROM")
    assert re.search(r"\$\{?RAY_VERSION\b", first_from["value"]), "FROM must take its tag from ARG RAY_VERSION"
    assert base_image["ray"] == args["RAY_VERSION"]
    image_ray = Version(args["RAY_VERSION"])
    ray_req = requirement(pyproject, "ray")
    assert "default" in ray_req.extras
    assert image_ray in ray_req.specifier, f"image Ray {image_ray} does not satisfy pyproject's {ray_req}"
    dev_ray = public(importlib.metadata.version("ray"))
    assert image_ray == dev_ray, f"image Ray {image_ray} != the dev environment's Ray {dev_ray}: CI tests {dev_ray}"


def test_base_image_python_is_supported(base_image, pyproject):
    python = Version(f"{base_image['py']}.{base_image['minor']}")
    assert python in SpecifierSet(pyproject["project"]["requires-python"])


def test_torch_wheels_match_the_image_cuda_and_pyproject(steps, base_image, args, pyproject):
    assert base_image["platform"].startswith("cu"), "name the CUDA platform (cuXXX), not the -gpu alias"
    commands = runs(steps)
    indexes = [m for r in commands for m in re.findall(r"download\.pytorch\.org/whl/(\w+)", r)]
    assert indexes, "torch must come from a CUDA wheel index of download.pytorch.org"
    assert set(indexes) == {base_image["platform"]}, f"torch wheels {indexes} vs the image's {base_image['platform']}"
    for name, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        assert arg in args, f"the {name} version must be an ARG {arg}"
        version = Version(args[arg])
        assert version in requirement(pyproject, name).specifier
        assert version == public(importlib.metadata.version(name)), f"image {name} {version} != the dev environment's"
        assert any(f"{name}=={version}" in r for r in commands), f"{name} is not installed at {version}"


def test_project_installed_with_existing_extras(steps, args, pyproject):
    commands = runs(steps)
    installs = [m for r in commands for m in re.findall(r"pip install [^&;]*?(?<=\s)\.(?:\[([\w,\s-]*)\])?(?=\s|$)", r)]
    assert installs, "no `pip install .` of the project"
    known = set(pyproject["project"].get("optional-dependencies", {}))
    for extras in installs:
        unknown = {e.strip() for e in extras.split(",") if e.strip()} - known
        assert not unknown, f"extras {unknown} are not defined in pyproject.toml ({sorted(known)})"
    assert f"ray[default]=={args['RAY_VERSION']}" in " ".join(commands), "pin ray to the image's so pip cannot move it"


def test_runs_as_the_base_images_user(steps):
    users = [s["value"].split(":")[0] for s in steps if s["instruction"] == "USER"]
    assert not users or users[-1] not in ("root", "0"), "the image must not end as root"


# ---------------------------------------------------------------- the README


def shell_commands(markdown: str) -> list[str]:
    """The commands of the ```bash blocks, continuations joined, comments cut."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", markdown, flags=re.DOTALL):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = re.sub(r"(^|\s)#.*$", "", cmd).strip()
            if cmd:
                commands.append(cmd)
    return commands


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text()


@pytest.fixture(scope="module")
def commands(readme) -> list[list[str]]:
    cmds = [shlex.split(c) for c in shell_commands(readme)]
    assert cmds, "docker/README.md has no bash commands"
    return cmds


def find(commands, *words) -> list[list[str]]:
    return [c for c in commands if all(w in c for w in words)]


def test_readme_paths_exist(readme):
    paths = set(re.findall(r"(?<![\w/.$-])((?:docker|jobs|landscape_ray|tests)/[\w./-]*\w)", readme))
    assert "docker/Dockerfile" in paths and "jobs/paper/resnet56-surface.yaml" in paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"docker/README.md names files that do not exist: {missing}"
    for name in ("pyproject.toml", "README.md", ".gitignore", "Makefile"):
        if name in readme:
            assert (ROOT / name).exists()


def test_readme_builds_and_runs_the_same_image(commands):
    builds = find(commands, "docker", "build")
    assert builds, "no docker build command"
    build = builds[0]
    assert build[build.index("-f") + 1] == "docker/Dockerfile" and build[-1] == "."
    tag = build[build.index("-t") + 1]
    runs = find(commands, "docker", "run")
    assert runs and all(tag in r for r in runs), f"docker run does not run the image built as {tag}"


def test_readme_names_the_dockerfiles_versions(readme, base_image, args):
    for image in re.findall(r"rayproject/ray:[\w.-]+", readme):
        assert image == base_image.group(0), f"README says {image}, the Dockerfile uses {base_image.group(0)}"
    for pin in re.findall(r"ray\[default\]==([\w.]+)", readme):
        assert pin == args["RAY_VERSION"], f"README installs ray {pin} on the host, the image has {args['RAY_VERSION']}"


def _option_values(cmd: list[str], option: str) -> list[str]:
    return [cmd[i + 1] for i, w in enumerate(cmd[:-1]) if w == option]


def test_readme_head_gets_gpus_data_and_the_token(commands):
    (run,) = find(commands, "docker", "run")
    assert "--gpus" in run and any(w.startswith("--shm-size") for w in run)
    assert any(p.endswith(":8265") for p in _option_values(run, "-p")), "the dashboard/job port is not published"
    start = run[run.index("ray") :]
    assert start[:3] == ["ray", "start", "--head"] and "--block" in start and "0.0.0.0" in start
    mounts = [v.split(":") for v in _option_values(run, "-v")]
    assert any(m[1] == "/data" for m in mounts), "no host folder mounted at /data"
    env = dict(e.split("=", 1) for e in _option_values(run, "-e"))
    assert env.get("RAY_AUTH_MODE") == "token"
    token_path = env.get("RAY_AUTH_TOKEN_PATH")
    assert token_path, "the head needs the token (RAY_AUTH_TOKEN_PATH)"
    token_mounts = [m for m in mounts if m[1] == token_path]
    assert token_mounts and token_mounts[0][0].endswith("/.ray/auth_token"), (
        "mount the host's ~/.ray/auth_token at RAY_AUTH_TOKEN_PATH"
    )
    assert find(commands, "ray", "get-auth-token", "--generate"), "the README never creates the token"


def test_readme_jobs_are_valid_and_write_to_the_mount(commands):
    from landscape_ray.cli.parser import parser
    from landscape_ray.spec.specfile import load_spec
    from landscape_ray.spec.training import TrainSpec

    submits = find(commands, "ray", "job", "submit")
    assert submits, "no ray job submit command"
    specs = {}
    for cmd in submits:
        assert cmd[0] == "RAY_AUTH_MODE=token", "Ray >= 2.59: the job CLI needs RAY_AUTH_MODE=token"
        submit, entry = cmd[: cmd.index("--")], cmd[cmd.index("--") + 1 :]
        assert _option_values(submit, "--address") == ["http://127.0.0.1:8265"]
        assert entry[:3] == ["python", "-m", "landscape_ray"], entry
        parsed = parser().parse_args(entry[3:])
        assert (ROOT / parsed.spec).is_file()
        spec = load_spec(ROOT / parsed.spec, parsed.set, **({"model": TrainSpec} if parsed.command == "train" else {}))
        specs[parsed.command] = spec
        assert spec.data.root.startswith("/data"), f"{parsed.spec}: data.root {spec.data.root} is not on the mount"
        out = spec.out if parsed.command == "train" else spec.output.store
        assert out.startswith("/data/"), f"{parsed.spec}: output {out} would not persist"
    assert "run" in specs
    assert specs["run"].model.checkpoint and specs["run"].model.checkpoint.startswith("/data/")
    if "train" in specs:
        trained = Path(specs["train"].out) / "final.pt"
        assert Path(specs["run"].model.checkpoint) == trained, "the surface must read the trained checkpoint"
