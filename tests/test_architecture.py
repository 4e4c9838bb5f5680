"""docs/architecture.md matches the code: the packages and modules it maps, and the import rules it states."""

from __future__ import annotations

import ast
import importlib
import re

from tests.helpers import ROOT

PIPELINE = ROOT / "pipeline"
PACKAGES = sorted(p.name for p in PIPELINE.iterdir() if (p / "__init__.py").exists())
# Which pipeline packages each one may import (nightly: batch through its public names only).
ALLOWED = {"io": set(), "cluster": {"io"}, "batch": {"io", "cluster"}, "nightly": {"io", "cluster", "batch"},
           "train": {"io", "cluster"}}


def imports(path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) for every import of a file; relative ones resolved."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            name = node.module or ""
            target = f"{base}.{name}".rstrip(".") if node.level else name
            found.append((target, [a.name for a in node.names]))
    return found


def public(package: str) -> set[str]:
    """What a package exports: its __all__, or (pipeline.io) its modules."""
    mod = importlib.import_module(package)
    if hasattr(mod, "__all__"):
        return set(mod.__all__)
    return {p.stem for p in (ROOT / package.replace(".", "/")).glob("*.py") if p.stem != "__init__"}


def test_the_map_lists_exactly_the_packages_and_modules_of_pipeline():
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text[text.index("\npipeline/ "):text.index("\njobs/\n")]
    mapped, package = {}, None
    for line in block.splitlines():
        if m := re.match(r"^  (\w+)/\s", line):
            package = m.group(1)
            mapped[package] = set()
        elif (m := re.match(r"^    (\w+)\.py\s", line)) and package:
            mapped[package].add(m.group(1))
    tree = {p: {f.stem for f in (PIPELINE / p).glob("*.py") if f.stem != "__init__"} for p in PACKAGES}
    assert mapped == tree
    assert not [f.name for f in PIPELINE.glob("*.py") if f.name != "__init__.py"]  # no module outside a package


def test_no_module_name_repeats_its_package_as_a_prefix():
    assert [f"{p}/{m}" for p in PACKAGES for m in (f.stem for f in (PIPELINE / p).glob("*.py")) if m.startswith(p)] \
        == []


def test_pipeline_packages_import_only_what_the_map_allows():
    for package in PACKAGES:
        for path in (PIPELINE / package).glob("*.py"):
            for target, names in imports(path):
                if not target.startswith("pipeline."):
                    continue
                other = target.split(".")[1]
                if other == package:
                    continue
                assert other in ALLOWED[package], f"{path.relative_to(ROOT)} imports {target}"
                if package == "nightly" and other == "batch":
                    assert target == "pipeline.batch" and set(names) <= public("pipeline.batch"), \
                        f"{path.relative_to(ROOT)} imports {target} {names}: batch only through its public names"


def test_model_knows_nothing_of_ray_pipeline_jobs_or_transformers():
    for path in (ROOT / "model").glob("*.py"):
        for target, _ in imports(path):
            assert target.split(".")[0] not in ("ray", "pipeline", "jobs", "transformers"), \
                f"{path.relative_to(ROOT)} imports {target}"


def test_pipeline_uses_model_and_jobs_use_pipeline_through_public_names_only():
    model_names = public("model")
    for path in PIPELINE.rglob("*.py"):
        for target, names in imports(path):
            if target.split(".")[0] == "model":
                assert target == "model" and set(names) <= model_names, f"{path.relative_to(ROOT)}: {target} {names}"
    for path in (ROOT / "jobs").glob("*.py"):
        for target, names in imports(path):
            if target.startswith("pipeline"):
                assert target.count(".") == 1 and set(names) <= public(target), \
                    f"{path.relative_to(ROOT)} imports {target} {names}: only a package's public names"
