"""The README's pytest examples call the plugin's ``guest.workload`` with RunOptions
fields as keywords: a renamed field must fail here, not in a user's first test."""

import ast
import dataclasses
import re
from pathlib import Path

from testbed.run.runner import RunOptions

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def workload_calls(code: str) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute) and n.func.attr == "workload"]


def test_the_readme_workload_examples_use_runoptions_fields():
    fields = {f.name for f in dataclasses.fields(RunOptions)}
    calls = [c for block in python_blocks(README.read_text()) for c in workload_calls(block)]
    assert len(calls) >= 5  # the examples are there to check
    for call in calls:
        unknown = {k.arg for k in call.keywords} - fields
        assert not unknown, f"README line {call.lineno} of its block: {unknown} not RunOptions"


def test_a_wrong_keyword_is_found():
    (call,) = workload_calls('guest.workload("split", pair=("nvme0", "nvme1"))')
    assert {k.arg for k in call.keywords} - {f.name for f in dataclasses.fields(RunOptions)} \
        == {"pair"}
