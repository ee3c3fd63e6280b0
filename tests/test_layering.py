"""The package's layers, enforced by reading imports (AST, so lazy imports inside functions count too).

- only edge/engine/llama.py imports llama_cpp;
- only edge/api/ imports fastapi or starlette;
- edge/engine/ imports nothing from edge.vision, edge.chat or edge.api;
- nothing outside edge/api/ imports edge.api, except the command line (edge/cli.py), which sits on top to
  serve it;
- ctypes only in edge/engine/llama.py and the native projector binding (edge/vision/native.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

EDGE = Path(__file__).resolve().parents[1] / "edge"


def imports_of(path: Path) -> set[str]:
    """Top-level module names and `edge.*` module paths imported anywhere in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            out.add(name.split(".")[0])
            if name.startswith("edge."):
                out.add(name)
    return out


def violations(root: Path = EDGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        mods = imports_of(path)
        edge_mods = {m for m in mods if m.startswith("edge.")}
        if "llama_cpp" in mods and rel != "edge/engine/llama.py":
            found.append(f"{rel} imports llama_cpp (only edge/engine/llama.py may)")
        if mods & {"fastapi", "starlette"} and not rel.startswith("edge/api/"):
            found.append(f"{rel} imports fastapi/starlette (only edge/api/ may)")
        if rel.startswith("edge/engine/"):
            bad = sorted(m for m in edge_mods if m.split(".")[1] in ("vision", "chat", "api"))
            if bad:
                found.append(f"{rel} (engine) imports {', '.join(bad)}")
        if not rel.startswith("edge/api/") and rel != "edge/cli.py" and any(m.split(".")[1] == "api" for m in edge_mods):
            found.append(f"{rel} imports edge.api (only edge/api/ may)")
        if "ctypes" in mods and rel not in ("edge/engine/llama.py", "edge/vision/native.py"):
            found.append(f"{rel} uses ctypes (only the llama.cpp and native projector bindings may)")
    return found


def test_layers_hold():
    assert violations() == []


def test_a_violation_is_caught(tmp_path):
    pkg = tmp_path / "edge"
    (pkg / "engine").mkdir(parents=True)
    (pkg / "chat").mkdir()
    (pkg / "engine" / "generate.py").write_text("from edge.chat.parse import StreamParser\n")
    (pkg / "chat" / "parse.py").write_text("def f():\n    import llama_cpp\n    from fastapi import FastAPI\n")
    (pkg / "runtime.py").write_text("import edge.api.app\n")
    assert violations(pkg) == [
        "edge/chat/parse.py imports llama_cpp (only edge/engine/llama.py may)",
        "edge/chat/parse.py imports fastapi/starlette (only edge/api/ may)",
        "edge/engine/generate.py (engine) imports edge.chat.parse, edge.chat.parse.StreamParser",
        "edge/runtime.py imports edge.api (only edge/api/ may)",
    ]
