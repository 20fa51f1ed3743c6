"""Graded exercises: instant checks that say what is wrong and give a hint, never a traceback.

One module per notebook (`nb08_lora_from_scratch` holds notebook 08's checks) and `core`, the building blocks
(`check_number`, `check_choice`, `check_function`). A teacher adds an exercise in the module named after its
notebook; everything is re-exported here, so `from lora_teach.exercises import check_lora_merge` works.
"""

from .core import *  # noqa: F403
from .core import (  # noqa: F401
    _base_parameters,
    _clone,
    _close,
    _compare,
    _describe,
    _diagnosis,
    _equals,
    _failed,
    _first_match,
    _format_call,
    _is_stub,
    _missing,
    _not_written,
    _passed,
    _to_number,
)
from .nb00_start_here import *  # noqa: F403
from .nb01_meet_the_base_model import *  # noqa: F403
from .nb01_meet_the_base_model import AUTHORS_PER_SPLIT, _block_mistakes, _block_reference  # noqa: F401
from .nb02_full_fine_tuning import *  # noqa: F403
from .nb02_full_fine_tuning import _memory_mistakes, _memory_reference, _small_models  # noqa: F401
from .nb03_adapters import *  # noqa: F403
from .nb03_adapters import PFEIFFER_CASE, _bottleneck_reference, _pfeiffer_reference  # noqa: F401
from .nb04_prefix_tuning import *  # noqa: F403
from .nb04_prefix_tuning import (  # noqa: F401
    PREFIX_TRAINING_CASE,
    _prefix_attention_mistakes,
    _prefix_attention_reference,
    _prefix_training_reference,
)
from .nb05_prompt_tuning import *  # noqa: F403
from .nb05_prompt_tuning import _prepend_mistakes, _prepend_reference  # noqa: F401
from .nb06_p_tuning import *  # noqa: F403
from .nb07_low_rank_intuition import *  # noqa: F403
from .nb07_low_rank_intuition import _best_rank_r, _low_rank_factor_mistakes  # noqa: F401
from .nb08_lora_from_scratch import *  # noqa: F403
from .nb08_lora_from_scratch import (  # noqa: F401
    _injected,
    _injection_reference,
    _lora_case,
    _lora_forward,
    _lora_merge_mistakes,
)
from .nb09_lora_in_practice import *  # noqa: F403
from .nb09_lora_in_practice import _adapter_bytes_mistakes, _adapter_bytes_reference  # noqa: F401
from .nb10_choosing_a_method import *  # noqa: F403
from .nb10_choosing_a_method import FULL_ACT_MIB, FULL_STATE_MIB, LORA_ACT_MIB, LORA_STATE_MIB  # noqa: F401
from .nb11_from_our_model_to_hugging_face import *  # noqa: F403
from .nb12_qlora_from_scratch import *  # noqa: F403
from .nb12_qlora_from_scratch import _dequantize_block_reference  # noqa: F401
from .nb13_the_lora_family import *  # noqa: F403
from .nb13_the_lora_family import _dora_trainable_reference, _mixed_reference  # noqa: F401
