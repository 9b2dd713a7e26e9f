"""The training configuration, presets, refusals, DeepSpeed config and the dry-run planner.

Pure Python: no weights, no torch, no network.
"""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import replace

import pytest
from click.testing import CliRunner

from vichat.cli import main
from vichat.records import VichatError
from vichat.specs import Architecture, BaseModelSpec
from vichat.train.batch import Batch, solve_batch, steps_per_epoch, total_steps
from vichat.train.config import TrainConfig, build_config, resolve, training_arguments
from vichat.train.ds_config import DEFAULT_DS_CONFIG, REPO_ROOT, fill_deepspeed_config
from vichat.train.launcher import config_to_args, launch_command
from vichat.train.memory import GIB, estimate_memory
from vichat.train.plan import plan
from vichat.train.presets import PRESETS, get_preset
from vichat.train.shapes import computed_total_params, lora_param_count
from vichat.train.validate import check_merge, validate_config
from vichat_plugins.bloomz import BLOOMZ_7B1_MT
from vichat_plugins.gptj import GPTJ_6B_VI

BLOOM = BLOOMZ_7B1_MT.architecture
GPTJ = GPTJ_6B_VI.architecture


def _paper(name: str, **over) -> TrainConfig:
    return replace(build_config(name), **over)


# --------------------------------------------------------------------------- parameter counts


def test_lora_counts_exact():
    assert lora_param_count(BLOOM, ["query_key_value"], 8) == 3_932_160 == 8 * (4096 + 12288) * 30
    assert lora_param_count(GPTJ, ["q_proj", "v_proj"], 8) == 3_670_016 == 2 * 8 * (4096 + 4096) * 28
    # peft's suffix matching and "all-linear"
    assert lora_param_count(BLOOM, ["self_attention.query_key_value"], 8) == 3_932_160
    assert lora_param_count(BLOOM, ["all-linear"], 8) == 30 * 8 * ((4096 + 12288) + 8192 + 2 * (4096 + 16384))


def test_total_params_from_shapes():
    assert computed_total_params(BLOOM) == 7_069_016_064 == BLOOM.n_params
    assert computed_total_params(GPTJ) == 6_050_882_784  # what GPTJForCausalLM has (verified on meta device)


def test_unknown_lora_target_lists_known_modules():
    cfg = _paper("bloomz-chat", lora_targets=("q_proj", "v_proj"))
    with pytest.raises(VichatError, match=r"'q_proj'.*bloom.*query_key_value, dense, dense_h_to_4h"):
        validate_config(cfg, BLOOMZ_7B1_MT)


# --------------------------------------------------------------------------- batch arithmetic


@pytest.mark.parametrize(
    "total, world, micro, accum, cap, expect",
    [
        (128, 4, None, None, None, Batch(128, 32, 1, 4)),
        (128, 4, None, None, 9, Batch(128, 8, 4, 4)),  # largest divisor of 32 <= 9
        (128, 4, None, None, 0, Batch(128, 1, 32, 4)),
        (128, 4, 4, None, None, Batch(128, 4, 8, 4)),
        (128, 4, None, 16, None, Batch(128, 2, 16, 4)),
        (128, 4, 4, 8, None, Batch(128, 4, 8, 4)),
        (16, 1, None, None, 5, Batch(16, 4, 4, 1)),
        (96, 3, None, None, 7, Batch(96, 4, 8, 3)),
    ],
)
def test_solve_batch(total, world, micro, accum, cap, expect):
    b = solve_batch(total, world, micro, accum, cap)
    assert b == expect and b.micro * b.accumulation * b.world == total


def test_batch_not_divisible_by_world_explains_options():
    with pytest.raises(VichatError) as err:
        solve_batch(128, 3)
    msg = str(err.value)
    assert "not divisible by the world size 3" in msg and "126 or 129" in msg and "1, 2, 4, 8" in msg


@pytest.mark.parametrize("micro, accum, needle", [(5, None, "micro-batch 5 does not divide"),
                                                  (None, 3, "accumulation 3 does not divide"),
                                                  (4, 4, "= 64, not the total batch 128")])
def test_batch_inconsistent(micro, accum, needle):
    with pytest.raises(VichatError, match=needle):
        solve_batch(128, 4, micro, accum)


