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
    block = text[text.index("\npipeline/ ", text.index("\nmodel/ ")):text.index("\njobs/\n")]
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
    for path in (ROOT / "model").rglob("*.py"):
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


MODEL = ROOT / "model"
MODEL_PACKAGES = sorted(p.name for p in MODEL.iterdir() if (p / "__init__.py").exists())
BASE = {"config", "families", "devices", "storage"}  # top-level modules every package may build on
# What each part of model/ may import: the base modules (they import no package), and packages through their
# public names only; convert.py (a command) and __init__.py may import anything.
MODEL_ALLOWED = {"families": set(), "config": {"families"}, "devices": set(), "storage": set(),
                 "tokenization": {"storage"}, "checkpoints": {"config", "families", "storage"},
                 "generation": {"config"},
                 "architecture": {"config", "families", "devices", "checkpoints", "generation", "tokenization"},
                 "text": {"config", "devices", "architecture", "generation", "tokenization"}}
# Every name `from model import ...` offers; a removal breaks users' code, README snippets and pipeline/.
PUBLIC_NAMES = {
    "BATCHING", "DECODER_TOKENIZER", "DEFAULT_BATCH_TOKENS", "ERR_OOM", "Generated", "TextGenerator", "AutoModel",
    "AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoTokenizer", "BartForConditionalGeneration",
    "BartTokenizer", "BartTokenizerFast", "BatchEncoding", "BertGenerationTokenizer",
    "BertTokenizer", "BertTokenizerFast", "BertConfig", "EncoderDecoderConfig", "EncoderDecoderModel",
    "GenerationConfig", "Seq2SeqOutput", "StackConfig", "Text2TextPipeline", "Tokenizer", "DecodePolicy",
    "DecodeStats", "batches", "check_generation", "check_vocabularies", "compiled_decode_step", "decode_step",
    "load_tokenizers", "pad_ids", "pipeline", "read_configs", "run_dtype", "save_tokenizers", "static_decode_step",
    "write_atomic"}


def model_imports(path) -> list[tuple[str, list[str]]]:
    """imports() of a model/ file, with `from .. import generation` read as an import of model.generation."""
    found = []
    for target, names in imports(path):
        if target == "model" and path.name != "__init__.py" or target.startswith("model.") and names and all(
                (MODEL / target.removeprefix("model").replace(".", "/").lstrip("/") / n).with_suffix(".py").exists()
                or (MODEL / target.removeprefix("model").replace(".", "/").lstrip("/") / n / "__init__.py").exists()
                for n in names):
            found += [(f"{target}.{n}", []) for n in names]
        else:
            found.append((target, names))
    return found


def part(path) -> str:
    """The package or top-level module of model/ a file belongs to."""
    return path.relative_to(MODEL).parts[0].removesuffix(".py")


def test_model_public_names_are_all_still_there():
    import model

    assert set(model.__all__) >= PUBLIC_NAMES
    assert all(hasattr(model, name) for name in PUBLIC_NAMES)


def test_the_map_lists_exactly_the_packages_and_modules_of_model():
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text[text.index("\nmodel/ "):text.index("\npipeline/ ", text.index("\nmodel/ "))]
    top, mapped, package = set(), {}, None
    for line in block.splitlines():
        if m := re.match(r"^  (\w+)\.py\s", line):
            top.add(m.group(1))
        elif m := re.match(r"^  (\w+)/\s", line):
            package = m.group(1)
            mapped[package] = set()
        elif (m := re.match(r"^    (\w+)\.py\s", line)) and package:
            mapped[package].add(m.group(1))
    assert top == {f.stem for f in MODEL.glob("*.py")}
    assert len(top - {"__init__"}) <= 6
    assert mapped == {p: {f.stem for f in (MODEL / p).glob("*.py") if f.stem != "__init__"} for p in MODEL_PACKAGES}
    assert set(MODEL_ALLOWED) == (top - {"__init__", "convert"}) | set(MODEL_PACKAGES)


def test_model_packages_import_only_what_the_map_allows():
    for path in MODEL.rglob("*.py"):
        mine = part(path)
        if mine in ("__init__", "convert"):
            continue
        for target, names in model_imports(path):
            if not target.startswith("model."):
                continue
            other = target.split(".")[1]
            if other == mine:
                continue
            assert other in MODEL_ALLOWED[mine], f"{path.relative_to(ROOT)} imports {target}"
            if other in MODEL_PACKAGES:
                assert target == f"model.{other}" and set(names) <= public(target), \
                    f"{path.relative_to(ROOT)} imports {target} {names}: only the package's public names"


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of a graph, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finds_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_in_model():
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in MODEL.rglob("*.py")}
    graph = {name: {t for t, _ in model_imports(path) if t in modules and t != name} for name, path in modules.items()}
    # a module imports its package's __init__ implicitly: that edge is Python's, not the code's
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}
    assert cycle(graph) is None
    assert cycle(MODEL_ALLOWED) is None  # the rules themselves allow no circle between packages
