"""Run configuration: one YAML per dataset under configs/, dotted --set overrides, parsed once into a typed Config."""
from fastroar.config.load import DEFAULT_DATASET, available_configs, config_dir, load_config, set_dotted, validate
from fastroar.config.schema import Config
from fastroar.method import check_level

__all__ = ["DEFAULT_DATASET", "Config", "available_configs", "config_dir", "load_config", "set_dotted", "validate",
           "check_level"]
