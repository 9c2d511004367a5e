"""Verifiers by name: `verify(record) -> Verdict(correct, reason, extracted)`; filter, eval and RL rewards share them."""
