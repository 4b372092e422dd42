"""The accelerate configs in recipes/accelerate parse with accelerate's own config class and say what the README says
they do; DeepSpeed ZeRO-3 is refused before training."""

import os
from types import SimpleNamespace

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.utils import DistributedType

from nlpkd.trainer import check_teacher_parallelism

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "accelerate")


def _load(name: str) -> ClusterConfig:
    return ClusterConfig.from_yaml_file(os.path.join(CONFIG_DIR, name))


def test_every_shipped_config_is_tested():
    assert sorted(os.listdir(CONFIG_DIR)) == [
        "deepspeed_zero2.yaml",
        "deepspeed_zero3.yaml",
        "fsdp.yaml",
        "multi_gpu.yaml",
    ]


@pytest.mark.parametrize("name", ["multi_gpu.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_configs_run_on_gpus_of_one_machine(name):
    config = _load(name)
    assert config.num_machines == 1 and config.num_processes >= 2
    assert not config.use_cpu and config.gpu_ids == "all"


def test_multi_gpu_is_plain_ddp_with_the_recipes_precision():
    config = _load("multi_gpu.yaml")
    assert config.distributed_type == DistributedType.MULTI_GPU
    assert config.mixed_precision == "no"  # the recipe's --bf16 / --fp16 decides
    assert config.fsdp_config == {} and config.deepspeed_config == {}


def test_fsdp_shards_the_students_layers():
    config = _load("fsdp.yaml")
    assert config.distributed_type == DistributedType.FSDP
    assert config.mixed_precision == "no"
    assert config.fsdp_config["fsdp_version"] == 2
    # No fsdp_transformer_layer_cls_to_wrap: the wrapped classes come from the model's _no_split_modules.
    assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in config.fsdp_config
    assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # save_pretrained gets whole weights


@pytest.mark.parametrize(("name", "stage"), [("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)])
def test_deepspeed_stages(name, stage):
    config = _load(name)
    assert config.distributed_type == DistributedType.DEEPSPEED
    assert config.mixed_precision == "bf16"
    assert config.deepspeed_config["zero_stage"] == stage
    assert config.deepspeed_config["offload_optimizer_device"] == "none"
    assert config.deepspeed_config["offload_param_device"] == "none"


def _accelerator(zero_stage: int | None) -> SimpleNamespace:
    plugin = None if zero_stage is None else SimpleNamespace(zero_stage=zero_stage)
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin))


def test_zero3_is_refused_with_the_alternatives():
    with pytest.raises(ValueError, match=r"DeepSpeed ZeRO-3 \(zero_stage=3\) is not supported.*Use ZeRO-2"):
        check_teacher_parallelism(_accelerator(3))


@pytest.mark.parametrize("zero_stage", [None, 1, 2])
def test_ddp_and_lower_zero_stages_are_accepted(zero_stage):
    check_teacher_parallelism(_accelerator(zero_stage))