def test_steps_match_trainer_formula():
    b = Batch(128, 8, 4, 4)
    assert steps_per_epoch(202_000, b) == 1579  # ceil(ceil(202000 / 32) / 4)
    assert total_steps(202_000, b, 2) == 3158
    assert steps_per_epoch(10, Batch(16, 4, 4, 1)) == 1


# --------------------------------------------------------------------------- refusals


def test_refuse_int8_with_zero3():
    for load_in in ("8bit", "4bit"):
        cfg = _paper("bloomz-chat", load_in=load_in, zero_stage=3)
        with pytest.raises(VichatError, match=r"zero-stage 3 is refused.*#1451.*#2892"):
            validate_config(cfg, BLOOMZ_7B1_MT)


def test_zero3_unquantized_only_warns():
    cfg = _paper("bloomz-chat", load_in="none", zero_stage=3)
    warnings = validate_config(cfg, BLOOMZ_7B1_MT)
    assert any("#2892" in w for w in warnings)


def test_refuse_bf16_with_int8():
    with pytest.raises(VichatError, match=r"casts its inputs to fp16"):
        validate_config(_paper("gptj-chat", compute_dtype="bf16"), GPTJ_6B_VI)
    validate_config(_paper("gptj-chat", compute_dtype="bf16", load_in="4bit"), GPTJ_6B_VI)  # fine


def test_quantized_on_cpu_is_allowed():
    # bitsandbytes >= 0.45 has CPU int8/NF4 kernels: not refused.
    cfg = _paper("gptj-chat", device="cpu", gpus=1, compute_dtype="fp32")
    validate_config(cfg, GPTJ_6B_VI)


def test_check_merge_refuses_quantized_base():
    for load_in in ("8bit", "4bit"):
        with pytest.raises(VichatError, match="quantised grid"):
            check_merge(load_in, "bloomz-7b1-mt")
    check_merge("none")


# --------------------------------------------------------------------------- config, presets, YAML


