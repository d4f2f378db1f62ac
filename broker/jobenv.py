"""What a job's `env` may reach: the job, never a host process that starts it.

A job's env is tenant input. Two runtimes, two rules:

- ``container``: the env goes into the container only. The runner hands it to podman as an
  env file read from a pipe (``--env-file /dev/fd/N``), so values touch no disk, show in no
  process list and never enter the environment of the host-side ``podman`` process (which
  starts from the node's own environment). Any name is fine inside the container (``PATH`` and
  ``LD_LIBRARY_PATH`` are ordinary there); values may not hold line breaks, because the env file
  is one ``NAME=value`` per line and a break would smuggle in a second variable.
- ``process``: the command runs on the host as the broker's user. That is host code execution
  by design (only projects a platform-admin enables may use it), and the environment must not
  make it more: the process starts from a fixed minimal base (a fixed ``PATH``, the node's
  locale and home) and names that steer the dynamic loader, shells or interpreters
  (``LD_PRELOAD``, ``GCONV_PATH``, ``BASH_ENV``, ``PYTHONPATH``...) are refused at submit and
  dropped again here, whoever calls.

Standard library only: the Ray runner ships this module's functions to the nodes by value.
"""

from __future__ import annotations

from typing import Mapping

# The PATH every `runtime: process` job gets (a user's PATH could point a bare command name at
# a program of their choosing in a writable directory).
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What a process job keeps of the node's environment: locale, time zone and who it runs as.
HOST_INHERITED = ("HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ")

# Names that load code or change how programs resolve it, on the host. Compared upper-cased.
HOST_UNSAFE_NAMES = frozenset({
    # search paths and home (where shells and interpreters read start-up files)
    "PATH", "HOME", "CDPATH", "TMPDIR",
    # glibc: loader, iconv modules, locales, tunables, resolver
    "GCONV_PATH", "GLIBC_TUNABLES", "LOCPATH", "NLSPATH", "HOSTALIASES", "RES_OPTIONS",
    "RESOLV_HOST_CONF", "MALLOC_CHECK_", "MALLOC_TRACE",
    # shells
    "BASH_ENV", "ENV", "IFS", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "GLOBIGNORE",
    # interpreters and runtimes that load code named by a variable
    "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONBREAKPOINT",
    "PYTHONINSPECT", "PYTHONWARNINGS", "PERL5LIB", "PERLLIB", "PERL5OPT", "PERL5DB", "RUBYLIB",
    "RUBYOPT", "NODE_OPTIONS", "NODE_PATH", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS", "CLASSPATH", "LUA_PATH", "LUA_CPATH", "LUA_INIT", "OPENSSL_CONF",
    "OPENSSL_ENGINES", "SSLKEYLOGFILE",
})
HOST_UNSAFE_PREFIXES = ("LD_", "DYLD_", "GIT_", "BASH_FUNC_")


def host_unsafe(name: str) -> bool:
    """True for a name that must not reach a host process's environment."""
    upper = name.upper()
    return upper in HOST_UNSAFE_NAMES or upper.startswith(HOST_UNSAFE_PREFIXES)


def has_line_break(value: str) -> bool:
    return "\n" in value or "\r" in value


def process_env(node_env: Mapping[str, str], job_env: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of a `runtime: process` job: the fixed base plus the job's
    variables without the host-unsafe names (dropped even if a submit check was bypassed)."""
    env = {k: node_env[k] for k in HOST_INHERITED if k in node_env}
    env["PATH"] = SAFE_PATH
    env.update((k, v) for k, v in job_env.items() if not host_unsafe(k))
    return env


def env_file(job_env: Mapping[str, str]) -> bytes:
    """The job's variables as a podman env file (``NAME=value`` per line).

    Raises ValueError for a value with a line break (it would add a variable of the user's
    choosing) or a name podman would read as something else (``*`` globs the host's env)."""
    lines = []
    for name, value in job_env.items():
        if not name or "=" in name or "*" in name or has_line_break(name) or "\x00" in name:
            raise ValueError(f"env name {name[:64]!r} cannot be passed to a container")
        if has_line_break(value) or "\x00" in value:
            raise ValueError(f"env {name} value contains a line break or NUL byte")
        lines.append(f"{name}={value}\n")
    return "".join(lines).encode()
