"""The per-app tool index: every tool of the app's modules, its policy, categories and search.

Built from a :class:`CompiledApp` (at deploy for the summary's counts, then on first use in each
process) and cached by the compiled app's content hash, so a redeploy gets a fresh index. Tools
whose app-level policy is ``block`` are kept aside for name resolution (so a call gets a clear
"blocked by policy" instead of "unknown tool") but never appear in ``tools``, categories or search.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from approvals.policy import resolve_policy_detail
from digitorn_site.errors import NotFoundError
from tooling import registry
from tooling.search import ToolDoc, ToolSearchIndex

_CACHE_SIZE = 128
# Auto tool injection (runtime.tool_injection unset): every tool as a native function while they
# fit, the discovery meta-tools beyond this many.
DIRECT_TOOLS_LIMIT = 40


def injection_mode(app: Any, tool_count: int) -> str:
    """runtime.tool_injection, or the automatic choice for ``tool_count`` visible tools."""
    forced = getattr(getattr(app, "runtime", None), "tool_injection", None)
    if forced:
        return forced
    return "discovery" if tool_count > DIRECT_TOOLS_LIMIT else "direct"

_build_lock = threading.Lock()


@dataclass(frozen=True)
class ToolSpec:
    name: str  # module.action
    module: str
    action: str
    description: str
    parameters: dict[str, Any]
    risk_level: str
    side_effects: tuple[str, ...]
    irreversible: bool
    aliases: tuple[str, ...]
    tags: tuple[str, ...]
    policy: str  # the app-level policy (no agent restriction): auto | approve | block
    policy_reason: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "risk_level": self.risk_level,
            "tags": list(self.tags),
        }

    def schema(self) -> dict[str, Any]:
        """What an LLM needs to call it."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "risk_level": self.risk_level,
        }

    def detail(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "description": self.description,
            "parameters": self.parameters,
            "side_effects": list(self.side_effects),
            "aliases": list(self.aliases),
            "tags": list(self.tags),
            "risk_level": self.risk_level,
            "irreversible": self.irreversible,
            "policy": self.policy,
        }


@dataclass(frozen=True)
class Category:
    name: str
    description: str
    tools: tuple[ToolSpec, ...]

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "tool_count": len(self.tools)}


@dataclass
class ToolIndex:
    app_id: str
    tools: list[ToolSpec]  # visible (not blocked), in module then action order
    blocked: dict[str, ToolSpec]
    categories: dict[str, Category]
    # The search index is built on first search (see _search): a turn that only calls tools never
    # loads numpy or the embedding model (~35 MiB per process, issue 14).
    _docs: tuple[ToolDoc, ...] = field(default=(), repr=False)
    tool_injection_mode: str = "direct"
    _by_name: dict[str, ToolSpec] = field(default_factory=dict, repr=False)
    _aliases: dict[str, list[ToolSpec]] = field(default_factory=dict, repr=False)
    # False when a virtual module (an MCP server) could not be listed: such an index is not cached,
    # so the server's tools appear once it answers.
    complete: bool = True
    _built: ToolSearchIndex | None = field(default=None, repr=False)

    @property
    def total_tools(self) -> int:
        return len(self.tools)

    @property
    def total_categories(self) -> int:
        return len(self.categories)

    @property
    def _search(self) -> ToolSearchIndex:
        if self._built is None:
            with _build_lock:
                if self._built is None:
                    self._built = ToolSearchIndex.build(self._docs)
        return self._built

    @property
    def mode(self) -> str:
        return self._search.mode

    def search(self, query: str, max_results: int = 10) -> list[tuple[ToolSpec, float]]:
        """Best-first visible tools with a relevance in 0..1 (ValueError for an empty query)."""
        return [(self._by_name[doc.name], score) for doc, score in self._search.search(query, max_results)]

    def resolve(self, name: str) -> ToolSpec:
        """Any tool of the app, blocked ones included: FQN, ``module__action``, ``module.alias``, or a
        bare action name or alias that only one module has. Unknown → NotFoundError with did-you-mean."""
        raw = (name or "").strip()
        candidates = [raw]
        if "__" in raw and "." not in raw:
            candidates.append(raw.replace("__", ".", 1))
        for candidate in list(candidates):  # the original's module names: bash.run -> shell.run
            module, sep, rest = candidate.partition(".")
            if module in registry.MODULE_ALIASES:
                candidates.append(f"{registry.MODULE_ALIASES[module]}{sep}{rest}")
        for candidate in candidates:
            spec = self._by_name.get(candidate) or self.blocked.get(candidate)
            if spec is not None:
                return spec
        for candidate in candidates:
            module, sep, rest = candidate.partition(".")
            keys = [candidate.lower()] if not sep else [f"{module}.{rest}".lower()]
            for key in keys:
                matches = self._aliases.get(key, [])
                if len(matches) == 1:
                    return matches[0]
        known = sorted([*self._by_name, *self.blocked])
        hint = difflib.get_close_matches(raw, known + sorted(self._aliases), n=1, cutoff=0.6)
        suggestion = ""
        if hint:
            target = self._aliases.get(hint[0])
            suggestion = f" Did you mean '{target[0].name if target else hint[0]}'?"
        raise NotFoundError(
            f"App '{self.app_id}' has no tool '{name}'.{suggestion} Tool names are 'module.action', "
            f"e.g. {', '.join(known[:3]) or '(this app declares no modules)'}."
        )

    def get(self, name: str) -> ToolSpec:
        """A visible tool by any of its names; a blocked one is NotFound with the reason."""
        spec = self.resolve(name)
        if spec.policy == "block":
            raise NotFoundError(
                f"Tool '{spec.name}' is not available in app '{self.app_id}': blocked by its capabilities "
                f"policy ({spec.policy_reason})."
            )
        return spec

    def category(self, name: str) -> Category:
        try:
            return self.categories[name]
        except KeyError:
            hint = difflib.get_close_matches(name, list(self.categories), n=1)
            suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
            raise NotFoundError(
                f"App '{self.app_id}' has no tool category '{name}'.{suggestion} Categories: "
                f"{', '.join(self.categories) or '(none)'}."
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_tools": self.total_tools,
            "total_categories": self.total_categories,
            "tool_injection_mode": self.tool_injection_mode,
            "categories": [
                {**category.summary(), "tools": [tool.detail() for tool in category.tools]}
                for category in self.categories.values()
            ],
        }


