"""The Makefile's set-up installs the torch that pyproject.toml pins, from the CPU wheel index
the image uses (running it is checked by hand in a scratch clone: it downloads gigabytes)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def make_variable(name: str) -> str:
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{name}\s*[:?]?=\s*(\S+)\s*$", text, flags=re.MULTILINE)
    assert match, f"the Makefile sets no {name}"
    return match.group(1)


def test_make_installs_the_pinned_torch_from_the_images_cpu_index() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    assert pin == f"torch=={make_variable('TORCH_VERSION')}"
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert f"--index-url {make_variable('TORCH_INDEX')} " in dockerfile


def test_the_cpu_index_probe_is_short() -> None:
    text = (ROOT / "Makefile").read_text()
    assert "urlopen(sys.argv[1], timeout=5)" in text
    recipe = text[text.index("$(STAMP): pyproject.toml") :]
    torch_step = recipe.index('--index-url "$(TORCH_INDEX)"')
    assert torch_step < recipe.index('pip install --quiet -e ".[dev]"'), "torch goes first"
