"""Graded exercises: instant checks that say what is wrong and give a hint, never a traceback.

One module per notebook (`nb08_lora_from_scratch` holds notebook 08's checks) and `core`, the building blocks
(`check_number`, `check_choice`, `check_function`). Each check carries its exercise's answer, written once in its
module: `check_lora_merge.right_answer()` is the solution its notebook folds under the exercise. A teacher adds an
exercise in the module named after its notebook and lists its check in that module's `__all__`; the checks and
the building blocks are re-exported here, so `from lora_teach.exercises import check_lora_merge` works.
"""

from .core import *  # noqa: F403
from .nb00_start_here import *  # noqa: F403
from .nb01_meet_the_base_model import *  # noqa: F403
from .nb02_full_fine_tuning import *  # noqa: F403
from .nb03_adapters import *  # noqa: F403
from .nb04_prefix_tuning import *  # noqa: F403
from .nb05_prompt_tuning import *  # noqa: F403
from .nb06_p_tuning import *  # noqa: F403
from .nb07_low_rank_intuition import *  # noqa: F403
from .nb08_lora_from_scratch import *  # noqa: F403
from .nb09_lora_in_practice import *  # noqa: F403
from .nb10_choosing_a_method import *  # noqa: F403
from .nb11_from_our_model_to_hugging_face import *  # noqa: F403
from .nb12_qlora_from_scratch import *  # noqa: F403
from .nb13_the_lora_family import *  # noqa: F403
from .nb14_fine_tuning_like_a_practitioner import *  # noqa: F403
from .nb15_beyond_one_machine import *  # noqa: F403
