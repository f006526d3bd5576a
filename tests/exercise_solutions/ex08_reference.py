from minorpo.lora import LoRALinear  # noqa: F401