def test_presets_carry_paper_settings():
    assert set(PRESETS) == {"bloomz-chat", "bloomz-doctor", "gptj-chat", "gptj-doctor", "tiny-chat", "tiny-doctor"}
    cfg = build_config("bloomz-doctor")
    assert (cfg.base_model, cfg.data, cfg.template, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (
        "bloomz-7b1-mt", "doctor", "doctor", 8, 16, 0.05)
    assert (cfg.max_length, cfg.learning_rate, cfg.epochs, cfg.total_batch_size, cfg.load_in) == (
        512, 3e-4, 2, 128, "8bit")
    tiny = build_config("tiny-chat")
    assert (tiny.base_model, tiny.load_in, tiny.max_length, tiny.total_batch_size) == ("tiny", "none", 256, 16)
    with pytest.raises(VichatError, match="Did you mean 'gptj-chat'"):
        get_preset("gptj-chta")


def test_resolve_auto_values():
    cfg = TrainConfig(base_model="gptj-6b-vi")
    gpu = resolve(cfg, GPTJ_6B_VI, cuda=True)
    cpu = resolve(cfg, GPTJ_6B_VI, cuda=False)
    assert (gpu.load_in, gpu.compute_dtype, gpu.lora_targets) == ("8bit", "fp16", ("q_proj", "v_proj"))
    assert (cpu.load_in, cpu.compute_dtype, cpu.world_size) == ("none", "fp32", 1)


def test_yaml_precedence(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("lora-r: 16\nlearning_rate: 1e-4\nepochs: 3\nlora_targets: [query_key_value, dense]\n")
    cfg = build_config("bloomz-chat", f, {"epochs": 1, "micro_batch_size": None})
    assert cfg.lora_r == 16  # YAML over preset
    assert cfg.learning_rate == 1e-4  # "1e-4" is a string to YAML 1.1: coerced
    assert cfg.epochs == 1  # flag over YAML
    assert cfg.lora_targets == ("query_key_value", "dense")
    assert cfg.total_batch_size == 128  # preset over default
    f.write_text("preset: gptj-doctor\nseed: 7\n")
    cfg = build_config(None, f)
    assert (cfg.preset, cfg.base_model, cfg.seed) == ("gptj-doctor", "gptj-6b-vi", 7)


def test_yaml_unknown_key_names_file_line_and_suggestion(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("lora_r: 8\nlearning_rat: 0.001\n")
    with pytest.raises(VichatError) as err:
        build_config("bloomz-chat", f)
    msg = str(err.value)
    assert f"{f}:2" in msg and "'learning_rat'" in msg and "Did you mean 'learning_rate'" in msg


def test_yaml_bad_value(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("load_in: 3bit\n")
    with pytest.raises(VichatError, match=r"bad.yaml.*load_in='3bit' is not one of"):
        build_config("bloomz-chat", f)


def test_training_arguments_are_transformers_5_names():
    from transformers import TrainingArguments

    cfg = resolve(_paper("gptj-chat", group_by_length=True), GPTJ_6B_VI)
    kw = training_arguments(cfg, 8, 4, output_dir="runs/x")
    # Length grouping is vichat's own batch sampler, never Trainer's (transformers 5 has no group_by_length).
    assert "group_by_length" not in kw and "train_sampling_strategy" not in kw
    assert kw["fp16"] and not kw["bf16"] and kw["per_device_train_batch_size"] == 8
    names = set(inspect.signature(TrainingArguments).parameters)
    assert set(kw) <= names, set(kw) - names  # every keyword is one transformers 5 accepts


# --------------------------------------------------------------------------- DeepSpeed


def _autos(node):
    if isinstance(node, dict):
        return [a for v in node.values() for a in _autos(v)]
    return [node] if node == "auto" else []


def test_train_ds_json_is_zero2_with_autos():
    ds = json.loads((REPO_ROOT / "train_ds.json").read_text())
    assert ds == DEFAULT_DS_CONFIG
    z = ds["zero_optimization"]
    assert z["stage"] == 2 and z["overlap_comm"] and z["contiguous_gradients"] and z["allgather_partitions"]
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] == "auto"


def test_fill_deepspeed_config_resolves_every_auto():
    cfg = build_config("bloomz-chat")
    ds = fill_deepspeed_config(REPO_ROOT / "train_ds.json", plan(cfg, BLOOMZ_7B1_MT), BLOOMZ_7B1_MT)
    assert _autos(ds) == []
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 4 == ds["train_batch_size"] == 128
    assert ds["fp16"]["enabled"] is True and ds["bf16"]["enabled"] is False
    assert ds["optimizer"]["params"]["lr"] == 3e-4 and ds["optimizer"]["params"]["betas"] == [0.9, 0.999]
    assert ds["scheduler"]["params"]["total_num_steps"] == 3158 and ds["scheduler"]["params"]["warmup_num_steps"] == 100
    assert ds["zero_optimization"]["reduce_bucket_size"] == 4096 * 4096
    ds3 = fill_deepspeed_config("train_ds.json", plan(replace(cfg, load_in="none", zero_stage=3), BLOOMZ_7B1_MT,
                                                      n_train_records=1000), BLOOMZ_7B1_MT)
    assert ds3["zero_optimization"]["stage"] == 3
    assert ds3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert _autos(ds3) == []
    own = fill_deepspeed_config("train_ds.json", plan(cfg, BLOOMZ_7B1_MT), BLOOMZ_7B1_MT, client_optimizer=True)
    assert "optimizer" not in own and "scheduler" not in own and own["zero_allow_untested_optimizer"] is True


# --------------------------------------------------------------------------- memory and plan


def _mem(arch, **kw):
    args = dict(micro=4, seq=512, load_in="8bit", compute_dtype="fp16", checkpointing=True, n_lora=3_932_160,
                lora_in_features=4096, lora_modules=1, world=4, budget_gib=24)
    args.update(kw)
    return estimate_memory(arch, **args)


def test_memory_sanity():
    m = _mem(BLOOM)
    assert m.fits and 12 * GIB < m.total < 24 * GIB
    assert 7 * GIB < m.base_weights < 8 * GIB  # 6.04B int8 + 1.03B embeddings cast to fp16 by DeepSpeed
    assert 9 * GIB < _mem(BLOOM, deepspeed=False).base_weights < 10 * GIB  # peft keeps them in fp32
    assert not _mem(BLOOM, load_in="none", compute_dtype="fp32").fits  # 7B x 4 bytes > 24 GiB
    assert _mem(BLOOM, load_in="none", compute_dtype="fp32").base_weights > 26 * GIB
    assert _mem(BLOOM, checkpointing=False).activations > 5 * _mem(BLOOM).activations
    assert _mem(BLOOM, load_in="4bit").base_weights < _mem(BLOOM).base_weights
    # ZeRO-2 shards LoRA gradients and optimizer state; the base stays whole on each GPU
    assert _mem(BLOOM, world=4).optimizer_states * 4 == pytest.approx(_mem(BLOOM, world=1).optimizer_states)
    assert _mem(BLOOM, world=4).base_weights == _mem(BLOOM, world=1).base_weights


def test_plan_paper_run():
    p = plan(build_config("bloomz-chat"), BLOOMZ_7B1_MT)
    assert p.lora_params == 3_932_160 and p.fits
    assert p.batch.micro * p.batch.accumulation * p.batch.world == 128 and p.batch.world == 4
    assert p.data.records == 202_000 and p.total_steps == 2 * p.steps_per_epoch
    assert p.tokens == round(202_000 * (52_000 * 350 + 150_000 * 365) / 202_000 * 2)
    assert any("4.2M" in n for n in p.notes)
    g = plan(build_config("gptj-doctor"), GPTJ_6B_VI, gpus=2, gpu_mem_gb=48)
    assert g.lora_params == 3_670_016 and g.batch.world == 2 and any("3.6M" in n for n in g.notes)


def test_plan_reads_prepared_data_dir(tmp_path):
    rows = [{"instruction": "Xin chào bạn", "input": "", "output": "Chào bạn, tôi có thể giúp gì?"}] * 10
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    p = plan(build_config("gptj-chat", overrides={"data": str(tmp_path)}), GPTJ_6B_VI)
    assert p.data.records == 10 and 25 < p.avg_tokens < 50
    p = plan(build_config("gptj-chat", overrides={"data": str(tmp_path)}), GPTJ_6B_VI, avg_tokens=100)
    assert p.tokens == 10 * 100 * 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(VichatError, match="no train.jsonl"):
        plan(build_config("gptj-chat", overrides={"data": str(tmp_path / "empty")}), GPTJ_6B_VI)


def test_plan_tiny_preset_with_stand_in_spec():
    tiny = BaseModelSpec(name="tiny", description="stand-in", hub_id="local/tiny",
                         architecture=Architecture("llama", 2, 64, 4, 1000, intermediate_size=128, max_positions=512),
                         lora_targets=("q_proj", "v_proj"))
    p = plan(build_config("tiny-chat"), tiny, n_train_records=200, avg_tokens=120)
    assert p.lora_params == 2 * 2 * 8 * (64 + 64) and p.fits and p.batch.world == 1
    assert p.config.load_in == "none" and p.config.zero_stage == 0


# --------------------------------------------------------------------------- launcher and CLI


def test_launch_command():
    cfg = build_config("bloomz-chat", overrides={"lora_r": 16, "gradient_checkpointing": False})
    cmd = launch_command(cfg)
    assert cmd[:7] == ["deepspeed", "--num_gpus", "4", "--no_local_rank", "--module", "vichat.train.launch",
                       "bloomz-chat"]
    assert "--lora-r" in cmd and cmd[cmd.index("--lora-r") + 1] == "16" and "--no-gradient-checkpointing" in cmd
    multi = launch_command(replace(cfg, hostfile="hosts.txt", num_nodes=2))
    assert multi[:5] == ["deepspeed", "--hostfile", "hosts.txt", "--num_nodes", "2"]
    assert "--hostfile" not in multi[5:]  # the workers never see launcher-only settings
    single = launch_command(build_config("tiny-chat"))
    assert single[:4] == ["python", "-m", "vichat.train.launch", "tiny-chat"]
    # the workers rebuild the same configuration from the arguments
    args = config_to_args(cfg)
    again = build_config(args[0], overrides={k: v for k, v in _parse(args[1:]).items()})
    assert again == cfg


def _parse(args):
    out, i = {}, 0
    while i < len(args):
        a = args[i][2:].replace("-", "_")
        if a.startswith("no_"):
            out[a[3:]] = False
            i += 1
        else:
            out[a], i = args[i + 1], i + 2
    return out


def test_cli_dry_run_bloomz():
    res = CliRunner().invoke(main, ["train", "bloomz-chat", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "3,932,160" in res.output and "verdict      fits on 4 x 24 GiB" in res.output
    assert "4.2M" in res.output


def test_cli_dry_run_json_gptj():
    res = CliRunner().invoke(main, ["train", "gptj-doctor", "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["trainable_params"] == 3_670_016 and d["fits"] is True and d["data"]["records"] == 252_000
    assert d["batch"]["total"] == 128 and d["config"]["template"] == "doctor"


def test_cli_refusal_and_yaml_error(tmp_path):
    res = CliRunner().invoke(main, ["train", "bloomz-chat", "--dry-run", "--zero-stage", "3"])
    assert res.exit_code == 2 and "#1451" in res.output
    f = tmp_path / "c.yaml"
    f.write_text("micro_batch: 4\n")
    res = CliRunner().invoke(main, ["train", "bloomz-chat", "--config", str(f), "--dry-run"])
    assert res.exit_code == 2 and "c.yaml:1" in res.output and "micro_batch_size" in res.output


def test_cli_print_command_and_missing_trainer(monkeypatch):
    res = CliRunner().invoke(main, ["train", "gptj-chat", "--print-command", "--hostfile", "hosts", "--num-nodes", "2"])
    assert res.exit_code == 0
    assert res.output.startswith("deepspeed --hostfile hosts --num_nodes 2 --num_gpus 4 --no_local_rank --module")
    monkeypatch.setitem(sys.modules, "vichat.train.trainer", None)  # as if the module did not exist
    res = CliRunner().invoke(main, ["train", "gptj-chat", "--gpus", "1", "--device", "cpu"])
    assert res.exit_code == 2 and "training loop not available yet" in res.output


# --------------------------------------------------------------------------- cross-checks with the real libraries


@pytest.mark.slow
def test_shape_tables_match_transformers_and_peft():
    """Tiny random models of each family: total and LoRA counts equal what transformers + peft build."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BloomConfig, GPT2Config, GPTJConfig, LlamaConfig

    cases = [
        (BloomConfig(vocab_size=1000, hidden_size=64, n_layer=2, n_head=4), Architecture("bloom", 2, 64, 4, 1000),
         ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]),
        (GPTJConfig(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, rotary_dim=8),
         Architecture("gptj", 2, 64, 4, 1000, intermediate_size=256), ["q_proj", "v_proj", "out_proj", "fc_in", "fc_out"]),
        (LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                     tie_word_embeddings=False),
         Architecture("llama", 2, 64, 4, 1000, intermediate_size=160), ["q_proj", "o_proj", "gate_proj", "down_proj"]),
        (GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0),
         Architecture("gpt2", 2, 64, 4, 1000, max_positions=128), ["c_attn", "c_proj", "c_fc"]),
    ]
    for conf, arch, targets in cases:
        model = AutoModelForCausalLM.from_config(conf)
        assert sum(p.numel() for p in model.parameters()) == computed_total_params(arch), arch.family
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets,
                                                      fan_in_fan_out=arch.family == "gpt2"))
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        assert trainable == lora_param_count(arch, targets, 4), arch.family


@pytest.mark.slow
def test_filled_deepspeed_config_equals_what_the_trainer_fills():
    """transformers' HfTrainerDeepSpeedConfig, given train_ds.json and the same arguments, builds the same dict,
    and finds no mismatch in ours."""
    import types

    pytest.importorskip("deepspeed")
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    cfg = build_config("bloomz-chat")
    p = plan(cfg, BLOOMZ_7B1_MT)
    ours = fill_deepspeed_config(REPO_ROOT / "train_ds.json", plan(cfg, BLOOMZ_7B1_MT), BLOOMZ_7B1_MT)
    kw = training_arguments(p.config, p.batch.micro, p.batch.accumulation, output_dir="runs/x", world=4)
    args = types.SimpleNamespace(
        world_size=4, save_on_each_node=False, fp16_full_eval=False, bf16_full_eval=False,
        get_warmup_steps=lambda n: kw["warmup_steps"],
        **{k: kw[k] for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_grad_norm",
                              "learning_rate", "adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay", "fp16",
                              "bf16")},
    )
    model = types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=4096))
    results = []
    for start in (json.loads((REPO_ROOT / "train_ds.json").read_text()), ours):
        hf = HfTrainerDeepSpeedConfig(start)
        hf.trainer_config_process(args)
        hf.trainer_config_finalize(args, model, p.total_steps)  # raises on any mismatch
        results.append(hf.config)
    assert results[0] == results[1] == ours


def test_hostfile_checked_when_readable(tmp_path):
    hosts = tmp_path / "hostfile"
    hosts.write_text("# two nodes\nnode-1 slots=4\nnode-2 slots=2\n")
    ok = build_config("bloomz-chat", overrides={"hostfile": str(hosts), "num_nodes": 2, "gpus": 2})
    assert plan(ok, BLOOMZ_7B1_MT).batch.world == 4
    with pytest.raises(VichatError, match="fewer slots on node-2"):
        validate_config(replace(ok, gpus=4), BLOOMZ_7B1_MT)
    with pytest.raises(VichatError, match="lists 2 node"):
        validate_config(replace(ok, num_nodes=3), BLOOMZ_7B1_MT)
    hosts.write_text("node-1 4\n")
    with pytest.raises(VichatError, match=r"hostfile:1: expected 'HOSTNAME slots=N'"):
        validate_config(ok, BLOOMZ_7B1_MT)


def test_every_setting_and_preset_is_documented():
    doc = (REPO_ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    missing = [n for n in TrainConfig.__dataclass_fields__ if f"`{n}`" not in doc]
    missing += [p for p in PRESETS if f"`{p}`" not in doc]
    assert not missing, f"document these in docs/training.md: {missing}"


def test_the_loss_setting_sizes_the_logits_term():
    """plain: 12 bytes per logit at the backward peak (measured by bench/memory.py); chunked: one chunk
    of fp32 logits, + 2 bytes per logit with 16-bit weights (fp16 here)."""
    from vichat.train.loss import chunk_rows

    plain = plan(build_config("bloomz-chat", overrides={"loss": "plain", "micro_batch_size": 8}), BLOOMZ_7B1_MT)
    assert plain.loss == "plain" and plain.memory.logits == 12 * 8 * 512 * 250_880
    chunked = plan(build_config("bloomz-chat", overrides={"loss": "chunked", "micro_batch_size": 8}), BLOOMZ_7B1_MT)
    hidden_grad = 2 * 2 * 8 * 512 * 4096
    assert chunked.memory.logits == 6 * chunk_rows(250_880, 8 * 512) * 250_880 + hidden_grad
    assert chunked.memory.total < plain.memory.total - 9 * GIB
    auto = plan(build_config("bloomz-chat"), BLOOMZ_7B1_MT)
    assert auto.max_micro_batch > plain.max_micro_batch == 8
    assert "layer backward" in auto.report() and auto.to_dict()["loss"] in ("chunked", "fused")


@pytest.mark.parametrize("load_in", ["8bit", "4bit"])
def test_quantized_zero3_is_refused_in_multi_process_cpu_runs_too(load_in):
    """A CPU run under torchrun is a DeepSpeed run: the same gate as on GPUs (world from WORLD_SIZE)."""
    cfg = build_config("tiny-chat", overrides={"device": "cpu", "load_in": load_in, "zero_stage": 3,
                                               "compute_dtype": "fp32"})
    validate_config(cfg, BLOOMZ_7B1_MT)  # one process: no DeepSpeed, nothing to refuse
    with pytest.raises(VichatError, match=f"--load-in {load_in} with --zero-stage 3 is refused"):
        validate_config(cfg, BLOOMZ_7B1_MT, world=2)
    with pytest.raises(VichatError, match="bf16 is refused"):
        validate_config(replace(cfg, load_in="8bit", zero_stage=2, compute_dtype="bf16"), BLOOMZ_7B1_MT, world=2)


def test_base_path_is_the_one_name_and_the_old_model_path_still_works(tmp_path):
    """`--base-path` as on every command; `--model-path` / `model_path:` are read with a warning."""
    assert build_config("tiny-chat", overrides={"base_path": "/models/tiny"}).base_path == "/models/tiny"
    with pytest.warns(FutureWarning, match="'model_path' is renamed 'base_path'"):
        assert build_config("tiny-chat", overrides={"model_path": "/models/old"}).base_path == "/models/old"
    f = tmp_path / "run.yaml"
    f.write_text("model_path: /models/yaml\n", encoding="utf-8")
    with pytest.warns(FutureWarning, match=r"run.yaml: 'model_path' is renamed"):
        assert build_config("tiny-chat", f).base_path == "/models/yaml"
    from click.testing import CliRunner

    from vichat.cli import main

    with pytest.warns(FutureWarning, match=r"'model_path' is renamed 'base_path' \(--base-path\)"):
        r = CliRunner().invoke(main, ["train", "tiny-chat", "--model-path", "/models/flag", "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["config"]["base_path"] == "/models/flag"
