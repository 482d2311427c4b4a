"""agent_spawn: an agent hands a task to another agent of the app (the original's delegation tool).

``agent{agent, task, wait=true}`` runs the other agent on the task and answers with its final
content; ``spawn`` starts a run and returns its ``task_id`` at once, ``status`` / ``wait`` /
``cancel`` / ``list`` follow runs, ``run_parallel{jobs: [{agent, task}]}`` starts several and waits
for all (results in input order). A run is a real turn of the other agent, with its own brain,
tools and policy (its per-agent ``modules``), in a session of its own whose events appear on the
caller's session stream tagged with its ``agent_id`` (``conversations.turns.delegation``).

From an agent turn a blocking call suspends the turn until the runs end (no thread is held); from
``POST /tools/{name}/execute`` a run gets a session of its own (follow it with its ``session_id``)
and ``wait`` answers at once with where the runs stand.

Config: ``max_depth`` (delegation levels, default 3), ``max_children`` (runs one turn may start,
default 5). ``workspace`` is accepted for the original's manifests (the daemon injected it there).
"""

from __future__ import annotations

from typing import Any

from tooling import ports
from tooling.modules.base import Module, ToolError, action

MAX_JOBS = 50
_AGENT = {"type": "string", "minLength": 1, "maxLength": 64, "description": "The id of the agent to delegate to."}
_TASK = {
    "type": "string",
    "minLength": 1,
    "maxLength": 100_000,
    "description": "The task, self-contained: the agent cannot see your conversation.",
}
_DESCRIPTION = {"type": "string", "maxLength": 200, "description": "A short label for the UI."}
_TIMEOUT = {"type": "number", "minimum": 1, "maximum": 3600, "description": "Stop waiting after this many seconds."}
_TASK_ID = {"type": "string", "minLength": 1, "maxLength": 64, "description": "The task_id a spawn returned."}


