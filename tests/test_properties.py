"""Property tests of turning ``nix print-dev-env --json`` output into a kernel's environment.

The JSON comes from evaluating a user's Nix files, so any shape is possible: arbitrary names and
values (unicode, NUL, ``=``), arrays, associative arrays, functions, and wrong types anywhere.
Whatever it holds, ``exported_variables`` / ``kernel_environment`` / ``rc_script`` never crash,
never let a sandbox variable through, only produce what ``os.execve`` accepts, and the rc script
is valid bash.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixkernel import environment
from nixkernel.environment import SANDBOX_VARIABLES

# Names: mostly plausible shell names, plus sandbox names, plus anything at all.
names = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True),
    st.sampled_from(sorted(SANDBOX_VARIABLES | {"PATH", "XDG_DATA_DIRS", "shellHook", "BASH"})),
    st.text(max_size=12),
)
# Values: any unicode (NUL and '=' included), and the wrong JSON types.
scalars = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.sampled_from("=\0$`'\"\\\n ;(){}[]*"), max_size=10),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)
variable = st.one_of(
    st.fixed_dictionaries({"type": st.just("exported"), "value": scalars}),
    st.fixed_dictionaries({"type": st.just("var"), "value": scalars}),
    st.fixed_dictionaries({"type": st.just("array"), "value": st.lists(scalars, max_size=4)}),
    st.fixed_dictionaries(
        {
            "type": st.just("associative"),
            "value": st.dictionaries(st.text(max_size=6), scalars, max_size=4),
        }
    ),
    st.fixed_dictionaries({"type": json_values, "value": json_values}),
    json_values,
)
dev_envs = st.one_of(
    st.fixed_dictionaries(
        {
            "variables": st.dictionaries(names, variable, max_size=12),
            "bashFunctions": st.one_of(
                st.dictionaries(
                    names,
                    st.one_of(st.text(max_size=30), st.just("true\0"), json_values),
                    max_size=4,
                ),
                json_values,
            ),
        }
    ),
    st.fixed_dictionaries({"variables": json_values}),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
)
server_envs = st.dictionaries(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
    st.text(alphabet=st.characters(blacklist_characters="\0"), max_size=20),
    max_size=6,
)

BASH = shutil.which("bash") or "/bin/bash"

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_execve_safe(env: dict) -> None:
    """What os.execve accepts: str names without '=' or NUL, str values without NUL."""
    for name, value in env.items():
        assert isinstance(name, str) and name and "=" not in name and "\0" not in name, name
        assert isinstance(value, str) and "\0" not in value, (name, value)


@SETTINGS
@given(dev_envs)
def test_exported_variables_never_crash_nor_leak_sandbox_values(dev_env: dict) -> None:
    variables = environment.exported_variables(dev_env)
    assert not set(variables) & SANDBOX_VARIABLES
    assert_execve_safe(variables)
    # Only variables the document exported with a string value are kept.
    for name, value in variables.items():
        assert dev_env["variables"][name] == {**dev_env["variables"][name], "value": value}
        assert dev_env["variables"][name]["type"] == "exported"


@SETTINGS
@given(dev_envs, server_envs, st.one_of(st.none(), st.just("/p/.venv")))
def test_kernel_environment_is_always_executable(dev_env: dict, server: dict, venv) -> None:
    shell_vars = environment.exported_variables(dev_env)
    env = environment.kernel_environment(shell_vars, server, venv)
    assert_execve_safe(env)
    # Sandbox variables come only from the server (e.g. the user's real HOME), never the shell.
    for name in SANDBOX_VARIABLES & set(env):
        assert env[name] == server[name]
    for name in environment.SERVER_ONLY_VARIABLES:
        if name != "VIRTUAL_ENV" or not venv:
            assert name not in env or name in shell_vars


@SETTINGS
@given(dev_envs)
def test_rc_script_never_crashes_nor_assigns_sandbox_variables(dev_env: dict) -> None:
    rc = environment.rc_script(dev_env)
    assert "\0" not in rc
    assert rc.rstrip().endswith('exec "$@"')
    for line in rc.splitlines():
        for name in SANDBOX_VARIABLES:
            assert not line.startswith((f"{name}=", f"declare -a {name}=", f"declare -A {name}="))


def _valid_body(text: str) -> str:
    """A function body as Nix prints it (``declare -f``): valid bash, whatever ``text`` holds."""
    return "echo " + shlex.quote(text)


# Documents whose functions are valid bash, as Nix's are: the rc script around them must be too.
dev_envs_with_valid_functions = st.fixed_dictionaries(
    {
        "variables": st.dictionaries(names, variable, max_size=12),
        "bashFunctions": st.dictionaries(
            st.from_regex(r"[A-Za-z_][A-Za-z0-9_:.-]{0,8}", fullmatch=True),
            st.text(max_size=20).map(_valid_body),
            max_size=3,
        ),
    }
)


@settings(max_examples=6, deadline=None)
@given(dev_envs_with_valid_functions)
def test_rc_script_is_valid_bash(dev_env: dict) -> None:
    """A handful of generated rc scripts parse with ``bash -n`` (kept few: one process each)."""
    rc = environment.rc_script(dev_env)
    result = subprocess.run([BASH, "-n", "-c", rc], capture_output=True, text=True)
    assert result.returncode == 0, (rc, result.stderr)


def test_hostile_rc_script_is_valid_bash() -> None:
    """Quotes, command substitutions, newlines, NUL and odd keys are quoted, not executed."""
    hostile = {
        "variables": {
            "x": {"type": "var", "value": "'; rm -rf / #$(boom)`x`\n\\"},
            "arr": {"type": "array", "value": ["a b", "$(x)", "\0nul", "é", 3, None]},
            "assoc": {"type": "associative", "value": {"k ey": "v'al", "]": "["}},
            "shellHook": {"type": "var", "value": "echo hi"},
        },
        "bashFunctions": {"f": 'echo "$1"', "bad name;": "x", "g": "true", "nul": "a\0b"},
    }
    rc = environment.rc_script(hostile)
    assert "\0" not in rc and "bad name;" not in rc
    result = subprocess.run([BASH, "-n", "-c", rc], capture_output=True, text=True)
    assert result.returncode == 0, (rc, result.stderr)


@SETTINGS
@given(dev_envs, st.sampled_from(["nix develop", "nix-shell"]), server_envs)
def test_prepared_model_never_crashes_nor_leaks_sandbox_values(
    dev_env: dict, semantics: str, server: dict
) -> None:
    """nixkernel.devshell.prepare on any document: its variables are execve-safe and hold no
    sandbox value, and the environment built from the model is too."""
    from nixkernel import devshell

    result = devshell.prepare(
        dev_env, semantics=semantics, version="2.26.3", project="/p", slot="/slot"
    )
    assert_execve_safe(result.variables)
    assert not set(result.variables) & (SANDBOX_VARIABLES - {"SSL_CERT_FILE"})
    assert "\0" not in result.hook
    env = environment.kernel_environment(result.variables, server, None, result.model, "/p")
    assert_execve_safe(env)
    json.dumps(result.model)  # it is stored in the cache entry


@settings(max_examples=6, deadline=None)
@given(dev_envs_with_valid_functions, st.sampled_from(["nix develop", "nix-shell"]))
def test_prepared_hook_is_valid_bash(dev_env: dict, semantics: str) -> None:
    from nixkernel import devshell

    dev_env["variables"]["shellHook"] = {"type": "exported", "value": "true"}
    dev_env["bashFunctions"]["runHook"] = "true"
    hook = devshell.prepare(
        dev_env, semantics=semantics, version="2.34.8", project="/p", slot="/slot"
    ).hook
    result = subprocess.run([BASH, "-n", "-c", hook], capture_output=True, text=True)
    assert result.returncode == 0, (hook, result.stderr)
