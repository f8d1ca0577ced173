"""Reading a study back: Pareto front, knee, budgets, the HTML report and optuna-dashboard."""
