"""Write a run's files: results.json, junit.xml, report.md, dmesg, console, spec, qemu.sh."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import jinja2

from ..errors import UsageError
from .junit import to_junit
from .model import RunResult

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def default_out_dir(topology: str, base: Path = Path("runs")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return base / f"{stamp}-{topology}"


def make_out_dir(path: Path | None, topology: str) -> Path:
    """Create the output directory; never overwrite an existing run."""
    if path is None:
        path = default_out_dir(topology)
        base, n = path, 1
        while path.exists():
            path = base.with_name(f"{base.name}-{n}")
            n += 1
    if path.exists() and any(path.iterdir()):
        raise UsageError(f"--out {path}: exists and is not empty (a run never overwrites another)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot create: {exc.strerror}") from None
    return path


def render_report(result: RunResult) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             undefined=jinja2.StrictUndefined, trim_blocks=False,
                             keep_trailing_newline=True)
    return env.get_template("report.md.j2").render(r=result)


def write_results(out: Path, result: RunResult, *, topology_file: Path | None = None,
                  qemu_script: str | None = None, console: Path | None = None,
                  dmesg: str = "", dmesg_deltas: list[tuple[str, str]] = ()) -> None:
    _write(out / "results.json", json.dumps(result.to_json(), indent=1) + "\n")
    _write(out / "junit.xml", to_junit(result) + "\n")
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
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