class AgentSpawnModule(Module):
    id = "agent_spawn"
    description = "Delegate tasks to the app's other agents: run one and get its answer, or several in parallel."
    config_schema = {
        "type": "object",
        "properties": {
            "max_depth": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
            "max_children": {"type": "integer", "minimum": 1, "maximum": MAX_JOBS, "default": 5},
            "workspace": {"type": "string"},
        },
        "additionalProperties": False,
    }

    # -- plumbing ------------------------------------------------------------------------------
    # Delegation is the conversations app's (a layer above): reached through tooling.ports.
    def _app(self):
        return ports.resolve_app(self.context.app_id)

    def _call(self, fn, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except ports.delegator().DelegationError as exc:
            raise ToolError(exc.message) from None

    def _spawn(self, agent: str | None, task: str, description: str, index: int = 0) -> dict[str, Any]:
        return self._call(
            ports.delegator().spawn,
            app=self._app(),
            principal=self.context.principal,
            session_id=self.context.session_id,
            agent_id=self.context.agent_id,
            target=agent,
            task=task,
            description=description,
            config=self.config,
            index=index,
        )

    def _task(self, task_id: str):
        return self._call(
            ports.delegator().task_get,
            app_id=self.context.app_id,
            principal=self.context.principal,
            session_id=self.context.session_id,
            task_id=task_id,
        )

    def _wait(self, tasks: list[str], *, form: str, timeout: float | None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The runs' results when they have all ended; otherwise (in a turn) a wait the engine
        suspends on, or (from the API) where they stand now."""
        delegation = ports.delegator()
        wait = {"tasks": tasks, "form": form, **(extra or {})}
        answer = delegation.wait_outcome(wait)
        if answer is None:
            if delegation.CURRENT.get() is not None:
                delegation.request_wait(tasks, form=form, timeout=timeout).update(extra or {})
                return {"tasks": tasks, "status": "running", "waiting": True}
            answer = delegation.wait_outcome({**wait, "deadline": 1})
        if not answer["success"]:
            raise ToolError(answer["error"], data=answer["data"])
        return answer["data"]

    # -- actions -------------------------------------------------------------------------------
    @action(
        description="Delegate a task to another agent of this app and get its answer (wait=false: start it "
        "and get a task_id to wait for later).",
        parameters={
            "properties": {
                "agent": _AGENT,
                "task": _TASK,
                "description": _DESCRIPTION,
                "wait": {"type": "boolean", "default": True},
                "timeout": _TIMEOUT,
            },
            "required": ["task"],
        },
        risk_level="medium",
        side_effects=("state_mutation",),
        param_aliases={"prompt": "task", "specialist": "agent"},
        aliases=("delegate", "subagent", "sub_agent", "Agent", "deleguer", "ask_agent"),
        tags=("multi-agent", "delegation"),
    )
    def agent(self, task: str, agent: str | None = None, description: str = "", wait: bool = True,
              timeout: float | None = None) -> dict[str, Any]:
        run = self._spawn(agent, task, description)
        if not wait:
            return run
        return self._wait([run["task_id"]], form="one", timeout=timeout)

    @action(
        description="Start another agent of this app on a task in the background; returns its task_id at once "
        "(follow it with agent_spawn.status / agent_spawn.wait).",
        parameters={
            "properties": {"agent": _AGENT, "task": _TASK, "description": _DESCRIPTION},
            "required": ["task"],
        },
        risk_level="medium",
        side_effects=("state_mutation",),
        param_aliases={"prompt": "task", "specialist": "agent"},
        aliases=("launch_agent", "background_agent"),
        tags=("multi-agent", "delegation"),
    )
    def spawn(self, task: str, agent: str | None = None, description: str = "") -> dict[str, Any]:
        return self._spawn(agent, task, description)

    @action(
        description="Where a delegated run stands: running, completed (with its content), failed or cancelled.",
        parameters={"properties": {"task_id": _TASK_ID}, "required": ["task_id"]},
        param_aliases={"agent_id": "task_id", "run_id": "task_id"},
        tags=("multi-agent", "delegation"),
    )
    def status(self, task_id: str) -> dict[str, Any]:
        return ports.delegator().snapshot(self._task(task_id))

    @action(
        description="Wait for delegated runs to end and get their results (task_id for one, task_ids for several).",
        parameters={
            "properties": {
                "task_id": _TASK_ID,
                "task_ids": {"type": "array", "items": _TASK_ID, "minItems": 1, "maxItems": MAX_JOBS},
                "timeout": _TIMEOUT,
            },
        },
        param_aliases={"agent_id": "task_id", "agent_ids": "task_ids", "run_id": "task_id", "run_ids": "task_ids"},
        tags=("multi-agent", "delegation"),
    )
    def wait(self, task_id: str | None = None, task_ids: list[str] | None = None,
             timeout: float | None = None) -> dict[str, Any]:
        if (task_id is None) == (task_ids is None):
            raise ToolError("give task_id (one run) or task_ids (several), not both")
        ids = [task_id] if task_id is not None else list(dict.fromkeys(task_ids or ()))
        tasks = [self._task(t).correlation_id for t in ids]
        return self._wait(tasks, form="one" if task_id is not None else "many", timeout=timeout)

    @action(
        description="Cancel a delegated run (and the runs it started).",
        parameters={"properties": {"task_id": _TASK_ID}, "required": ["task_id"]},
        risk_level="medium",
        side_effects=("state_mutation",),
        param_aliases={"agent_id": "task_id", "run_id": "task_id"},
        tags=("multi-agent", "delegation"),
    )
    def cancel(self, task_id: str) -> dict[str, Any]:
        return ports.delegator().cancel(self._task(task_id))

    @action(
        name="list",
        description="The delegated runs of this session with their status.",
        parameters={"properties": {}},
        tags=("multi-agent", "delegation"),
    )
    def list_runs(self) -> dict[str, Any]:
        return ports.delegator().tasks_list(app_id=self.context.app_id, principal=self.context.principal,
                          session_id=self.context.session_id)

    @action(
        description="Run several delegations in parallel and wait for all; results in the order of jobs, one "
        "failure does not stop the others.",
        parameters={
            "properties": {
                "jobs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_JOBS,
                    "items": {
                        "type": "object",
                        "properties": {"agent": _AGENT, "task": _TASK, "prompt": _TASK, "description": _DESCRIPTION},
                        "additionalProperties": False,
                    },
                },
                "timeout": _TIMEOUT,
            },
            "required": ["jobs"],
        },
        risk_level="medium",
        side_effects=("state_mutation",),
        param_aliases={"agents": "jobs"},
        aliases=("parallel_agents", "fan_out"),
        tags=("multi-agent", "delegation", "parallel"),
    )
    def run_parallel(self, jobs: list[dict[str, Any]], timeout: float | None = None) -> dict[str, Any]:
        started: list[str] = []
        errors: dict[int, dict[str, Any]] = {}
        for index, job in enumerate(jobs):
            task = job.get("task") or job.get("prompt") or ""
            try:
                started.append(self._spawn(job.get("agent"), task, job.get("description", ""), index=index)["task_id"])
            except ToolError as exc:
                if index == 0 and "fan-out limit" in exc.message:
                    raise
                errors[index] = {"agent_id": job.get("agent"), "status": "failed", "error": exc.message}
                started.append("")
        ok = [t for t in started if t]
        if not ok:
            raise ToolError("no job could start: " + "; ".join(e["error"] for e in errors.values()))
        wait_errors = {str(i): e for i, e in errors.items()}
        return self._wait(ok, form="many", timeout=timeout, extra={"errors": wait_errors, "order": started}
                          if errors else None)
