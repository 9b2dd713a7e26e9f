"""The one resolver: what a model reference names, before anything is loaded."""

import json

import pytest

from vichat.models import find_base_model, resolve
from vichat.records import VichatError
from vichat.specs import Architecture, BaseModelSpec

ARCH = Architecture(family="bloom", n_layers=2, hidden_size=64, n_heads=4, vocab_size=1000)
BASES = [BaseModelSpec(name="acme-1b", description="d", hub_id="acme/acme-1b", architecture=ARCH,
                       lora_targets=("query_key_value",))]


def adapter(folder, base, run_info=None):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "peft_type": "LORA"}))
    if run_info is not None:
        (folder / "vichat_train.json").write_text(json.dumps(run_info))
    return folder


def test_names_hub_ids_and_the_one_base_path(tmp_path):
    r = resolve("acme-1b", BASES)
    assert (r.model_id, r.spec.name, r.base, r.adapter) == ("acme-1b", "acme-1b", "acme/acme-1b", None)
    assert resolve("acme/acme-1b", BASES).spec is BASES[0]
    weights = tmp_path / "weights"
    weights.mkdir()
    assert resolve("acme-1b", BASES, base_path=weights).base == str(weights)
    assert find_base_model("nope", BASES) is None


def test_adapter_folders_follow_what_they_recorded(tmp_path):
    weights = tmp_path / "acme-local"
    weights.mkdir()
    # vichat's own adapter: the registered base by name, weights where training found them
    r = resolve(adapter(tmp_path / "chat", str(weights), {"base_model": "acme-1b"}), BASES)
    assert (r.model_id, r.spec.name, r.base, r.adapter.name) == ("chat", "acme-1b", str(weights), "chat")
    # someone else's adapter on the hub id: the registered spec is found by hub id
    r = resolve(adapter(tmp_path / "other", "acme/acme-1b"), BASES)
    assert r.spec is BASES[0] and r.base == "acme/acme-1b" and r.base_name == "acme-1b"
    # --base-path wins over the recorded place (the weights moved)
    moved = tmp_path / "moved"
    moved.mkdir()
    assert resolve(tmp_path / "chat", BASES, base_path=moved).base == str(moved)
    # an unregistered base: loaded as a plain transformers model from where it was recorded
    r = resolve(adapter(tmp_path / "llama", "meta/llama-x"), BASES)
    assert r.spec is None and r.base_name == "meta/llama-x"
    with pytest.raises(VichatError, match="names no base model; pass --base-path"):
        resolve(adapter(tmp_path / "anon", ""), BASES)


def test_model_folders_aliases_and_clear_errors(tmp_path):
    model = tmp_path / "merged"
    model.mkdir()
    (model / "config.json").write_text("{}")
    r = resolve(model, BASES)
    assert (r.model_id, r.spec, r.base) == ("merged", None, str(model))
    with pytest.raises(VichatError, match="neither a model folder"):
        resolve(tmp_path, BASES)
    runs = {"acme-chat": str(tmp_path / "runs" / "acme-chat")}
    with pytest.raises(VichatError, match=r"'acme-chat' has no trained adapter at .*vichat train acme-chat"):
        resolve("acme-chat", BASES, aliases=runs)
    adapter(tmp_path / "runs" / "acme-chat", "acme/acme-1b")
    assert resolve("acme-chat", BASES, aliases=runs).adapter.name == "acme-chat"
    with pytest.raises(VichatError, match=r"'acme-2b' is not an adapter or model folder, nor a registered base model "
                                          r"\(acme-1b\), or one of acme-chat"):
        resolve("acme-2b", BASES, aliases=runs)
