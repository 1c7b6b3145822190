"""Structure rules of the code base (docs/architecture.md): short functions and files, each
choice list written once, and the import direction of the diffusion package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "piddpm"
MAX_FUNCTION_LINES = 120
MAX_FILE_LINES = 800
MAX_RESTORE_LINES = 150


def _python_files():
    return sorted(SRC.rglob("*.py"))


def test_functions_and_files_are_short():
    long_functions, long_files = [], []
    for path in _python_files():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(SRC)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                limit = (
                    MAX_RESTORE_LINES
                    if (path.name, node.name) == ("api.py", "restore")
                    else MAX_FUNCTION_LINES
                )
                if n > limit:
                    long_functions.append(
                        f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n})"
                    )
    assert not long_files, long_files
    assert not long_functions, long_functions


#: Choice values that must not be spelled out as a list anywhere but piddpm/choices.py.
CHOICE_LISTS = [
    r'\(\s*"pi-ddpm",\s*"ddpm",\s*"unet"',
    r'\[\s*"pi-ddpm",\s*"ddpm",\s*"unet"',
    r'[\[(]\s*"ddim",\s*"ddpm"',
    r'[\[(]\s*"ddpm",\s*"ddim"',
    r'[\[(]\s*"learned",\s*"known",\s*"both"',
    r'[\[(]\s*"l1",\s*"l2",\s*"none"',
    r'[\[(]\s*"widefield",\s*"confocal"\s*[\])]',
]


def test_choice_lists_are_written_once():
    found = []
    for path in _python_files():
        if path.name == "choices.py":
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(re.search(p, code) for p in CHOICE_LISTS):
                found.append(f"{path.relative_to(SRC)}:{lineno}: {line.strip()}")
    assert not found, found
