"""The README's Architecture section names only what exists: every file it names is in the
folder it names it under, every stage folder of the package is in its picture, and the
paths of "Where new things go" are real (a run/loop that never existed must fail here)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "testbed"


def architecture() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Architecture\n")
    return text[start:text.index("\n## ", start + 1)]


def diagram_files(section: str) -> list[tuple[str, str]]:
    """(stage folder, file) for every ``name.py`` the diagram names; a line that starts
    with ``folder/`` opens a stage, ``|`` lines continue it."""
    block = re.search(r"```\n(.*?)```", section, flags=re.S)
    assert block, "the Architecture section has no diagram"
    out, stage = [], ""
    for line in block.group(1).splitlines():
        opened = re.match(r"\s*([a-z_]+)/[\s,]", line)
        if opened:
            stage = opened.group(1)
        # a second column (workloads/ ... results/) opens its own stage for its words only
        for part in re.split(r"\s{3,}(?=[a-z_]+/\s)", line):
            col = re.match(r"\s*([a-z_]+)/\s", part)
            where = col.group(1) if col else stage
            out += [(where, f) for f in re.findall(r"\b([a-z_0-9]+\.py)\b", part)]
    return out


def test_every_file_the_diagram_names_exists_in_its_stage():
    named = diagram_files(architecture())
    assert len(named) > 40
    missing = [f"{stage}/{name}" for stage, name in named
               if not (PACKAGE / stage / name).exists() and not (PACKAGE / name).exists()
               and not any((PACKAGE / stage).glob(f"*/{name}"))]
    assert not missing, f"README Architecture names files that do not exist: {missing}"


def test_every_stage_folder_is_in_the_diagram():
    section = architecture()
    folders = [d.name for d in PACKAGE.iterdir()
               if d.is_dir() and (d / "__init__.py").exists()]
    absent = [f for f in folders if f"{f}/" not in section]
    assert not absent, f"README Architecture does not mention {absent}"


def test_where_new_things_go_names_real_paths():
    section = architecture()
    paths = re.findall(r"`([a-z_]+/[a-z_0-9/]*\.py)`", section)
    assert "spec/endpoints/igb.py" in paths and "machines/x86_64.py" in paths
    missing = [p for p in paths if not (PACKAGE / p).exists()]
    assert not missing, f"README Architecture names paths that do not exist: {missing}"


def test_a_file_that_does_not_exist_is_caught():
    fake = "```\n run/         runner.py (one run), loop.py\n```\n"
    assert ("run", "loop.py") in diagram_files(fake)
    assert not (PACKAGE / "run" / "loop.py").exists()
