"""The plugin core: entry-point loading, containment of failures, name resolution, conflicts."""

import json
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from vichat.cli import main
from vichat.hookspecs import hookimpl
from vichat.plugins import (
    NameConflictError,
    PluginWarning,
    UnknownNameError,
    build_registry,
    get_registry,
    reset_registry,
)
from vichat.records import VichatError
from vichat.specs import Architecture, BaseModelSpec, TemplateSpec

REPO = Path(__file__).resolve().parents[1]
ARCH = Architecture(family="bloom", n_layers=2, hidden_size=64, n_heads=4, vocab_size=1000)


def _module(name: str, **hooks) -> types.ModuleType:
    mod = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(mod, hook, hookimpl(fn))
    return mod


def _base(name: str) -> BaseModelSpec:
    return BaseModelSpec(name=name, description=f"test model {name}", hub_id=f"org/{name}",
                         architecture=ARCH, lora_targets=("query_key_value",))


def test_builtins_come_through_entry_points():
    registry = build_registry()
    assert registry.problems == []
    info = registry.plugins["bloomz"]
    assert info.distribution == "vichat" and info.version
    assert info.module == "vichat_plugins.bloomz"
    assert registry.names("templates") >= ["chat", "doctor"]
    assert registry.owner("base_models", "gptj-6b-vi") == "gptj"
    assert registry.base_model("bloomz-7b1-mt").lora_targets == ("query_key_value",)


def test_hook_that_raises_is_contained_and_named():
    def bad(register):
        register(_base("half-done"))
        raise RuntimeError("boom")

    good = _module("good", register_base_models=lambda register: register(_base("fine-model")))
    with pytest.warns(PluginWarning) as caught:
        registry = build_registry([("broken", _module("broken", register_base_models=bad)), ("good", good)],
                                  entry_points=False)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert "'broken'" in messages[0] and "RuntimeError: boom" in messages[0]
    assert registry.names("base_models") == ["fine-model"]  # nothing half-registered is kept
    assert registry.plugins["broken"].errors


def test_invalid_spec_is_skipped_with_one_warning():
    def reg(register):
        register(_base("Bad Name"))
        register(_base("ok-model"))
        register(TemplateSpec(name="t", description="x", prompt="no placeholder"))  # wrong kind too

    with pytest.warns(PluginWarning) as caught:
        registry = build_registry([("sloppy", _module("sloppy", register_base_models=reg))], entry_points=False)
    text = [str(w.message) for w in caught]
    assert len(text) == 2
    assert any("'Bad Name' is invalid" in t for t in text)
    assert any("must register BaseModelSpec objects, got TemplateSpec" in t for t in text)
    assert registry.names("base_models") == ["ok-model"]


def test_unknown_name_lists_registered_and_suggests():
    registry = build_registry()
    with pytest.raises(UnknownNameError) as err:
        registry.base_model("bloomz-7b-mt")
    msg = str(err.value)
    assert "Did you mean 'bloomz-7b1-mt'?" in msg
    assert "bloomz-560m" in msg and "gptj-6b-vi" in msg
    assert isinstance(err.value, VichatError)


def test_same_name_from_two_plugins_is_an_error_naming_both():
    a = _module("a", register_base_models=lambda register: register(_base("twin")))
    b = _module("b", register_base_models=lambda register: register(_base("twin")))
    with pytest.warns(PluginWarning, match="'plugin-a' and 'plugin-b'"):
        registry = build_registry([("plugin-a", a), ("plugin-b", b)], entry_points=False)
    with pytest.raises(NameConflictError, match="'plugin-a' and 'plugin-b'"):
        registry.base_model("twin")


def test_strict_mode_reraises():
    bad = _module("bad", register_base_models=lambda register: 1 / 0)
    with pytest.raises(VichatError, match="ZeroDivisionError"):
        build_registry([("bad", bad)], entry_points=False, strict=True)


def test_denylist_blocks_before_import(monkeypatch):
    monkeypatch.setenv("VICHAT_DISABLE_PLUGINS", "gptj")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry = build_registry()
    assert "gptj" not in registry.plugins
    assert "gptj-6b-vi" not in registry.names("base_models")
    monkeypatch.delenv("VICHAT_DISABLE_PLUGINS")
    monkeypatch.setenv("VICHAT_PLUGINS", "templates")
    assert list(build_registry().plugins) == ["templates"]


