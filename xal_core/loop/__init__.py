"""The active-learning loop: training rounds, oracle, ledger, metrics and reports."""
