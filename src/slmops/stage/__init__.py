"""The stage contract: how a stage is declared (:mod:`.registry`), what it is handed (:mod:`.context`) and the
cached runner that calls it (:mod:`.runner`).

This package sits just above the store and below every package that defines stages, so a stage
module (or a stage that runs other stages) imports it without reaching up into :mod:`slmops.pipeline`,
which only walks recipes.
"""

from slmops.stage.context import RunOptions, StageContext, make_options, split_options
from slmops.stage.registry import Stage, StageOutput, all_stages, cache_key, get_stage, stage, validate_config

__all__ = ["RunOptions", "Stage", "StageContext", "StageOutput", "all_stages", "cache_key", "get_stage", "make_options", "split_options", "stage", "validate_config"]
