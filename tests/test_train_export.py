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
