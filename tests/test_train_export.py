"""`vichat export`: merged model = base + adapter; refused onto a quantised base."""

from __future__ import annotations

import json

import pytest
from conftest_train import one_thread, tiny, train_registry  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory):
    import torch

    from vichat.train.trainer import run

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("export") / "adapter"
    run(tiny.config(out, epochs=0.5), registry=train_registry(), show_progress=False)
    return out


def _logits(model, tok):
    import torch

    ids = tok("### Instruction:\nThủ đô của Việt Nam là gì?\n### Response:\n", return_tensors="pt").input_ids
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits[0]


def test_merge_gives_the_logits_of_base_plus_adapter(adapter, tiny, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vichat.train.export import export

    out = export(adapter, tmp_path / "merged", merge=True, base_models=train_registry().all("base_models"))
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert "Merged model" in (out / "README.md").read_text()
    tok = AutoTokenizer.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny.bloom), str(adapter))
    a, b = _logits(merged, tok), _logits(with_adapter, tok)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert not torch.allclose(a, _logits(AutoModelForCausalLM.from_pretrained(tiny.bloom), tok), atol=1e-4)


@pytest.mark.parametrize("load_in", ["8bit", "4bit"])
def test_merge_onto_a_quantized_base_is_refused(adapter, tmp_path, load_in):
    from vichat.records import VichatError
    from vichat.train.export import export

    with pytest.raises(VichatError, match=f"cannot merge.*{load_in}.*rounded"):
        export(adapter, tmp_path / "m", merge=True, load_in=load_in, base_models=train_registry().all("base_models"))
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_merge_onto_an_already_quantized_checkpoint_is_refused(adapter, tiny, tmp_path):
    import shutil

    from vichat.records import VichatError
    from vichat.train.export import export

    base = tmp_path / "int8-base"
    shutil.copytree(tiny.bloom, base)
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(VichatError, match="already-quantised"):
        export(adapter, tmp_path / "m", base_path=str(base), base_models=train_registry().all("base_models"))


