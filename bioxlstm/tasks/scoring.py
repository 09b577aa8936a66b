"""The name the README and earlier releases import strand-symmetric scoring from; the code lives in
`bioxlstm.tasks.likelihood`."""

from .likelihood import rc_invariant_log_likelihood, sequence_log_likelihood

__all__ = ["rc_invariant_log_likelihood", "sequence_log_likelihood"]
