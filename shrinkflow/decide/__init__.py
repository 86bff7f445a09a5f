"""Decisions: gates, speed verdicts with confidence intervals, the Pareto frontier, the
selection objective and the promotion rule. Pure functions of measured results."""
