"""Evaluation: official metrics, streaming evaluators and EvalAI result files."""