def test_plugins_command_json_and_text():
    reset_registry()
    try:
        result = CliRunner().invoke(main, ["plugins", "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        by_name = {p["name"]: p for p in data["plugins"]}
        assert by_name["bloomz"]["registered"]["base_models"] == ["bloomz-7b1-mt", "bloomz-560m"]
        assert by_name["templates"]["distribution"] == "vichat"
        assert data["conflicts"] == []
        text = CliRunner().invoke(main, ["plugins"]).output
        assert "base models: gptj-6b-vi" in text
    finally:
        reset_registry()


PLUGIN_SRC = '''
from vichat.hookspecs import hookimpl
from vichat.specs import Architecture, BaseModelSpec


@hookimpl
def register_base_models(register):
    register(BaseModelSpec(
        name="acme-7b",
        description="ACME 7B test model.",
        hub_id="acme/acme-7b",
        architecture=Architecture(family="llama", n_layers=32, hidden_size=4096, n_heads=32, vocab_size=32000),
        lora_targets=("q_proj", "v_proj"),
    ))
'''


def test_throwaway_distribution_installs_and_registers(tmp_path):
    """A separately installed distribution with its own entry point shows up and resolves."""
    project = tmp_path / "vichat-acme"
    (project / "vichat_acme").mkdir(parents=True)
    (project / "vichat_acme" / "__init__.py").write_text(PLUGIN_SRC)
    (project / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "vichat-acme"
        version = "1.2.3"
        [project.entry-points.vichat]
        acme = "vichat_acme"
        [tool.setuptools]
        packages = ["vichat_acme"]
    """))
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(project)],
        check=True, capture_output=True, text=True,
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "vichat.cli", "plugins", "--json"], env=env,
                         capture_output=True, text=True, check=True)
    plugins = {p["name"]: p for p in json.loads(out.stdout)["plugins"]}
    assert plugins["acme"]["distribution"] == "vichat-acme"
    assert plugins["acme"]["version"] == "1.2.3"
    assert plugins["acme"]["registered"]["base_models"] == ["acme-7b"]
    resolved = subprocess.run(
        [sys.executable, "-c",
         "from vichat.plugins import get_registry; s = get_registry().base_model('acme-7b'); print(s.hub_id)"],
        env=env, capture_output=True, text=True, check=True)
    assert resolved.stdout.strip() == "acme/acme-7b"


def test_broken_distribution_import_is_contained(tmp_path):
    dist = tmp_path / "site" / "vichat_broken-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vichat-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[vichat]\nbroken = vichat_broken_missing\n")
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "vichat.cli", "plugins"], env=env, capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stderr.count("vichat plugin 'broken': failed to import vichat_broken_missing") == 1
    assert "base models: bloomz-7b1-mt, bloomz-560m" in out.stdout


def test_every_hook_and_spec_field_is_documented():
    from dataclasses import fields

    from vichat import hookspecs
    from vichat.specs import KINDS

    doc = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    for kind in KINDS:
        hook = f"register_{kind}"
        assert hasattr(hookspecs, hook)
        assert f"### `{hook}(register)`" in doc, f"{hook} has no heading in docs/plugins.md"
    for spec_type in KINDS.values():
        for f in fields(spec_type):
            assert f"`{f.name}`" in doc, f"{spec_type.__name__}.{f.name} is not documented"


def test_get_registry_is_cached():
    reset_registry()
    assert get_registry() is get_registry()
    reset_registry()


# -- what a third-party plugin author runs into --------------------------------------------------


def _spec_module(name: str, **functions) -> types.ModuleType:
    mod = types.ModuleType(name)
    for attr, fn in functions.items():
        setattr(mod, attr, fn)
    return mod


def test_misspelt_hook_warns_and_strict_mode_raises():
    mod = _spec_module("typo", register_judge=hookimpl(lambda register: None))
    with pytest.warns(PluginWarning, match=r"register_judge is marked @hookimpl but vichat has no hook.*"
                                           r"Did you mean 'register_judges'"):
        registry = build_registry([("typo", mod)], entry_points=False)
    assert registry.plugins["typo"].errors
    with pytest.raises(VichatError, match="register_judge is marked @hookimpl"):
        build_registry([("typo", mod)], entry_points=False, strict=True)


def test_hook_without_hookimpl_warns_and_strict_mode_raises():
    called = []
    mod = _spec_module("unmarked", register_base_models=lambda register: called.append(1))
    with pytest.warns(PluginWarning, match=r"register_base_models is not marked with @hookimpl"):
        build_registry([("unmarked", mod)], entry_points=False)
    with pytest.raises(VichatError, match="not marked with @hookimpl"):
        build_registry([("unmarked", mod)], entry_points=False, strict=True)
    assert called == []
    # Both mistakes at once: unmarked and misspelt.
    mod = _spec_module("both", register_dataset=lambda register: None)
    with pytest.warns(PluginWarning, match=r"rename it to 'register_datasets'"):
        build_registry([("both", mod)], entry_points=False)


def test_correct_plugin_and_helpers_named_register_raise_nothing():
    mod = _module("fine", register_base_models=lambda register: register(_base("fine-1")))
    mod.registered_names = lambda: ["x"]  # a helper whose name merely starts with "register"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry = build_registry([("fine", mod)], entry_points=False, strict=True)
    assert registry.names("base_models") == ["fine-1"]


def test_name_clash_with_a_builtin_is_listed_under_both_plugins():
    reset_registry()
    clash = _module("clash", register_base_models=lambda register: register(_base("tiny")))
    with pytest.warns(PluginWarning, match="'tiny' and 'aaa-clash'|'aaa-clash' and 'tiny'"):
        registry = build_registry([("aaa-clash", clash)])
    assert "tiny" in registry.plugins["tiny"].registered["base_models"]
    assert "tiny" in registry.plugins["aaa-clash"].registered["base_models"]
    assert sorted(registry.conflicts[("base_models", "tiny")]) == ["aaa-clash", "tiny"]
    with pytest.raises(NameConflictError):
        registry.base_model("tiny")
    import vichat.plugins as plugins_module

    plugins_module._registry = registry  # what `vichat plugins` shows for this registry
    try:
        result = CliRunner().invoke(main, ["plugins"])
        assert result.exit_code == 1
        blocks = result.stdout.split("\n\n")[0]
        tiny_lines = [line for line in result.stdout.splitlines() if "tiny (CONFLICT)" in line]
        assert len(tiny_lines) == 2, blocks
    finally:
        reset_registry()


def test_unknown_kind_says_which_kinds_exist():
    from vichat.plugins import UnknownKindError

    registry = build_registry([], entry_points=False)
    with pytest.raises(UnknownKindError, match=r"no kind of component named 'judge'\. Did you mean 'judges'\? "
                                               r"Kinds: datasets, base_models"):
        registry.names("judge")
    with pytest.raises(VichatError, match="Kinds:"):
        registry.get("base-models", "x")


def test_architecture_family_is_checked_at_registration():
    def spec(family: str) -> BaseModelSpec:
        arch = Architecture(family=family, n_layers=2, hidden_size=64, n_heads=4, vocab_size=1000)
        return BaseModelSpec(name=f"m-{family.lower()}", description="d", hub_id="o/m", architecture=arch,
                             lora_targets=("q_proj",))

    mod = _module("fams", register_base_models=lambda register: [register(spec(f))
                                                                  for f in ("lama", "GPT-J", "other", "qwen2")])
    with pytest.warns(PluginWarning, match=r"family='lama' is not a known family\. Did you mean 'llama'\?"):
        registry = build_registry([("fams", mod)], entry_points=False)
    assert registry.names("base_models") == ["m-gpt-j", "m-other", "m-qwen2"]


def test_every_family_but_other_has_a_shape_table():
    from vichat.specs import FAMILIES, family_key
    from vichat.train.shapes import FAMILIES as SHAPES

    assert {family_key(f) for f in FAMILIES if f != "other"} == set(SHAPES)


def test_public_namespace_is_complete_light_and_used_by_builtins():
    import vichat.plugin as api

    for name in api.__all__:
        assert getattr(api, name) is not None, name
    from vichat.evaluate.conversation import converse
    from vichat.specs import JudgeResult

    assert api.converse is converse and api.JudgeResult is JudgeResult
    with pytest.raises(AttributeError, match="public names"):
        api.not_a_name  # noqa: B018
    code = ("import sys, vichat.plugin as p; [getattr(p, n) for n in p.__all__]; "
            "print(sorted(m for m in ('torch', 'transformers', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    # Third-party-style built-ins use only the public namespace; the three that register vichat's
    # own data (templates, judge prompts, the tiny model) may read it where it lives.
    own_data = {"templates.py", "judge_prompts.py", "tiny.py", "__init__.py"}
    for path in sorted((REPO / "plugins").glob("*.py")):
        if path.name in own_data:
            continue
        imports = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                   if line.strip().startswith(("from vichat", "import vichat"))]
        # Not even the registry: a judge gets the run's registry as a keyword (the registry at the edge).
        bad = [line for line in imports if not line.startswith("from vichat.plugin import")]
        assert bad == [], f"{path.name} imports internals: {bad}"


def test_docs_use_the_public_namespace_and_document_kinds_and_families():
    from vichat.specs import FAMILIES, KINDS

    doc = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert "from vichat.hookspecs import" not in doc and "from vichat.specs import" not in doc
    assert "from vichat.plugin import" in doc
    for kind in KINDS:
        assert f"`{kind}`" in doc, f"kind {kind} is not documented"
    for family in FAMILIES:
        assert f"`{family}`" in doc, f"family {family} is not documented"
    import vichat.plugin as api

    for name in api.__all__:
        assert f"`{name}`" in doc, f"vichat.plugin.{name} is not documented"
