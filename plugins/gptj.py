"""VietAI's GPT-J 6B trained on Vietnamese news (the paper's GPT-J base)."""

from vichat.plugin import hookimpl, Architecture, BaseModelSpec

GPTJ_6B_VI = BaseModelSpec(
    name="gptj-6b-vi",
    description="VietAI GPT-J 6B pretrained on Vietnamese news (the paper's GPT-J base).",
    hub_id="VietAI/gpt-j-6B-vietnamese-news",
    architecture=Architecture(family="gptj", n_layers=28, hidden_size=4096, n_heads=16, vocab_size=50400,
                              intermediate_size=16384, max_positions=2048, n_params=6_050_882_784),
    lora_targets=("q_proj", "v_proj"),
    default_template="chat",
    # GPT-J has no pad token: EOS pads, so labels are masked by position, never by pad id.
    pad_token="eos",
    padding_side="right",
    license="apache-2.0",
)


@hookimpl
def register_base_models(register):
    register(GPTJ_6B_VI)