def build_index(app: Any) -> ToolIndex:
    modules = registry.all_modules()
    visible: list[ToolSpec] = []
    blocked: dict[str, ToolSpec] = {}
    categories: dict[str, Category] = {}
    docs: list[ToolDoc] = []
    aliases: dict[str, list[ToolSpec]] = {}
    entries = [(m, modules[m].description, modules[m].actions) for m in app.modules if m in modules]
    # A hidden module (mcp: its servers' tools are what agents want) is callable by name but stays
    # out of tools, categories and search, as in the original.
    hidden_ids = {m for m in app.modules if getattr(modules.get(m), "hidden", False)}
    hidden: list[ToolSpec] = []
    # (the compiler refuses unknown modules; an old stored app must not break discovery)
    # Virtual modules (each MCP server's tools as mcp_<server>) follow the declared ones.
    virtual = registry.virtual_modules(app.app_id, app.modules)
    entries += [(m, description, actions) for m, (description, actions) in virtual.items()]
    for module_id, module_description, module_actions in entries:
        shown: list[ToolSpec] = []
        for spec in module_actions.values():
            decision = resolve_policy_detail(app, None, module_id, spec.name, spec.risk_level)
            tool = ToolSpec(
                name=f"{module_id}.{spec.name}",
                module=module_id,
                action=spec.name,
                description=spec.description,
                parameters=spec.parameters,
                risk_level=spec.risk_level,
                side_effects=spec.side_effects,
                irreversible=spec.irreversible,
                aliases=spec.aliases,
                tags=spec.tags,
                policy=decision.policy,
                policy_reason=decision.reason,
            )
            for key in {spec.name.lower(), *(a.lower() for a in spec.aliases)}:
                aliases.setdefault(key, []).append(tool)
                aliases.setdefault(f"{module_id}.{key}", []).append(tool)
            if decision.policy == "block":
                blocked[tool.name] = tool
                continue
            if module_id in hidden_ids:
                hidden.append(tool)
                continue
            shown.append(tool)
            docs.append(
                ToolDoc(
                    name=tool.name,
                    module=module_id,
                    action=spec.name,
                    description=spec.description,
                    aliases=spec.aliases,
                    tags=spec.tags,
                    category_description=module_description,
                )
            )
        if shown:
            categories[module_id] = Category(name=module_id, description=module_description, tools=tuple(shown))
        visible.extend(shown)
    return ToolIndex(
        app_id=app.app_id,
        tools=visible,
        blocked=blocked,
        categories=categories,
        _docs=tuple(docs),
        tool_injection_mode=injection_mode(app, len(visible)),
        _by_name={tool.name: tool for tool in visible + hidden},
        _aliases=aliases,
        complete=set(registry.virtual_module_ids(app.modules)) <= set(virtual),
    )


_cache: OrderedDict[tuple[str, str], ToolIndex] = OrderedDict()
_lock = threading.Lock()


# Per compiled-app object (by identity: the selectors hand out one object per stored version);
# hashing the whole dict on every tool call showed in bench_load profiles. The finalizer drops
# the entry when the object dies, before its id can be reused.
_hashes: dict[int, str] = {}


def app_hash(app: Any) -> str:
    digest = _hashes.get(id(app))
    if digest is None:
        digest = hashlib.sha256(json.dumps(app.to_dict(), sort_keys=True, default=str).encode()).hexdigest()
        try:
            weakref.finalize(app, _hashes.pop, id(app), None)
        except TypeError:  # not weak-referenceable: not memoised
            return digest
        _hashes[id(app)] = digest
    return digest


def cached_index(app: Any) -> ToolIndex:
    key = (app.app_id, app_hash(app))
    with _lock:
        index = _cache.get(key)
        if index is not None:
            _cache.move_to_end(key)
            return index
    index = build_index(app)
    if not index.complete:
        return index
    with _lock:
        _cache[key] = index
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return index
