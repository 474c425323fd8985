"""Write a run's files: results.json, junit.xml, results.ktap, report.md, dmesg, console,
spec, qemu.sh."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import jinja2

from ..util.files import atomic_write, new_out_dir
from .junit import to_junit
from .ktap import to_ktap
from .model import RunResult

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def make_out_dir(path: Path | None, topology: str) -> Path:
    """Create the output directory; never overwrite an existing run."""
    return new_out_dir(path, topology)


def render_report(result: RunResult) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             undefined=jinja2.StrictUndefined, trim_blocks=False,
                             keep_trailing_newline=True)
    return env.get_template("report.md.j2").render(r=result)


def write_results(out: Path, result: RunResult, *, topology_file: Path | None = None,
                  qemu_script: str | None = None, console: Path | None = None,
                  dmesg: str = "", dmesg_deltas: Sequence[tuple[str, str]] = ()) -> None:
    _write(out / "results.json", json.dumps(result.to_json(), indent=1) + "\n")
    _write(out / "junit.xml", to_junit(result) + "\n")
    _write(out / "results.ktap", to_ktap(result))
    _write(out / "report.md", render_report(result))
    if topology_file and topology_file.exists():
        shutil.copyfile(topology_file, out / "topology.yaml")
    if qemu_script:
        _write(out / "qemu.sh", qemu_script)
        os.chmod(out / "qemu.sh", 0o755)
    if console and console.exists():
        if console.resolve() != (out / "console.log").resolve():
            shutil.copyfile(console, out / "console.log")
    else:
        _write(out / "console.log", "")
    _write(out / "dmesg.txt", dmesg)
    _write(out / "dmesg-workloads.txt", "".join(
        f"===== {name} =====\n{text}\n" for name, text in dmesg_deltas))


def _write(path: Path, text: str) -> None:
    atomic_write(path, text)
