"""BLOOMZ base models: bloomz-7b1-mt (the paper's) and bloomz-560m (a small one for CPUs)."""

from vichat.plugin import hookimpl, Architecture, BaseModelSpec


def _spec(name: str, description: str, hub_id: str, arch: Architecture) -> BaseModelSpec:
    return BaseModelSpec(
        name=name,
        description=description,
        hub_id=hub_id,
        architecture=arch,
        # BLOOM fuses q, k and v into one per-head interleaved projection: LoRA targets it whole.
        lora_targets=("query_key_value",),
        default_template="chat",
        license="bigscience-bloom-rail-1.0",
    )


BLOOMZ_7B1_MT = _spec(
    "bloomz-7b1-mt",
    "BigScience BLOOMZ 7.1B, multitask-finetuned on xP3mt (the paper's Bloomz base).",
    "bigscience/bloomz-7b1-mt",
    Architecture(family="bloom", n_layers=30, hidden_size=4096, n_heads=32, vocab_size=250880,
                 max_positions=2048, n_params=7_069_016_064),
)

BLOOMZ_560M = _spec(
    "bloomz-560m",
    "BigScience BLOOMZ 560M: a real small BLOOMZ that runs on a CPU.",
    "bigscience/bloomz-560m",
    Architecture(family="bloom", n_layers=24, hidden_size=1024, n_heads=16, vocab_size=250880,
                 max_positions=2048, n_params=559_214_592),
)


@hookimpl
def register_base_models(register):
    register(BLOOMZ_7B1_MT)
    register(BLOOMZ_560M)
