"""git: inspect and commit to git repositories inside the app's workspace, with the git CLI.

Config: ``workspace`` (default: the filesystem module's workspace, else the app's own folder),
``timeout`` (seconds per git command, default 30), ``max_output`` (characters kept of a command's
output, default 200 000), ``author_name`` / ``author_email`` (identity of commits the agent makes,
default "Digitorn Agent" <agent@digitorn.local>).

A repository in the workspace is attacker-controlled: its ``.git/config`` (or a file it includes)
may name programs git would run — ``core.fsmonitor``, ``core.sshCommand``, hooks, filter/diff/merge
drivers, ``gpg.program``, pagers, editors. Every command therefore runs with a clean environment
(no global/system config, no terminal prompts), with ``-c`` overrides that disable every
program-running key git knows, plus empty overrides for each filter/diff/merge driver the repo
declares, ``--no-ext-diff --no-textconv`` where they apply, and no network operation at all.
Repositories are found only inside the workspace (``GIT_CEILING_DIRECTORIES``) and a ``.git`` file
pointing elsewhere is refused.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

from tooling.modules._workspace import module_workspace, relative, resolve_in
from tooling.modules.base import Module, ToolError, action

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_OUTPUT = 200_000

# Keys that make git run a program (or reach the network); each forced to an inert value.
_SAFE_CONFIG = (
    ("core.fsmonitor", "false"),
    ("core.hooksPath", os.devnull),
    ("core.sshCommand", "false"),
    ("core.gitProxy", ""),
    ("core.askPass", ""),
    ("core.editor", "false"),
    ("core.pager", "cat"),
    ("core.alternateRefsCommand", ""),
    ("core.untrackedCache", "false"),
    ("sequence.editor", "false"),
    ("credential.helper", ""),
    ("diff.external", ""),
    ("commit.gpgSign", "false"),
    ("tag.gpgSign", "false"),
    ("gpg.program", "false"),
    ("gpg.ssh.program", "false"),
    ("gpg.x509.program", "false"),
    ("protocol.allow", "never"),
    ("uploadpack.packObjectsHook", ""),
    ("receive.procReceiveRefs", ""),
    ("safe.bareRepository", "explicit"),
    ("color.ui", "false"),
    ("log.showSignature", "false"),
    ("submodule.recurse", "false"),
)
# Per-driver keys: "<section>.<driver>.<key>" entries whose value is a command line.
_DRIVER_KEYS = re.compile(r"^(filter|diff|merge)\.(.+)\.(clean|smudge|process|textconv|command|driver)$", re.I)
_REV = re.compile(r"^[A-Za-z0-9_./@^~{}:+-]{1,200}$")
_BRANCH = re.compile(r"^[A-Za-z0-9_./-]{1,200}$")


def _check_rev(value: str, field: str) -> str:
    if value.startswith("-") or not _REV.fullmatch(value):
        raise ToolError(f"{field}: '{value}' is not a revision or branch name git accepts here.")
    return value


class GitModule(Module):
    id = "git"
    description = "Git version control in the workspace: status, diff, log, show, add, commit, branches."
    config_schema = {
        "type": "object",
        "properties": {
            "workspace": {"type": "string"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "default": DEFAULT_TIMEOUT},
            "max_output": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_OUTPUT},
            "author_name": {"type": "string", "minLength": 1},
            "author_email": {"type": "string", "minLength": 1},
        },
        "additionalProperties": False,
    }

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return module_workspace(self)

    def _env(self) -> dict[str, str]:
        name = str(self.config.get("author_name") or "Digitorn Agent")
        email = str(self.config.get("author_email") or "agent@digitorn.local")
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),  # no ~/.gitconfig of the daemon's user
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "GIT_OPTIONAL_LOCKS": "0",
            "GIT_CEILING_DIRECTORIES": str(self.root.parent),
            "GIT_NO_REPLACE_OBJECTS": "1",
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
        }

    def _exec(self, cwd: Path, args: list[str], *, overrides: list[str] | None = None,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        base = ["git", "--no-pager"]
        for key, value in _SAFE_CONFIG:
            base += ["-c", f"{key}={value}"]
        base += overrides or []
        timeout = float(self.config.get("timeout") or DEFAULT_TIMEOUT)
        try:
            done = subprocess.run(
                base + args, cwd=cwd, env=self._env(), capture_output=True, text=True,
                errors="replace", timeout=timeout, stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise ToolError(f"git {args[0]}: did not finish within {timeout:g} s.")
        except FileNotFoundError:
            raise ToolError("git is not installed on the daemon's machine.")
        if check and done.returncode != 0:
            message = (done.stderr or done.stdout).strip()[-2000:]
            raise ToolError(f"git {args[0]} failed: {message}")
        return done

    def _repo(self, path: str) -> tuple[Path, list[str]]:
        """The repository's top folder (inside the workspace) and the -c overrides its config needs."""
        cwd = resolve_in(self.root, path)
        if not cwd.is_dir():
            raise ToolError(f"params.path: '{path}' is not a folder in the workspace.")
        probe = self._exec(cwd, ["rev-parse", "--show-toplevel", "--absolute-git-dir"], check=False)
        if probe.returncode != 0:
            raise ToolError(
                f"params.path: '{path}' is not inside a git repository of the workspace; "
                "use git.init to create one."
            )
        top, git_dir = (Path(os.path.realpath(p)) for p in probe.stdout.strip().splitlines()[:2])
        for where in (top, git_dir):
            if not where.is_relative_to(self.root):
                raise ToolError(f"params.path: the repository at '{path}' keeps its data outside the workspace.")
        # Driver commands have arbitrary driver names: read the repo's keys (reading runs nothing)
        # and blank each one that names a program.
        listed = self._exec(top, ["config", "--list", "--name-only", "--includes"], check=False)
        overrides: list[str] = []
        for key in sorted(set(listed.stdout.split())):
            if _DRIVER_KEYS.match(key):
                overrides += ["-c", f"{key}="]
                if key.lower().startswith("filter."):
                    overrides += ["-c", f"{key.rsplit('.', 1)[0]}.required=false"]
        return top, overrides

    def _git(self, path: str, args: list[str]) -> tuple[Path, str]:
        top, overrides = self._repo(path)
        out = self._exec(top, args, overrides=overrides).stdout
        return top, self._cap(out)

    def _cap(self, text: str) -> str:
        cap = int(self.config.get("max_output") or DEFAULT_MAX_OUTPUT)
        if len(text) > cap:
            return text[:cap] + f"\n…[truncated: {cap} of {len(text)} characters shown]"
        return text

    def _pathspecs(self, top: Path, paths: list[str] | None) -> list[str]:
        specs = []
        for item in paths or []:
            resolved = resolve_in(self.root, item, field="paths")
            if not resolved.is_relative_to(top):
                raise ToolError(f"params.paths: '{item}' is outside the repository at '{relative(self.root, top)}'.")
            specs.append(":(literal)" + (os.path.relpath(resolved, top) if resolved != top else "."))
        return specs

    # -- actions -----------------------------------------------------------------------------
    @action(
        description="Working tree status of a git repository: current branch, staged, changed and untracked paths.",
        parameters={"properties": {"path": {"type": "string", "default": "."}}},
        aliases=("git_status", "statut", "etat_depot"),
        tags=("git", "vcs", "version-control"),
    )
    def status(self, path: str = ".") -> dict[str, Any]:
        top, out = self._git(path, ["status", "--porcelain=v1", "--branch", "--untracked-files=all"])
        branch = ""
        staged, modified, untracked = [], [], []
        for line in out.splitlines():
            if line.startswith("## "):
                branch = line[3:]
                continue
            code, name = line[:2], line[3:]
            if code == "??":
                untracked.append(name)
                continue
            if code[0] not in (" ", "?"):
                staged.append({"path": name, "status": code[0]})
            if code[1] != " ":
                modified.append({"path": name, "status": code[1]})
        return {
            "repository": relative(self.root, top),
            "branch": branch,
            "staged": staged,
            "modified": modified,
            "untracked": untracked,
            "clean": not (staged or modified or untracked),
        }

    @action(
        description="Show changes as a unified diff: working tree vs index, or staged changes, or against a revision.",
        parameters={
            "properties": {
                "path": {"type": "string", "default": "."},
                "staged": {"type": "boolean", "default": False},
                "revision": {"type": "string", "description": "Compare against this commit/branch instead."},
                "paths": {"type": "array", "items": {"type": "string"}, "maxItems": 100},
            }
        },
        aliases=("git_diff", "changes", "patch", "difference", "differences", "comparer"),
        tags=("git", "vcs", "diff"),
    )
    def diff(self, path: str = ".", staged: bool = False, revision: str | None = None,
             paths: list[str] | None = None) -> dict[str, Any]:
        top, overrides = self._repo(path)
        args = ["diff", "--no-ext-diff", "--no-textconv", "--no-color"]
        if staged:
            args.append("--cached")
        if revision:
            args.append(_check_rev(revision, "params.revision"))
        args += ["--", *self._pathspecs(top, paths)]
        out = self._cap(self._exec(top, args, overrides=overrides).stdout)
        return {"repository": relative(self.root, top), "diff": out, "empty": not out.strip()}

    @action(
        description="List recent commits (hash, author, date, subject), optionally of one file or from a revision.",
        parameters={
            "properties": {
                "path": {"type": "string", "default": "."},
                "max_count": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20},
                "revision": {"type": "string"},
                "paths": {"type": "array", "items": {"type": "string"}, "maxItems": 100},
            }
        },
        aliases=("git_log", "history", "commits", "historique", "journal", "show_history", "afficher_historique",
                 "recent_commits"),
        tags=("git", "vcs", "history"),
    )
    def log(self, path: str = ".", max_count: int = 20, revision: str | None = None,
            paths: list[str] | None = None) -> dict[str, Any]:
        top, overrides = self._repo(path)
        head = self._exec(top, ["rev-parse", "--verify", "-q", "HEAD"], overrides=overrides, check=False)
        if head.returncode != 0 and not revision:
            return {"repository": relative(self.root, top), "commits": [], "count": 0}
        sep = "\x1f"
        args = ["log", f"--max-count={max_count}", "--no-show-signature", "--no-color",
                f"--format=%H{sep}%an{sep}%ae{sep}%aI{sep}%s"]
        if revision:
            args.append(_check_rev(revision, "params.revision"))
        args += ["--", *self._pathspecs(top, paths)]
        out = self._exec(top, args, overrides=overrides).stdout
        commits = []
        for line in out.splitlines():
            parts = line.split(sep)
            if len(parts) == 5:
                commits.append(dict(zip(("hash", "author", "email", "date", "subject"), parts, strict=True)))
        return {"repository": relative(self.root, top), "commits": commits, "count": len(commits)}

    @action(
        description="Details of one commit (author, message, patch), or a path as stored at a revision like HEAD:app.py.",
        parameters={
            "properties": {
                "path": {"type": "string", "default": "."},
                "revision": {"type": "string", "default": "HEAD"},
            }
        },
        aliases=("git_show", "commit_details", "afficher_commit"),
        tags=("git", "vcs", "history"),
    )
    def show(self, path: str = ".", revision: str = "HEAD") -> dict[str, Any]:
        rev = _check_rev(revision, "params.revision")
        top, out = self._git(path, ["show", "--no-ext-diff", "--no-textconv", "--no-color",
                                    "--no-show-signature", rev, "--"])
        return {"repository": relative(self.root, top), "revision": rev, "output": out}

    @action(
        description="Stage files for the next commit (git add); 'paths' default to everything.",
        parameters={
            "properties": {
                "path": {"type": "string", "default": "."},
                "paths": {"type": "array", "items": {"type": "string"}, "maxItems": 1000},
            }
        },
        risk_level="low",
        side_effects=("filesystem_write",),
        aliases=("git_add", "stage", "indexer", "ajouter"),
        tags=("git", "vcs", "stage"),
    )
    def add(self, path: str = ".", paths: list[str] | None = None) -> dict[str, Any]:
        top, overrides = self._repo(path)
        specs = self._pathspecs(top, paths) or [":(literal)."]
        self._exec(top, ["add", "--all", "--", *specs], overrides=overrides)
        return self.status(relative(self.root, top))

    @action(
        description="Record staged changes as a commit with a message (optionally staging all tracked changes first).",
        parameters={
            "properties": {
                "message": {"type": "string", "minLength": 1, "maxLength": 10_000},
                "path": {"type": "string", "default": "."},
                "all": {"type": "boolean", "default": False, "description": "Stage modified tracked files first."},
            },
            "required": ["message"],
        },
        risk_level="medium",
        side_effects=("filesystem_write",),
        aliases=("git_commit", "save", "snapshot", "valider", "enregistrer"),
        tags=("git", "vcs", "commit"),
    )
    def commit(self, message: str, path: str = ".", all: bool = False) -> dict[str, Any]:  # noqa: A002
        top, overrides = self._repo(path)
        args = ["commit", "--no-verify", "--no-gpg-sign", "-F", "-"]
        if all:
            args.insert(1, "--all")
        base = ["git", "--no-pager"] + [x for k, v in _SAFE_CONFIG for x in ("-c", f"{k}={v}")] + overrides
        timeout = float(self.config.get("timeout") or DEFAULT_TIMEOUT)
        try:
            done = subprocess.run(base + args, cwd=top, env=self._env(), input=message, capture_output=True,
                                  text=True, errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ToolError(f"git commit: did not finish within {timeout:g} s.")
        if done.returncode != 0:
            raise ToolError(f"git commit failed: {(done.stdout + done.stderr).strip()[-2000:]}")
        sha = self._exec(top, ["rev-parse", "HEAD"], overrides=overrides).stdout.strip()
        return {"repository": relative(self.root, top), "commit": sha, "summary": done.stdout.strip()[:2000]}

    @action(
        description="List branches, or create a new branch at HEAD (or at 'start_point') when 'name' is given.",
        parameters={
            "properties": {
                "path": {"type": "string", "default": "."},
                "name": {"type": "string"},
                "start_point": {"type": "string"},
            }
        },
        risk_level="low",
        side_effects=("filesystem_write",),
        aliases=("git_branch", "branches", "branche", "branches_list"),
        tags=("git", "vcs", "branch"),
    )
    def branch(self, path: str = ".", name: str | None = None, start_point: str | None = None) -> dict[str, Any]:
        top, overrides = self._repo(path)
        if name:
            if name.startswith("-") or not _BRANCH.fullmatch(name) or ".." in name:
                raise ToolError(f"params.name: '{name}' is not a valid branch name.")
            args = ["branch", "--", name]
            if start_point:
                args.append(_check_rev(start_point, "params.start_point"))
            self._exec(top, args, overrides=overrides)
        out = self._exec(top, ["branch", "--list", "--no-color", "--format=%(HEAD)%(refname:short)"],
                         overrides=overrides).stdout
        branches = [line[1:] for line in out.splitlines()]
        current = next((line[1:] for line in out.splitlines() if line.startswith("*")), None)
        return {"repository": relative(self.root, top), "branches": branches, "current": current}

    @action(
        description="Switch the working tree to a branch or commit (git checkout); refuses to drop local changes.",
        parameters={
            "properties": {
                "ref": {"type": "string", "minLength": 1},
                "path": {"type": "string", "default": "."},
                "create": {"type": "boolean", "default": False, "description": "Create the branch first."},
            },
            "required": ["ref"],
        },
        risk_level="medium",
        side_effects=("filesystem_write",),
        aliases=("git_checkout", "switch", "changer_branche", "basculer"),
        tags=("git", "vcs", "branch"),
    )
    def checkout(self, ref: str, path: str = ".", create: bool = False) -> dict[str, Any]:
        rev = _check_rev(ref, "params.ref")
        top, overrides = self._repo(path)
        args = ["checkout", "-b", rev] if create else ["checkout", rev, "--"]
        self._exec(top, args, overrides=overrides)
        return self.status(relative(self.root, top))

    @action(
        description="Create an empty git repository in a workspace folder (git init).",
        parameters={"properties": {"path": {"type": "string", "default": "."},
                                   "initial_branch": {"type": "string", "default": "main"}}},
        risk_level="low",
        side_effects=("filesystem_write",),
        aliases=("git_init", "create_repository", "initialiser", "nouveau_depot"),
        tags=("git", "vcs"),
    )
    def init(self, path: str = ".", initial_branch: str = "main") -> dict[str, Any]:
        target = resolve_in(self.root, path)
        if not _BRANCH.fullmatch(initial_branch) or initial_branch.startswith("-"):
            raise ToolError(f"params.initial_branch: '{initial_branch}' is not a valid branch name.")
        target.mkdir(parents=True, exist_ok=True)
        # No template: the default template dir of the machine may carry hooks.
        self._exec(target, ["init", f"--initial-branch={initial_branch}", "--template=", "."])
        return {"repository": relative(self.root, target), "branch": initial_branch}
