"""The shape of the package: no import cycles, twin surfaces that match, no dead exports."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import rkllm_sdk as rk

PACKAGE = Path(rk.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph() -> dict[str, set[str]]:
    """Every rkllm_sdk module -> the rkllm_sdk modules it imports, wherever the import
    stands (TYPE_CHECKING blocks and function bodies included)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node)
                # `from . import x` names a submodule when one exists, else a package member.
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            for imported in targets:
                target = imported
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith("rkllm_sdk") and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected sets of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_package_modules() -> None:
    """No two rkllm_sdk modules import each other, directly or through others, even under
    TYPE_CHECKING."""
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_cycles() -> None:
    """The scan above can fail: a two-module and a three-module cycle are both reported."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(_cycles(graph)) == [["a", "b"], ["c", "d", "e"]]


def test_the_import_graph_sees_type_checking_and_relative_imports() -> None:
    """The scan resolves relative imports and sees the ones under TYPE_CHECKING."""
    graph = import_graph()
    assert "rkllm_sdk.results" in graph["rkllm_sdk.errors"]
    assert "rkllm_sdk._native" in graph["rkllm_sdk.stream"]
    assert "rkllm_sdk.sync" in graph["rkllm_sdk.lowlevel"]  # a TYPE_CHECKING import
    assert graph["rkllm_sdk.results"] == set()  # the leaf


# Underscore names that are public API of the standard library.
_STDLIB_PRIVATE_API = {"_asdict", "_replace", "_fields", "_exit"}


def _own_private_names(tree: ast.Module) -> set[str]:
    """The `_names` a module defines itself: private methods and `self._x` attributes."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            names.add(node.attr)
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:  # __slots__ and annotated class attributes
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    names.add(stmt.target.id)
    return names


def test_no_module_reaches_into_another_modules_private_members() -> None:
    """No rkllm_sdk module uses `obj._name` for a private member another module defines,
    except the one documented hazmat accessor (llm.handle_core, for lowlevel)."""
    offenders = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = _own_private_names(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in own
                and node.attr not in _STDLIB_PRIVATE_API
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                offenders.append(f"{name}:{node.lineno} .{node.attr}")
    assert offenders == []


def _surface(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


def test_the_blocking_twin_has_every_method_of_the_async_client() -> None:
    """LLM offers each public method and property of AsyncLLM (aclose -> close), and
    SyncChatSession each of ChatSession's, SyncTokenStream each of TokenStream's."""
    renames = {"aclose": "close"}
    twin_only = {"async_llm"}  # the twin's way to the async client it drives
    assert {renames.get(n, n) for n in _surface(rk.AsyncLLM)} == _surface(rk.LLM) - twin_only
    session_attributes = {"system", "tools", "thinking", "turns"}  # set in __init__
    assert _surface(rk.ChatSession) | session_attributes == _surface(rk.SyncChatSession) - {
        "session"  # the twin's way to the async session it drives
    }
    assert {renames.get(n, n) for n in _surface(rk.TokenStream)} <= _surface(rk.SyncTokenStream)


def test_abort_is_the_same_kind_of_call_everywhere() -> None:
    """abort() does not block anywhere: a plain method on the client, the stream and twins."""
    for cls in (rk.AsyncLLM, rk.TokenStream, rk.LLM, rk.SyncTokenStream):
        assert not inspect.iscoroutinefunction(cls.abort), cls


def test_stream_has_the_same_call_shape_on_client_and_chat() -> None:
    """llm.stream() and chat.stream() are both plain methods returning a TokenStream."""
    for fn in (rk.AsyncLLM.stream, rk.ChatSession.stream):
        assert not inspect.iscoroutinefunction(fn)
        assert inspect.signature(fn).return_annotation == "TokenStream"


def _public_annotations() -> str:
    """Every annotation of every public function, method and property of the package."""
    texts = []
    for name in rk.__all__:
        obj = getattr(rk, name)
        members = [obj]
        if inspect.isclass(obj):
            members += [
                v
                for k, v in vars(obj).items()
                if not k.startswith("_") or k in ("__init__", "__anext__", "__next__")
            ]
        for member in members:
            fn = member.fget if isinstance(member, property) else member
            fn = getattr(fn, "__func__", fn)
            if callable(fn):
                try:
                    sig = inspect.signature(fn)
                except (TypeError, ValueError):
                    continue
                texts.append(str(sig.return_annotation))
                texts += [str(p.annotation) for p in sig.parameters.values()]
        if inspect.isclass(obj):  # attrs / NamedTuple fields are returned to the caller
            texts += [str(a) for a in getattr(obj, "__annotations__", {}).values()]
    # Type aliases name their members in the source, not in the annotations that use them.
    texts += [str(rk.Input), str(rk.PromptLike)]
    return " ".join(texts)


def test_every_exported_type_is_taken_or_returned_by_a_public_call() -> None:
    """No dead exports: each exported class (errors aside: they are raised) appears in the
    signature of some public call or in the fields of a returned value."""
    annotations = _public_annotations()
    unused = [
        name
        for name in rk.__all__
        if inspect.isclass(obj := getattr(rk, name))
        and not issubclass(obj, BaseException)
        and name not in ("AsyncLLM", "LLM")  # the entry points themselves
        and name not in annotations
    ]
    assert unused == []


def test_every_test_says_what_it_pins() -> None:
    """Every test function of the project's suites has a docstring."""
    root = PACKAGE.parent
    files = [
        *root.joinpath("tests").rglob("test_*.py"),
        *root.joinpath("examples").rglob("test_*.py"),
    ]
    missing = [
        f"{path.relative_to(root)}:{node.lineno} {node.name}"
        for path in files
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
        and not ast.get_docstring(node)
    ]
    assert missing == []
