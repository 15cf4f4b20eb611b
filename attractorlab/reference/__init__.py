"""The reference code's world (locuslab/EqR, built on HRM and TRM): its checkpoint files (:mod:`.checkpoints`),
its dataset directories (:mod:`.datasets`) and its evaluation metrics (:mod:`.metrics`). Nothing else in
attractorlab knows these formats; everything public is re-exported here."""

from attractorlab.reference.checkpoints import (
    ARCH_FIELDS,
    EMBED_KEY,
    Placeholder,
    ReferenceCheckpoint,
    arch_family,
    arch_settings,
    canonical_key,
    check_torch_file,
    ignored_arch_keys,
    read_checkpoint,
    summary,
)
from attractorlab.reference.datasets import ARRAY_FIELDS, METADATA_FIELDS, ReferenceSplit, read_split, write_split
from attractorlab.reference.errors import ReferenceFormatError
from attractorlab.reference.metrics import (
    DEFAULT_KS,
    convergence_scores,
    evaluation_metrics,
    logit_change,
    majority_vote,
    pass_at_k,
    reference_names,
)

__all__ = [
    "ARCH_FIELDS", "ARRAY_FIELDS", "DEFAULT_KS", "EMBED_KEY", "METADATA_FIELDS", "Placeholder", "ReferenceCheckpoint",
    "ReferenceFormatError", "ReferenceSplit", "arch_family", "arch_settings", "canonical_key", "check_torch_file",
    "convergence_scores", "evaluation_metrics", "ignored_arch_keys", "logit_change", "majority_vote", "pass_at_k",
    "read_checkpoint", "read_split", "reference_names", "summary", "write_split",
]
