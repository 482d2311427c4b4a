"""Process isolation for ``shell``: bubblewrap, resource limits, and a sh-aware command checker.

Why bubblewrap: the daemon's data dir (keys, database), its environment (the admin key) and its
process tree must be out of a command's reach, which string checks cannot promise. ``bwrap``
(Debian package ``bubblewrap``, installed by ``scripts/system_deps.sh``) builds a fresh mount,
PID, IPC, UTS, network and user namespace per command:

- visible: ``/usr`` and the merged-/usr links, a short list of harmless ``/etc`` files, all
  read-only; fresh ``/proc``, ``/dev`` and ``/tmp``; the workspace, read-write, at its real path;
- never visible: the data dir (hidden with an empty tmpfs when the workspace contains it), home
  folders, ``/etc/shadow`` and keys, the daemon's processes (new PID namespace, so
  ``/proc/$PPID/environ`` is the sandbox's own init with the clean environment);
- no network unless the app's ``shell.network`` is true (a new, empty network namespace);
- every process dies with the sandbox: killing bwrap kills its PID-1, and the kernel kills a PID
  namespace's every process when its init dies (``setsid``/double forks do not escape); bwrap
  runs with ``PR_SET_PDEATHSIG`` so a killed daemon or Celery worker takes it down too;
- rlimits: CPU seconds, address space, file size, open files, and process count (set inside the
  sandbox with ``prlimit``, where the count starts from zero in the new user namespace). The
  kernel does not apply RLIMIT_NPROC to root and RLIMIT_AS bounds each process, so when ``pids`` /
  ``memory`` cgroups (v1, or v2 with the controllers delegated) are writable each command also
  gets cgroups of its own with the process count and total memory: a fork bomb or a swarm of
  processes stops there whoever the daemon runs as.

``DIGITORN_SHELL_SANDBOX``: unset/``bwrap`` (default) requires bubblewrap and refuses to run
commands when it cannot isolate; ``off`` is the operator's explicit opt-out (commands run as the
daemon's user in a new session with the same rlimits, without the namespaces).
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_PR_SET_PDEATHSIG = 1
ENV_SETTING = "DIGITORN_SHELL_SANDBOX"
# /etc entries a command may need (name resolution, TLS roots, dynamic linker, locale, users);
# the rest of /etc (shadow, ssh host keys, the daemon's own config) stays invisible.
_ETC_ENTRIES = (
    "passwd", "group", "hosts", "resolv.conf", "nsswitch.conf", "host.conf", "gai.conf",
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "alternatives", "ssl",
    "ca-certificates", "ca-certificates.conf", "mime.types", "protocols", "services",
    "os-release", "debian_version", "issue", "inputrc", "magic", "papersize",
)
_MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


class SandboxUnavailable(RuntimeError):
    """Bubblewrap cannot isolate commands here; the message says why and how to fix or opt out."""


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int
    memory_bytes: int
    max_processes: int
    max_file_bytes: int
    max_open_files: int = 1024


def mode() -> str:
    """``bwrap`` (isolation required) or ``off`` (operator opt-out)."""
    raw = os.environ.get(ENV_SETTING, "").strip().lower()
    if raw in ("off", "none", "0", "false", "no", "disabled"):
        return "off"
    return "bwrap"


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in _MERGED_USR:
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            args += ["--ro-bind", str(host), f"/{name}"]
    args += ["--dir", "/etc"]
    for name in _ETC_ENTRIES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return args


def bwrap_argv(
    *,
    workspace: Path,
    workdir: Path,
    env: dict[str, str],
    hidden: tuple[Path, ...] = (),
    network: bool = False,
    max_processes: int | None = None,
) -> list[str]:
    """The bwrap prefix that runs a program isolated, with ``workspace`` writable at its real path.

    ``hidden`` folders (the data dir) are covered by an empty tmpfs when they fall inside something
    bound (the workspace); a workspace inside a hidden folder is bound on its own, so only it shows.
    """
    exe = shutil.which("bwrap") or "bwrap"
    args = [
        exe, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--hostname", "digitorn-sandbox", "--clearenv",
    ]
    if network:
        args.append("--share-net")
    args += _system_binds()
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run", "--tmpfs", "/var"]
    args += ["--bind", str(workspace), str(workspace)]
    for folder in hidden:
        if folder.is_relative_to(workspace) and folder != workspace:
            args += ["--tmpfs", str(folder)]
    for key, value in env.items():
        args += ["--setenv", key, value]
    args += ["--chdir", str(workdir), "--"]
    if max_processes:
        # Set inside the sandbox: RLIMIT_NPROC counts per user namespace there, so the limit bounds
        # this command's processes instead of everything the daemon's user already runs.
        prlimit = shutil.which("prlimit", path="/usr/bin:/bin")
        if prlimit:
            args += [prlimit, f"--nproc={max_processes}", "--"]
    return args


@cache
def _probe() -> str | None:
    """None when bwrap can build a sandbox here; otherwise why not (checked once per process)."""
    if not shutil.which("bwrap"):
        return (
            "bubblewrap (bwrap) is not installed; install the Debian package 'bubblewrap' "
            "(scripts/system_deps.sh does)"
        )
    with tempfile.TemporaryDirectory(prefix="digitorn-bwrap-probe-") as tmp:
        ws = Path(os.path.realpath(tmp))
        argv = bwrap_argv(workspace=ws, workdir=ws, env={"PATH": "/usr/bin:/bin"}, max_processes=64)
        try:
            proc = subprocess.run(
                [*argv, "/bin/sh", "-c", "echo ok > probe && cat probe"],
                capture_output=True, timeout=20, env={"PATH": "/usr/bin:/bin"},
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap could not start a sandbox ({exc})"
        if proc.returncode != 0 or proc.stdout.strip() != b"ok":
            detail = proc.stderr.decode("utf-8", "replace").strip()[:300]
            return (
                f"bubblewrap could not build a sandbox here ({detail or f'exit code {proc.returncode}'}); "
                "it needs user namespaces (kernel.unprivileged_userns_clone=1) or root"
            )
    return None


def require() -> None:
    """Raise :class:`SandboxUnavailable` when commands must be isolated and cannot be."""
    if mode() == "off":
        return
    reason = _probe()
    if reason:
        raise SandboxUnavailable(
            f"{reason}. The shell module refuses to run commands without isolation; the operator "
            f"can opt out with {ENV_SETTING}=off."
        )


# -- pids cgroup ---------------------------------------------------------------------------------


_CGROUP_FILES = {  # controller → (v1 limit file, v2 limit file)
    "pids": ("pids.max", "pids.max"),
    "memory": ("memory.limit_in_bytes", "memory.max"),
}


@cache
def _cgroup_parent(controller: str) -> Path | None:
    """A cgroup folder of this process under which per-command cgroups with ``controller``'s limit
    file can be made, or None (not mounted, not delegated, not writable)."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates: list[tuple[Path, str]] = []
    for line in mountinfo:
        fields = line.split()
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        mount_root, mount_point, fstype, options = fields[3], fields[4], fields[sep + 1], fields[sep + 3]
        for entry in own:
            hierarchy, _, rest = entry.partition(":")
            controllers, _, path = rest.partition(":")
            v1 = fstype == "cgroup" and controller in options.split(",") and controller in controllers.split(",")
            v2 = fstype == "cgroup2" and hierarchy == "0" and controllers == ""
            if (v1 or v2) and Path(path).is_relative_to(mount_root):
                limit_file = _CGROUP_FILES[controller][0 if v1 else 1]
                candidates.append((Path(mount_point) / Path(path).relative_to(mount_root), limit_file))
    for parent, limit_file in candidates:
        probe = parent / f"digitorn-probe-{os.getpid()}"
        try:
            probe.mkdir()
        except OSError:
            continue
        try:
            if (probe / limit_file).exists():
                return parent
        finally:
            try:
                probe.rmdir()
            except OSError:
                pass
    return None


