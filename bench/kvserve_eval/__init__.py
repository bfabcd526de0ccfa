"""kvserve-eval: evaluation of kvserve compression policies through the serving path (issue #5)."""