def test_cli_export_no_merge_copies_the_adapter(adapter, tmp_path):
    from click.testing import CliRunner

    from vichat.train.export_commands import export

    result = CliRunner().invoke(export, [str(adapter), "--no-merge", "--out", str(tmp_path / "copy")])
    assert result.exit_code == 0, result.output
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"):
        assert (tmp_path / "copy" / name).is_file(), name
    bad = CliRunner().invoke(export, [str(tmp_path), "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "not a PEFT adapter folder" in str(bad.exception or bad.output)


# --------------------------------------------------------------------------- the base an adapter records


@pytest.fixture(scope="module")
def tiny_build(tiny, tmp_path_factory):
    """The ``tiny`` plugin's default build, stood in for by the tiny random BLOOM: its loader finds
    ``<cache>/<key>/base`` when given no folder (``vichat train tiny-chat`` gives none), as it finds
    the real build in ``$VICHAT_CACHE_DIR/tiny``, without spending minutes building one."""
    import shutil
    from types import SimpleNamespace

    base = tmp_path_factory.mktemp("tiny-cache") / "0123456789abcdef" / "base"
    shutil.copytree(tiny.bloom, base)
    paths = SimpleNamespace(root=base.parent, base=base, is_complete=lambda wanted=(): True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("vichat.tiny.build.tiny_paths", lambda *a, **k: paths)
        mp.setattr("vichat.tiny.build.build_tiny", lambda *a, **k: SimpleNamespace(base=base, paths=paths))
        yield base


@pytest.fixture(scope="module")
def tiny_adapter(tiny, tiny_build, tmp_path_factory):
    """An adapter trained as `vichat train tiny-chat` trains it: base model ``tiny``, no --base-path."""
    import torch

    from vichat.train.trainer import run

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tiny-chat") / "adapter"
    run(tiny.config(out, base_model="tiny", base_path=None, epochs=0.5), registry=train_registry(),
        show_progress=False)
    return out


def test_adapter_on_the_tiny_build_records_the_folder_it_was_loaded_from(tiny_adapter, tiny_build):
    config = json.loads((tiny_adapter / "adapter_config.json").read_text())
    recorded = config["base_model_name_or_path"]
    assert recorded == str(tiny_build.resolve()), recorded  # not "vichat/tiny", which is on no hub
    assert (tiny_build / "config.json").is_file()
    info = json.loads((tiny_adapter / "vichat_train.json").read_text())
    assert info["base_model"] == "tiny" and info["base_model_name_or_path"] == recorded
    card = (tiny_adapter / "README.md").read_text()
    assert f"base_model: {recorded}\n" in card
    assert f'AutoModelForCausalLM.from_pretrained("{recorded}")' in card and "vichat/tiny" not in card


def test_tiny_adapter_loads_with_plain_peft(tiny_adapter):
    """What the card and docs/training.md promise: transformers + peft, no vichat, no --base-path."""
    import torch
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recorded = json.loads((tiny_adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    tok = AutoTokenizer.from_pretrained(tiny_adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(recorded), str(tiny_adapter))
    auto = AutoPeftModelForCausalLM.from_pretrained(str(tiny_adapter))
    assert torch.allclose(_logits(model, tok), _logits(auto, tok), atol=1e-6)


def test_cli_export_merges_the_tiny_adapter_without_base_path(tiny_adapter, tmp_path, monkeypatch):
    import torch
    from click.testing import CliRunner
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vichat.train.export_commands import export

    # The recorded folder is enough: the plugin's build is not asked for.
    monkeypatch.setattr("vichat.tiny.build.build_tiny", lambda *a, **k: pytest.fail("the build was not needed"))
    result = CliRunner().invoke(export, [str(tiny_adapter), "--merge", "--out", str(tmp_path / "x")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    recorded = json.loads((tiny_adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    tok = AutoTokenizer.from_pretrained(tmp_path / "x")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "x")
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(recorded), str(tiny_adapter))
    assert torch.allclose(_logits(merged, tok), _logits(with_adapter, tok), atol=1e-5)


def test_export_of_an_adapter_naming_the_tiny_hub_id_uses_the_build(tiny_adapter, tiny_build, tmp_path):
    """Adapters trained before the fix record "vichat/tiny": the plugin reads its id as its own build."""
    import shutil

    from vichat.train.export import export

    old = tmp_path / "old-adapter"
    shutil.copytree(tiny_adapter, old)
    for name in ("adapter_config.json", "vichat_train.json"):
        data = json.loads((old / name).read_text())
        data["base_model_name_or_path"] = "vichat/tiny"
        (old / name).write_text(json.dumps(data))
    out = export(old, tmp_path / "merged", merge=True, base_models=train_registry().all("base_models"))
    assert (out / "model.safetensors").is_file()


def test_failed_export_leaves_no_output_folder(adapter, tmp_path):
    import shutil

    from vichat.records import VichatError
    from vichat.train.export import export

    moved = tmp_path / "adapter"
    shutil.copytree(adapter, moved)
    gone = tmp_path / "deleted-base"
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(gone)
    (moved / "adapter_config.json").write_text(json.dumps(config))
    (moved / "vichat_train.json").write_text(json.dumps({"base_model": "bloomz-560m", "load_in": "none"}))
    registry = train_registry().all("base_models")
    with pytest.raises(VichatError) as err:
        export(moved, tmp_path / "a" / "b" / "merged", merge=True, base_models=registry)
    assert not (tmp_path / "a").exists()  # no empty folder (nor its new parents) left behind
    # and the error says what is wrong, not "download it from the hub"
    assert f"{gone}: no such folder" in str(err.value) and "--base-path" in str(err.value)
    assert "hf download" not in str(err.value)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    with pytest.raises(VichatError):
        export(moved, mine, merge=True, base_models=registry)
    assert (mine / "keep.txt").is_file()  # a folder that was there before is left alone


# --------------------------------------------------------------------------- the model card


def _card(**overrides):
    from vichat.train.card import model_card

    kwargs = dict(base_model="tiny", base_ref="/models/tiny/base", config={"template": "chat", "lora_r": 8},
                  batch={"total": 8, "micro": 2, "accumulation": 4, "world": 1, "mode": "length"},
                  data={"folder": "runs/x/data", "mixture": "vi-sample-chat",
                        "sources": [{"key": "vi-sample-chat", "dataset": "vi-sample-chat", "used": 10}]},
                  results={"global_step": 4, "total_steps": 4}, lora_targets=["query_key_value"],
                  trainable_params=10, total_params=100, license="")
    kwargs.update(overrides)
    return model_card(**kwargs)


def test_card_license_is_a_hub_license_id():
    from vichat.plugins import get_registry

    assert "license: apache-2.0\n" in _card(license=get_registry().base_model("tiny").license)
    assert "license: apache-2.0\n" in _card(license="Apache-2.0 (part of vichat)")
    assert "license: bigscience-bloom-rail-1.0\n" in _card(license="bigscience-bloom-rail-1.0")
    odd = _card(license="research use only")
    assert "license: other\n" in odd and "License: research use only" in odd
    assert "license:" not in _card(license="")


def test_card_says_when_a_run_was_resumed():
    card = _card(results={"global_step": 12, "total_steps": 12, "resumed_from": "runs/x/checkpoints/checkpoint-6"})
    assert "| resumed | yes: from `runs/x/checkpoints/checkpoint-6` at step 6" in card
    assert "resumed" not in _card()


def test_card_names_a_user_file_as_a_file_not_a_mixture():
    card = _card(data={"folder": "runs/x/data", "mixture": "my-data",
                       "sources": [{"key": "my-data", "dataset": "data/my-data.jsonl", "used": 10}]})
    assert "| file | `data/my-data.jsonl` |" in card and "mixture" not in card.split("## Data")[1].split("##")[0]
    assert "| mixture | vi-sample-chat |" in _card()  # a registered dataset or mixture keeps its name