def _sweep(parent: Path) -> None:
    """Remove the empty cgroups of commands whose daemon process died before it could (SIGKILL)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith("digitorn-shell-"):
            continue
        pid = name.split("-")[2]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                (parent / name).rmdir()  # refused while processes remain in it
            except OSError:
                pass


class CommandCgroup:
    """Cgroups of its own for one command: ``pids`` (process count) and ``memory`` (total memory).

    Best effort: a controller whose hierarchy is missing or read-only is skipped (the rlimits
    still apply). Needed because the kernel exempts root from RLIMIT_NPROC, and RLIMIT_AS bounds
    each process, not the command.
    """

    def __init__(self, limits: Limits | None):
        self.paths: list[Path] = []
        if limits is None:
            return
        wanted = {"pids": limits.max_processes, "memory": limits.memory_bytes}
        tag = f"digitorn-shell-{os.getpid()}-{id(self):x}-{time.monotonic_ns()}"
        for controller, value in wanted.items():
            parent = _cgroup_parent(controller) if value else None
            if parent is None:
                continue
            _sweep(parent)
            path = parent / tag
            v1_file, v2_file = _CGROUP_FILES[controller]
            try:
                path.mkdir(exist_ok=True)  # v2: one folder serves both controllers
                limit_file = path / (v1_file if (path / v1_file).exists() else v2_file)
                limit_file.write_text(str(value))
            except OSError:
                self._remove(path)
                continue
            if path not in self.paths:
                self.paths.append(path)

    def join_fds(self) -> list[int]:
        """Fds of each ``cgroup.procs`` the child writes itself into (opened here, before the fork)."""
        fds = []
        for path in self.paths:
            try:
                fds.append(os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
            except OSError:
                pass
        return fds

    @staticmethod
    def _remove(path: Path) -> bool:
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            return False

    def close(self) -> None:
        # Killed processes leave the cgroup as the kernel reaps them; give it a moment.
        for path in self.paths:
            for _ in range(50):
                if self._remove(path):
                    break
                time.sleep(0.02)
        self.paths = []


def preexec(limits: Limits | None, cgroup_fds: tuple[int, ...] = ()) -> Callable[[], None]:
    """Runs in the child before exec: die with the parent, then apply the rlimits.

    PR_SET_PDEATHSIG ties the child to the thread that started it, which waits for it, so a
    killed daemon or Celery worker (SIGKILL included) takes its commands down with it.
    """
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent already died between fork and prctl
            os._exit(1)
        for fd in cgroup_fds:
            os.write(fd, b"0")  # "0" is the writing process itself
        if limits is None:
            return
        for which, value in (
            (resource.RLIMIT_CPU, limits.cpu_seconds),
            (resource.RLIMIT_AS, limits.memory_bytes),
            (resource.RLIMIT_FSIZE, limits.max_file_bytes),
            (resource.RLIMIT_NOFILE, limits.max_open_files),
        ):
            if value:
                soft, hard = resource.getrlimit(which)
                cap = value if hard == resource.RLIM_INFINITY else min(value, hard)
                resource.setrlimit(which, (cap, cap))

    return setup


# -- command checking ---------------------------------------------------------------------------
#
# allowed/blocked command lists are checked on the command line as /bin/sh reads it: every simple
# command across ; & && || | newlines, ( ) subshells, { } groups, if/while/until bodies, $( ) and
# backticks (also inside double quotes and ${...}), eval and sh -c strings, and the programs that
# wrappers (env, xargs, timeout, nice, find -exec, ...) start. What cannot be checked is refused:
# a program name built from expansions, here-documents, case, unbalanced quotes.


class ShParseError(ValueError):
    pass


@dataclass
class _Word:
    raw: str
    literal: str  # after quote removal; meaningful only when not dynamic
    dynamic: bool = False  # contains $expansion or command substitution
    glob: bool = False  # unquoted * ? [


_OPS = ("&&", "||", ";;", ">>", "<<-", "<<", "<&", ">&", "<>", ">|", ";", "&", "|", "(", ")", "<", ">", "\n")
_REDIRECTS = {">>", "<&", ">&", "<>", ">|", "<", ">"}
_SEPARATORS = {"&&", "||", ";", "&", "|", "(", ")", "\n", ";;"}
_PREFIX_WORDS = {"if", "then", "else", "elif", "do", "while", "until", "!", "{", "}", "fi", "done"}
_REFUSED_WORDS = {"case", "esac", "select", "function", "coproc"}
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\+?=")
_DANGEROUS_ASSIGNMENT = re.compile(r"(PATH|ENV|BASH_ENV|IFS|CDPATH|LD_[A-Z_]*|PYTHON\w*|PERL5?\w*|NODE_\w*)\+?=")
WRAPPERS = {
    "env", "exec", "command", "builtin", "nice", "nohup", "time", "timeout", "stdbuf", "setsid",
    "xargs", "sudo", "doas", "chrt", "ionice", "taskset", "flock", "unbuffer", "strace", "ltrace",
    "watch", "chroot", "unshare", "nsenter", "setpriv", "runuser", "su", "prlimit", "busybox",
    "parallel", "caffeinate", "firejail", "fakeroot", "catchsegv", "systemd-run", "script",
}
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "csh", "tcsh", "rbash", "posh"}
_UNCHECKABLE = {"alias", ".", "source", "trap", "fc", "hash", "enable"}
_NUMERIC = re.compile(r"[0-9]+(\.[0-9]+)?[smhd]?")


class _Lexer:
    def __init__(self, text: str):
        self.text, self.pos = text, 0
        self.nested: list[str] = []  # bodies of $( ) and backticks found in words

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def tokens(self, *, until_paren: bool = False) -> list[_Word | str]:
        out: list[_Word | str] = []
        depth = 0
        while True:
            self._skip_blanks()
            if self.pos >= len(self.text):
                if until_paren:
                    raise ShParseError("unterminated $( ... )")
                return out
            ch = self.text[self.pos]
            if ch == "#":
                while self.pos < len(self.text) and self.text[self.pos] != "\n":
                    self.pos += 1
                continue
            op = next((o for o in _OPS if self.text.startswith(o, self.pos)), None)
            if op is not None:
                if op in ("<<", "<<-"):
                    raise ShParseError("here-documents (<<) cannot be checked")
                self.pos += len(op)
                if op == "(":
                    depth += 1
                elif op == ")":
                    if until_paren and depth == 0:
                        return out
                    depth -= 1
                    if depth < 0:
                        raise ShParseError("unbalanced ')'")
                out.append(op)
                continue
            # An fd number right before a redirection (2>, 1>&2) belongs to it.
            m = re.compile(r"[0-9]+(?=[<>])").match(self.text, self.pos)
            if m:
                self.pos = m.end()
                continue
            out.append(self._word())

    def _skip_blanks(self) -> None:
        while self.pos < len(self.text):
            if self.text[self.pos] in " \t":
                self.pos += 1
            elif self.text.startswith("\\\n", self.pos):
                self.pos += 2
            else:
                break

    def _word(self) -> _Word:
        start = self.pos
        literal: list[str] = []
        word = _Word(raw="", literal="")
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch in " \t\n;&|()<>":
                break
            if ch == "\\":
                if self.pos + 1 >= len(text):
                    raise ShParseError("trailing backslash")
                if text[self.pos + 1] != "\n":
                    literal.append(text[self.pos + 1])
                self.pos += 2
            elif ch == "'":
                end = text.find("'", self.pos + 1)
                if end == -1:
                    raise ShParseError("unbalanced single quote")
                literal.append(text[self.pos + 1 : end])
                self.pos = end + 1
            elif ch == '"':
                self.pos += 1
                literal.append(self._double_quoted(word))
            elif ch == "`":
                self._backticks()
                word.dynamic = True
            elif ch == "$":
                self._dollar(word)
            else:
                if ch in "*?[":
                    word.glob = True
                literal.append(ch)
                self.pos += 1
        word.raw = text[start : self.pos]
        word.literal = "".join(literal)
        return word

    def _double_quoted(self, word: _Word) -> str:
        text, out = self.text, []
        while True:
            if self.pos >= len(text):
                raise ShParseError("unbalanced double quote")
            ch = text[self.pos]
            if ch == '"':
                self.pos += 1
                return "".join(out)
            if ch == "\\" and self.pos + 1 < len(text) and text[self.pos + 1] in '$`"\\\n':
                out.append(text[self.pos + 1])
                self.pos += 2
            elif ch == "`":
                self._backticks()
                word.dynamic = True
            elif ch == "$":
                self._dollar(word)
            else:
                out.append(ch)
                self.pos += 1

    def _backticks(self) -> None:
        text = self.text
        self.pos += 1
        body = []
        while True:
            if self.pos >= len(text):
                raise ShParseError("unbalanced backtick")
            ch = text[self.pos]
            if ch == "`":
                self.pos += 1
                break
            if ch == "\\" and self.pos + 1 < len(text) and text[self.pos + 1] in "$`\\":
                body.append(text[self.pos + 1])
                self.pos += 2
                continue
            body.append(ch)
            self.pos += 1
        self.nested.append("".join(body))

    def _dollar(self, word: _Word) -> None:
        text = self.text
        word.dynamic = True
        if text.startswith("$((", self.pos):
            # Arithmetic: its text may hold $( ) or backticks of its own, read with double-quote rules.
            self.pos += 3
            depth = 2
            start = self.pos
            while depth:
                if self.pos >= len(text):
                    raise ShParseError("unterminated $(( ))")
                ch = text[self.pos]
                if ch == "`":
                    self._backticks()
                    continue
                if ch == "$":
                    self._dollar(_Word(raw="", literal=""))
                    continue
                depth += {"(": 1, ")": -1}.get(ch, 0)
                self.pos += 1
            if text[start : self.pos].count(")") < 2:
                raise ShParseError("unterminated $(( ))")
        elif text.startswith("$(", self.pos):
            self.pos += 2
            inner = _Lexer(text)
            inner.pos = self.pos
            start = self.pos
            inner.tokens(until_paren=True)
            self.nested.append(text[start : inner.pos - 1])
            self.pos = inner.pos
        elif text.startswith("${", self.pos):
            self.pos += 2
            while True:
                if self.pos >= len(text):
                    raise ShParseError("unterminated ${ }")
                ch = text[self.pos]
                if ch == "}":
                    self.pos += 1
                    return
                if ch == "`":
                    self._backticks()
                elif ch == "$":
                    self._dollar(word)
                elif ch == "'":
                    end = text.find("'", self.pos + 1)
                    if end == -1:
                        raise ShParseError("unbalanced single quote")
                    self.pos = end + 1
                elif ch == '"':
                    self.pos += 1
                    self._double_quoted(word)
                elif ch == "\\":
                    self.pos += 2
                else:
                    self.pos += 1
        else:
            self.pos += 1
            m = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9@*#?$!-]").match(text, self.pos)
            if m:
                self.pos = m.end()


def command_programs(command: str, *, _depth: int = 0) -> list[str]:
    """Every program a /bin/sh command line would start, as written (``/bin/cat`` stays a path).

    Raises :class:`ShParseError` for what cannot be checked safely.
    """
    if _depth > 8:
        raise ShParseError("nested too deeply")
    if "\x00" in command:
        raise ShParseError("NUL byte")
    lexer = _Lexer(command)
    tokens = lexer.tokens()
    programs: list[str] = []
    for body in lexer.nested:
        programs += command_programs(body, _depth=_depth + 1)
    expect_cmd, skip_rest, after_redirect = True, False, False
    current: list[_Word] = []

    def finish() -> None:
        if current:
            programs.extend(_wrapped_programs(current, _depth))
        current.clear()

    for token in tokens:
        if isinstance(token, str):
            if token in _REDIRECTS:
                after_redirect = True
                continue
            if after_redirect:
                raise ShParseError(f"redirection without a target before '{token.strip() or 'newline'}'")
            if token in _SEPARATORS:
                finish()
                expect_cmd, skip_rest = True, False
            continue
        if after_redirect:
            after_redirect = False
            if token.dynamic and _depth == 0:
                pass  # a redirection target may be dynamic; its substitutions were checked above
            continue
        if skip_rest:
            continue
        if expect_cmd:
            plain = not token.dynamic and not token.glob and token.raw == token.literal
            if plain and token.literal in _REFUSED_WORDS:
                raise ShParseError(f"'{token.literal}' cannot be checked")
            if plain and token.literal in _PREFIX_WORDS:
                continue
            if plain and token.literal == "for":
                skip_rest = True  # for NAME in WORDS; the body comes after 'do'
                continue
            if _ASSIGNMENT.match(token.raw):
                if _DANGEROUS_ASSIGNMENT.match(token.raw):
                    raise ShParseError(f"setting {token.raw.split('=', 1)[0]} cannot be checked")
                continue
            expect_cmd = False
        current.append(token)
    if after_redirect:
        raise ShParseError("redirection without a target")
    finish()
    return programs


def _program_name(word: _Word) -> str:
    if word.dynamic or word.glob:
        raise ShParseError(f"the program name '{word.raw}' is built from expansions or patterns")
    if not word.literal:
        raise ShParseError("empty program name")
    return word.literal


def _wrapped_programs(words: list[_Word], depth: int) -> list[str]:
    """The simple command's program, plus what it runs when it is a wrapper, a shell -c or eval."""
    name = _program_name(words[0])
    base = os.path.basename(name)
    found = [name]
    args = words[1:]
    for word in args:
        if _DANGEROUS_ASSIGNMENT.match(word.raw) and base in ("export", "readonly", "local", "declare",
                                                               "typeset", "env"):
            raise ShParseError(f"setting {word.raw.split('=', 1)[0]} cannot be checked")
    if base in _UNCHECKABLE:
        raise ShParseError(f"'{base}' runs code that cannot be checked")
    if base == "eval":
        if any(w.dynamic for w in args):
            raise ShParseError("eval of expansions cannot be checked")
        return found + command_programs(" ".join(w.literal for w in args), _depth=depth + 1)
    if base in SHELLS:
        for i, word in enumerate(args):
            if word.literal == "-c" or (word.literal.startswith("-") and "c" in word.literal[1:]
                                        and not word.literal.startswith("--")):
                if i + 1 >= len(args) or args[i + 1].dynamic:
                    raise ShParseError(f"the string given to {base} -c cannot be checked")
                return found + command_programs(args[i + 1].literal, _depth=depth + 1)
        raise ShParseError(f"'{base}' without -c runs a script that cannot be checked")
    if base == "find":
        for i, word in enumerate(args):
            if word.literal in ("-exec", "-execdir", "-ok", "-okdir") and i + 1 < len(args):
                found += _wrapped_programs(args[i + 1 :], depth)
        return found
    if base in WRAPPERS:
        rest = args
        while rest:
            word = rest[0]
            text = word.literal
            if word.dynamic and not _ASSIGNMENT.match(word.raw):
                raise ShParseError(f"what '{base}' runs is built from expansions")
            if text.startswith("-") or _ASSIGNMENT.match(word.raw) or _NUMERIC.fullmatch(text):
                rest = rest[1:]
                continue
            return found + _wrapped_programs(rest, depth)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (bwrap: its PID namespace dies with it)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
