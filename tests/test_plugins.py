"""The plugin manager (llama2rlhf.plugins): built-ins, entry points, errors that name plugins.

The ``llama2rlhf plugins`` tests run the installed console script (or ``python -m
llama2rlhf.__main__``) in a subprocess so they see the real entry points, as a user would; the
error cases build a fresh manager in-process with ``plugins.reset()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llama2rlhf import plugins
from llama2rlhf.plugins import PluginError

BUILTIN_LOSSES = {"bradley_terry", "margin_small", "margin_large"}


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("llama2rlhf")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "llama2rlhf"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA2RLHF_", "HYDRA_"))}
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*cli_command(), *args], cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=60
    )


def list_plugins(tmp_path: Path, **env: str) -> dict[str, dict]:
    proc = run_cli("plugins", cwd=tmp_path, **env)
    assert proc.returncode == 0, proc.stderr
    return {p["name"]: p for p in json.loads(proc.stdout)}


# --- the `plugins` command -------------------------------------------------------------


def test_plugins_command_lists_builtins_and_the_example_plugin(tmp_path):
    listed = list_plugins(tmp_path)
    losses = listed["reward_losses"]
    assert losses["distribution"] == "llama2rlhf"
    assert losses["module"] == "llama2rlhf.reward.losses"
    assert set(losses["registers"]["reward_losses"]) == BUILTIN_LOSSES
    assert losses["hooks"] == ["register_reward_losses"]
    for builtin in plugins.BUILTIN_PLUGINS:
        assert listed[builtin]["distribution"] == "llama2rlhf"
    example = listed["example"]
    assert example["distribution"] == "llama2rlhf-example"
    assert example["module"] == "llama2rlhf_example.plugin"
    assert example["registers"] == {
        "annotators": ["example_shorter"], "augmenters": ["example_system_prompt"], "checkers": ["example_mentions"],
        "reward_combiners": ["example_cautious"], "reward_losses": ["example_hinge"],
        "samplers": ["example_distinct"], "selectors": ["example_threshold"], "stages": ["example_length_report"]}
    assert set(listed["reward_combiners"]["registers"]["reward_combiners"]) == {"llama2", "single"}
    # each name is listed once, by the plugin that registered it
    all_losses = [n for p in listed.values() for n in p["registers"].get("reward_losses", [])]
    assert sorted(all_losses) == sorted(BUILTIN_LOSSES | {"example_hinge"})


def test_disable_autoload_hides_third_party_plugins(tmp_path):
    listed = list_plugins(tmp_path, LLAMA2RLHF_DISABLE_AUTOLOAD="1")
    assert "example" not in listed
    assert set(listed) == set(plugins.BUILTIN_PLUGINS)
    assert set(listed["reward_losses"]["registers"]["reward_losses"]) == BUILTIN_LOSSES

    proc = run_cli("reward_loss=example_hinge", "--cfg", "job", cwd=tmp_path, LLAMA2RLHF_DISABLE_AUTOLOAD="1")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Could not find 'reward_loss/example_hinge'" in out
    options = out.split("Available options in 'reward_loss':", 1)[1].split("Config search path", 1)[0]
    assert set(options.split()) == BUILTIN_LOSSES


def test_trace_hooks_prints_hook_calls_to_stderr(tmp_path):
    proc = run_cli("plugins", cwd=tmp_path, LLAMA2RLHF_TRACE_HOOKS="1")
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)  # the trace goes to stderr, stdout stays valid JSON
    assert "register_reward_losses" in proc.stderr

    quiet = run_cli("plugins", cwd=tmp_path)
    assert "register_reward_losses" not in quiet.stderr


# --- in-process: the registry and its errors --------------------------------------------


def test_hookimpl_is_importable_from_the_package_and_marks_for_this_project():
    from llama2rlhf import hookimpl

    assert hookimpl.project_name == "llama2rlhf"


def test_builtins_go_through_the_same_manager(fresh):
    pm = fresh.get_plugin_manager()
    for name, module in fresh.BUILTIN_PLUGINS.items():
        assert pm.get_plugin(name).__name__ == module
    item = fresh.get("reward_losses", "margin_small")
    assert (item.plugin, item.distribution) == ("reward_losses", "llama2rlhf")
    assert set(fresh.registry("reward_losses")) >= BUILTIN_LOSSES


def test_disable_autoload_in_process(fresh, monkeypatch):
    assert "example_hinge" in fresh.registry("reward_losses")
    monkeypatch.setenv(plugins.DISABLE_AUTOLOAD_ENV, "1")
    fresh.reset()
    assert set(fresh.registry("reward_losses")) == BUILTIN_LOSSES
    assert fresh.get_plugin_manager().get_plugin("example") is None


def test_get_unknown_name_lists_the_available_ones(fresh):
    with pytest.raises(PluginError) as err:
        fresh.get("reward_losses", "nope")
    msg = str(err.value)
    assert "'nope'" in msg
    for name in BUILTIN_LOSSES:
        assert name in msg


def test_unknown_kind_is_a_clear_error(fresh):
    with pytest.raises(KeyError, match="reward_losses"):
        fresh.registry("reward_lossez")


def _registers_loss(name: str):
    """A plugin object whose register_reward_losses registers one loss called ``name``."""
    from llama2rlhf import RewardLoss, hookimpl

    class Plugin:
        @hookimpl
        def register_reward_losses(self, register):
            register(name, RewardLoss(lambda rc, rr, m: 0.0))

    return Plugin()


def test_a_third_party_object_registers_through_hookimpl(fresh):
    fresh.get_plugin_manager().register(_registers_loss("extra_loss"), name="extra")
    item = fresh.get("reward_losses", "extra_loss")
    assert item.plugin == "extra"
    assert "extra" in {p["name"] for p in fresh.describe()}


def test_same_name_from_two_plugins_names_both(fresh):
    fresh.get_plugin_manager().register(_registers_loss("margin_small"), name="clashing_plugin")
    with pytest.raises(PluginError) as err:
        fresh.registry("reward_losses")
    msg = str(err.value)
    assert "'margin_small'" in msg
    assert "clashing_plugin" in msg
    assert "'reward_losses'" in msg and "llama2rlhf" in msg  # the built-in plugin and its distribution


def test_register_hook_that_raises_names_the_plugin(fresh):
    from llama2rlhf import hookimpl

    class Exploding:
        @hookimpl
        def register_reward_losses(self, register):
            raise ValueError("boom in the plugin")

    fresh.get_plugin_manager().register(Exploding(), name="exploding_plugin")
    with pytest.raises(PluginError) as err:
        fresh.registry("reward_losses")
    msg = str(err.value)
    assert "exploding_plugin" in msg
    assert "register_reward_losses" in msg
    assert "boom in the plugin" in msg


def test_invalid_registered_name_names_the_plugin(fresh):
    from llama2rlhf import hookimpl

    class Nameless:
        @hookimpl
        def register_samplers(self, register):
            register("", object())

    fresh.get_plugin_manager().register(Nameless(), name="nameless_plugin")
    with pytest.raises(PluginError, match="nameless_plugin"):
        fresh.registry("samplers")


def test_plugin_that_fails_to_import_names_plugin_and_distribution(fresh, tmp_path, monkeypatch):
    module = "llama2rlhf_test_fake_broken_plugin"
    (tmp_path / f"{module}.py").write_text('raise ImportError("needs a library that is not installed")\n')
    dist_info = tmp_path / "fake_broken-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-broken\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [llama2rlhf]
        broken_plugin = {module}
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(PluginError) as err:
            fresh.get_plugin_manager()
        msg = str(err.value)
        assert "'broken_plugin'" in msg
        assert "fake-broken" in msg
        assert "needs a library that is not installed" in msg
        # the built-ins alone still load when autoload is off
        monkeypatch.setenv(plugins.DISABLE_AUTOLOAD_ENV, "1")
        fresh.reset()
        assert set(fresh.registry("reward_losses")) == BUILTIN_LOSSES
    finally:
        sys.modules.pop(module, None)
